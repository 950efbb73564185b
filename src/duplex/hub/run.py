"""Running a hub node: store, broker, TLS, listener, admin, signals.

``duplex serve`` calls :func:`run_hub`. The order matters: the store is opened (and
checked: a corrupt store stops the hub here, before a client is accepted) before the
port is listened on; on SIGTERM/SIGINT the listener closes first, then every
connection is told ``shutdown`` (clients reconnect elsewhere or later), then the store
finishes its pending group commit and closes. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from duplex.broker import open_broker
from duplex.config import DEFAULT_BACKLOG, HubConfig, ListenerConfig
from duplex.errors import ConfigError
from duplex.hub.accounts import PasswordHasher
from duplex.hub.admin import start_admin
from duplex.hub.core import Hub
from duplex.server.listener import (
    Listener,
    NofileLimit,
    create_listener,
    raise_nofile_limit,
)
from duplex.store import open_store
from duplex.tls import ensure_certificate, fingerprint_of_pem_file, server_context

__all__ = ["HubInfo", "run_hub", "serve_hub"]

log = logging.getLogger("duplex.hub")


@dataclasses.dataclass(frozen=True, slots=True)
class HubInfo:
    """What a hub reports when it is ready."""

    address: str
    host: str
    port: int
    tls: bool
    fingerprint: str
    store: str
    broker: str
    data_dir: str
    admin: str
    node: str
    pid: int
    backlog: int
    effective_backlog: int
    nofile: NofileLimit
    workers: tuple[tuple[str, int], ...] = ()
    """With ``--nodes`` > 1: (node id, pid) of each node process; ``pid`` is the supervisor's."""

    def as_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict (``--json``)."""
        data = dataclasses.asdict(self)
        data["nofile"] = {"soft": self.nofile.soft, "hard": self.nofile.hard}
        data["workers"] = [{"node": node, "pid": pid} for node, pid in self.workers]
        data["event"] = "listening"
        return data


def _redact(url: str) -> str:
    # postgresql://user:secret@host/db -> postgresql://user:***@host/db
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{host}"
    return url


async def serve_hub(
    config: HubConfig,
    listener: Listener,
    nofile: NofileLimit,
    *,
    on_ready: Callable[[HubInfo], None] | None = None,
    stop: asyncio.Event | None = None,
    hasher: PasswordHasher | None = None,
    on_hub: Callable[[Hub], None] | None = None,
) -> None:
    """Runs one hub node on ``listener`` until ``stop`` is set (or a signal arrives).

    Args:
        config: the hub configuration.
        listener: the listening socket (closed on return).
        nofile: the open-files limits, for the report.
        on_ready: called with what to report once clients can connect.
        stop: set it to stop; by default SIGTERM/SIGINT set it.
        hasher: password hashing (tests pass a cheap one).
        on_hub: called with the :class:`Hub` before it serves (tests inspect it).

    Raises:
        StoreCorrupt: the store failed its integrity check.
        StoreError, ConfigError, BindError: the data dir, store, broker, TLS or admin
            cannot be set up.
    """
    loop = asyncio.get_running_loop()
    data_dir = config.data_path()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"the data dir {data_dir} exists and is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot make the data dir {data_dir}: {exc.strerror}") from None
    url = config.store_url()
    options: dict[str, Any] = {}
    if not url.startswith(("postgresql://", "postgres://")):
        options["synchronous"] = config.synchronous
    store = open_store(url, **options)
    await store.open()
    node = config.node or f"{socket.gethostname()}-{os.getpid()}"
    # A node's sessions stop counting in Redis within the grace of its last refresh:
    # the same promise as for one silent connection.
    broker = open_broker(config.broker, node, ttl=config.grace)
    context = None
    fingerprint = ""
    if config.tls == "self-signed":
        cert, key, fingerprint = ensure_certificate(data_dir, "hub", "duplex hub")
        context = server_context(cert, key)
    elif config.tls == "files":
        context = server_context(config.tls_cert, config.tls_key)
        fingerprint = fingerprint_of_pem_file(config.tls_cert)
    hub = Hub(config, store, broker, hasher=hasher)
    if on_hub is not None:
        on_hub(hub)
    started = closed = False
    try:
        await hub.start()
        started = True
        server = await loop.create_server(
            hub.protocol_factory, sock=listener.sock, ssl=context, backlog=listener.backlog
        )
        admin = await start_admin(hub, config.admin) if config.admin else None
        admin_address = ""
        if admin is not None:
            host, port = admin.sockets[0].getsockname()[:2]
            admin_address = f"{host}:{port}"
        stop = stop or asyncio.Event()
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                log.warning("%s again: exiting now", signal.Signals(signum).name)
                os._exit(128 + signum)
            log.info("%s: closing connections, finishing writes", signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
            except (RuntimeError, ValueError):  # not the main thread (tests)
                pass
        if on_ready is not None:
            on_ready(
                HubInfo(
                    address=str(listener.address),
                    host=listener.address.host,
                    port=listener.address.port,
                    tls=context is not None,
                    fingerprint=fingerprint,
                    store=_redact(url),
                    broker=_redact(config.broker),
                    data_dir=str(data_dir),
                    admin=admin_address,
                    node=node,
                    pid=os.getpid(),
                    backlog=listener.backlog,
                    effective_backlog=listener.effective_backlog,
                    nofile=nofile,
                )
            )
        await stop.wait()
        # Stop accepting, then let connections already accepted attach before the
        # server closes: on Python 3.11 one that attaches to a closed server fails
        # half-built (Server._attach asserts) and its socket is never closed.
        for sock in server.sockets:
            loop.remove_reader(sock.fileno())
        for _ in range(2):
            await asyncio.sleep(0)
        server.close()
        if admin is not None:
            admin.close()
        closed = True
        await hub.close()
        await server.wait_closed()
    finally:
        if started and not closed:  # set-up failed after the hub started its tasks
            await hub.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (RuntimeError, ValueError):
                pass
        await store.close()
        listener.close()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


GC_THRESHOLD = 50_000
"""Container allocations between two young-generation collections (CPython: 700)."""


def tune_gc() -> None:
    """Makes the cyclic garbage collector cheap for a hub process.

    Nearly every object the hub makes per message (frames' structs, tuples, futures)
    dies by reference counting, yet CPython's default runs a young collection every
    700 container allocations, about every fifteen messages, and promotes what a
    moving window happens to hold, so full collections over every session's objects
    follow. perf showed 10% of a loaded hub in ``gc_collect_main`` and its visitors.
    Freezing what start-up made (modules, config, the store) takes it out of every
    collection, and a larger young threshold makes the rest rare. Cycles are still
    collected. Called by the process entry points only, never by a library user.
    """
    gc.freeze()
    _, mid, old = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, mid, old)


def run_hub(config: HubConfig, on_ready: Callable[[HubInfo], None] | None = None) -> int:
    """Runs a hub node in this process until SIGTERM or SIGINT (uvloop when installed).

    With ``config.nodes`` > 1, runs that many nodes sharing the port instead
    (:mod:`duplex.hub.cluster`).

    Returns:
        0 after a graceful stop.
    """
    if config.nodes > 1:
        from duplex.hub.cluster import run_cluster

        return run_cluster(config, on_ready)
    nofile = raise_nofile_limit()
    listener = create_listener(
        ListenerConfig(host=config.host, port=config.port, backlog=DEFAULT_BACKLOG),
        reuse_port=config.nodes > 1,
    )
    tune_gc()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve_hub(config, listener, nofile, on_ready=on_ready))
    log.info("stopped")
    return 0
