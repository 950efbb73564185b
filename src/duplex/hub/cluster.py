"""``duplex serve --nodes N``: N hub nodes on one host, sharing one port.

Why processes: one hub process is bounded by one core (the GIL and one event loop)
and by the open-files limit of one process (20,000 here). N processes, each a full hub
node with its own node id, share the user population through the store (PostgreSQL)
and the broker (Redis), so there is no main process that the others depend on for
messages: the supervisor only starts, restarts and stops them, and if it dies the
nodes go on serving (they are told with SIGTERM through ``PR_SET_PDEATHSIG``, and
stop gracefully).

Why SO_REUSEPORT: each node binds *its own* listening socket to the same address, and
the kernel spreads incoming connections over their accept queues by a hash of the
4-tuple (nginx's ``reuseport``); no thundering herd, and no node hands sockets to
another. As in :mod:`duplex.server.prefork`, the supervisor binds the port without
listening, to hold it while nodes come and go: a bound socket that does not listen
receives nothing. When a node dies, the connections in its accept queue are reset and
its clients reconnect -- the kernel now hashes them to a live node -- and resume from
their last sequence; the dead node's sessions stop counting in Redis within the
grace, their users' watchers are told who went offline at the next heartbeat of a
surviving node, and the supervisor starts a new node (a new node id) at once.

Each node has its own admin listener (``/metrics`` counts that node): ``--admin
host:port`` gives node i the port ``port + i``.

Only shared backends make sense here: SQLite and the in-process broker live inside
one process, so ``--nodes`` above 1 with either is refused with a one-line reason.
Each node applies the store's migrations under PostgreSQL's advisory lock, so N
nodes starting at once apply each one exactly once.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from duplex.config import DEFAULT_BACKLOG, HubConfig, ListenerConfig
from duplex.errors import ConfigError, DuplexError, ServerError
from duplex.server.listener import Listener, NofileLimit, create_listener, raise_nofile_limit

__all__ = ["RESTART_BACKOFF_MAX", "STOP_GRACE", "check_shared_backends", "run_cluster"]

log = logging.getLogger("duplex.hub")

RESTART_BACKOFF_MAX = 5.0
"""Seconds, at most, before restarting a node that keeps dying right after it starts."""

STOP_GRACE = 15.0
"""Seconds the nodes get to close their connections and finish writes at a stop."""

READY_TIMEOUT = 60.0
"""Seconds every node has, at start, to listen (it connects and migrates first)."""

_PR_SET_PDEATHSIG = 1


def check_shared_backends(config: HubConfig) -> None:
    """Refuses ``nodes > 1`` unless the store and the broker are shared services.

    Raises:
        ConfigError: with the one-line reason.
    """
    if config.nodes <= 1:
        return
    store_ok = config.store.startswith(("postgresql://", "postgres://"))
    broker_ok = config.broker.startswith(("redis://", "rediss://", "unix://"))
    if store_ok and broker_ok:
        return
    missing = " and ".join(
        what
        for what, ok in (
            ("--store postgresql://...", store_ok),
            ("--broker redis://...", broker_ok),
        )
        if not ok
    )
    raise ConfigError(
        f"--nodes {config.nodes} needs {missing}: SQLite and the in-process broker live "
        "inside one process, so separate nodes cannot share them"
    )


def run_cluster(config: HubConfig, on_ready: Callable[[Any], None] | None = None) -> int:
    """Runs ``config.nodes`` hub nodes on one port until SIGTERM or SIGINT.

    Args:
        config: the hub configuration (``nodes`` > 1, shared store and broker).
        on_ready: called once every node listens, with a :class:`~duplex.hub.run.HubInfo`
            for the whole cluster (its ``workers`` name each node and its pid).

    Returns:
        0 after a graceful stop.

    Raises:
        ConfigError: the backends are not shared.
        ServerError: a node could not start (its reason is in the message).
    """
    check_shared_backends(config)
    nofile = raise_nofile_limit()
    holder = create_listener(
        ListenerConfig(host=config.host, port=config.port, backlog=DEFAULT_BACKLOG),
        reuse_port=True,
        listen=False,
    )
    supervisor = _Supervisor(dataclasses.replace(config, port=holder.address.port), holder, nofile)
    try:
        info = supervisor.start()
        if on_ready is not None:
            on_ready(info)
        supervisor.serve()
    finally:
        supervisor.close()
    log.info("stopped")
    return 0


@dataclasses.dataclass
class _Node:
    slot: int
    pid: int
    started: float
    node: str = ""
    ready: bool = False


class _Supervisor:
    """Starts, watches, restarts and stops the node processes (one thread, no loop)."""

    def __init__(self, config: HubConfig, holder: Listener, nofile: NofileLimit) -> None:
        self.config = config
        self.holder = holder
        self.nofile = nofile
        self.nodes: dict[int, _Node] = {}  # pid -> node
        self.failures: dict[int, int] = {}  # slot -> quick deaths in a row
        self.stopping = False
        self.signals = 0
        self._ready_r, self._ready_w = os.pipe2(os.O_CLOEXEC)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._buffer = b""
        self._infos: dict[int, dict[str, Any]] = {}  # pid -> its ready report
        self._started: dict[int, float] = {}  # slot -> when its process started
        self._previous: dict[int, Any] = {}
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._ready_r, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)

    # -- signals --------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGCHLD:
            self.signals += 1
            if self.signals > 1:
                # A second Ctrl-C or SIGTERM: stop at once.
                self._kill_all()
                os._exit(128 + signum)
            self.stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def _install(self) -> None:
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> Any:
        """Forks every node and waits until each listens; returns the cluster's HubInfo.

        Raises:
            ServerError: a node failed before it listened, or not all came up in time.
        """
        from duplex.hub.run import HubInfo

        self._install()
        for slot in range(self.config.nodes):
            self._spawn(slot)
        end = time.monotonic() + READY_TIMEOUT
        while not all(n.ready for n in self.nodes.values()) or len(self.nodes) < self.config.nodes:
            if self.stopping:
                raise ServerError("stopped by a signal while the nodes were starting")
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise ServerError(f"not every node listened within {READY_TIMEOUT:g} s")
            error = self._wait(remaining)
            if error:
                raise ServerError(f"a hub node could not start: {error}")
            for _slot, how in self._reap():
                raise ServerError(f"a hub node exited while starting ({how}); see its log")
        first = min(self.nodes.values(), key=lambda n: n.slot)
        base = self._infos[first.pid]
        workers = tuple((n.node, n.pid) for n in sorted(self.nodes.values(), key=lambda n: n.slot))
        info = HubInfo(
            **{
                **{k: v for k, v in base.items() if k in HubInfo.__dataclass_fields__},
                "node": ",".join(node for node, _ in workers),
                "pid": os.getpid(),
                "nofile": self.nofile,
                "workers": workers,
            }
        )
        log.info("%d hub nodes listening on %s", len(workers), info.address)
        return info

    def serve(self) -> None:
        """Restarts nodes that die, until a signal asks to stop; then stops them."""
        pending: dict[int, float] = {}  # slot -> when to start it again
        while not self.stopping:
            timeout = max(0.0, min(pending.values()) - time.monotonic()) if pending else None
            self._wait(timeout)
            for slot, how in self._reap():
                quick = time.monotonic() - self._started.get(slot, 0.0) < 1.0
                self.failures[slot] = self.failures.get(slot, 0) + 1 if quick else 0
                delay = min(RESTART_BACKOFF_MAX, 0.1 * 2 ** self.failures[slot]) if quick else 0.0
                log.warning(
                    "hub node %d died (%s); starting a new one%s",
                    slot,
                    how,
                    f" in {delay:.1f} s" if delay else "",
                )
                pending[slot] = time.monotonic() + delay
            now = time.monotonic()
            for slot, when in list(pending.items()):
                if when <= now:
                    del pending[slot]
                    self._spawn(slot)
        self._stop_all()

    def close(self) -> None:
        """Kills what is left, and releases the port and the pipes."""
        self._kill_all()
        for pid in list(self.nodes):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.nodes.clear()
        self._restore()
        self._sel.close()
        for fd in (self._ready_r, self._ready_w, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.holder.close()

    # -- internals ------------------------------------------------------------------

    def _wait(self, timeout: float | None) -> str:
        """Waits for a signal or a node's report; returns a start error, if one came."""
        error = ""
        for key, _ in self._sel.select(timeout):
            if key.fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            self._buffer += os.read(self._ready_r, 65536)
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                report = json.loads(line)
                node = self.nodes.get(int(report.get("pid", 0)))
                if report.get("event") == "error":
                    error = str(report.get("message", "unknown error"))
                elif node is not None:
                    node.ready = True
                    node.node = str(report.get("node", ""))
                    self._infos[node.pid] = report
                    log.info("hub node %d (%s, pid %d) listening", node.slot, node.node, node.pid)
        return error

    def _reap(self) -> list[tuple[int, str]]:
        dead = []
        while self.nodes:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            node = self.nodes.pop(pid, None)
            self._infos.pop(pid, None)
            if node is None:
                continue
            if os.WIFSIGNALED(status):
                how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            else:
                how = f"exit status {os.waitstatus_to_exitcode(status)}"
            dead.append((node.slot, how))
        return dead

    def _stop_all(self) -> None:
        for pid in list(self.nodes):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + STOP_GRACE
        while self.nodes and time.monotonic() < end:
            self._reap()
            if self.nodes:
                self._wait(min(0.2, max(0.0, end - time.monotonic())))
        if self.nodes:
            log.warning(
                "%d hub nodes still running after %g s: killing them", len(self.nodes), STOP_GRACE
            )

    def _kill_all(self) -> None:
        for pid in list(self.nodes):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _spawn(self, slot: int) -> None:
        if self.stopping:  # a signal may have come while we reaped
            return
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            log.error("cannot start hub node %d: %s", slot, exc)
            return
        if pid:
            self.nodes[pid] = _Node(slot, pid, time.monotonic())
            self._started[slot] = time.monotonic()
            return
        status = 1
        try:
            status = self._node_main(slot, parent)
        except BaseException:
            log.exception("hub node %d failed", slot)
        finally:
            os._exit(status)

    def _node_main(self, slot: int, parent: int) -> int:
        """The body of a node process: its own listener, its own event loop."""
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        # Its own process group: a Ctrl-C at the terminal reaches the supervisor only,
        # which stops the nodes with ONE SIGTERM each (two would mean "now").
        os.setpgid(0, 0)
        _die_with_parent()
        if os.getppid() != parent:
            return 0  # the supervisor died before we could ask to be told
        self._sel.close()
        for fd in (self._ready_r, self._wake_r, self._wake_w):
            os.close(fd)
        ready_w = self._ready_w
        self.holder.sock.close()

        def report(data: dict[str, Any]) -> None:
            data["pid"] = os.getpid()
            # One short line per write: atomic on a pipe (below PIPE_BUF).
            os.write(ready_w, json.dumps(data).encode() + b"\n")

        config = dataclasses.replace(
            self.config, nodes=1, node=f"{self.config.node}-{slot}" if self.config.node else "",
            admin=_admin_of(self.config.admin, slot),
        )  # fmt: skip
        try:
            listener = create_listener(
                ListenerConfig(host=config.host, port=config.port, backlog=DEFAULT_BACKLOG),
                reuse_port=True,
            )
            _run_node(config, listener, self.nofile, lambda info: report(info.as_dict()))
        except DuplexError as exc:
            report({"event": "error", "message": str(exc)})
            return 1
        return 0


def _run_node(
    config: HubConfig, listener: Listener, nofile: NofileLimit, on_ready: Callable[[Any], None]
) -> None:
    import asyncio

    from duplex.hub.run import _loop_factory, serve_hub, tune_gc

    tune_gc()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve_hub(config, listener, nofile, on_ready=on_ready))


def _admin_of(admin: str, slot: int) -> str:
    """Node ``slot``'s admin listener: ``host:port+slot`` (each node has its own metrics)."""
    if not admin:
        return ""
    host, _, port = admin.rpartition(":")
    return f"{host}:{int(port) + slot}" if port.isdigit() and int(port) else admin


def _die_with_parent() -> None:
    """Asks Linux to send us SIGTERM when the supervisor dies (a graceful stop)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the nodes outlive a killed supervisor
        pass
