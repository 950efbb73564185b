"""Starting a server: the steps every model shares, in the order that matters.

1. Look the model up first, so a typo is reported before anything is bound.
2. Raise the open-files limit, and remember both values for the banner.
3. Open the listener (the model decides how: prefork only holds the port).
4. Install SIGTERM/SIGINT handlers: the first begins a graceful stop, a second one
   ends the process at once.
5. Report, then serve until stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from duplex.config import ListenerConfig
from duplex.protocol.handler import DatagramHandler, Endpoint, HandlerFactory
from duplex.server.base import Driver, DriverOptions, UdpService, get_driver_class
from duplex.server.listener import NofileLimit, create_udp_socket, raise_nofile_limit

__all__ = ["ServerInfo", "build_driver", "run_driver", "serve"]

log = logging.getLogger("duplex.server")


@dataclasses.dataclass(frozen=True, slots=True)
class ServerInfo:
    """What a server reports when it is ready."""

    model: str
    address: Endpoint
    backlog: int
    effective_backlog: int
    somaxconn: int | None
    workers: int | None
    nofile: NofileLimit
    udp: bool
    pid: int
    grace: float
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict (``--json``)."""
        return {
            "event": "listening",
            "model": self.model,
            "address": str(self.address),
            "host": self.address.host,
            "port": self.address.port,
            "unix": self.address.is_unix,
            "backlog": self.backlog,
            "effective_backlog": self.effective_backlog,
            "somaxconn": self.somaxconn,
            "workers": self.workers,
            "nofile_soft": self.nofile.soft,
            "nofile_soft_before": self.nofile.soft_before,
            "nofile_hard": self.nofile.hard,
            "udp": self.udp,
            "pid": self.pid,
            "grace": self.grace,
            "detail": self.detail,
        }


def build_driver(
    model: str,
    listener_config: ListenerConfig,
    factory: HandlerFactory,
    *,
    options: DriverOptions | None = None,
    datagrams: DatagramHandler | None = None,
) -> tuple[Driver, ServerInfo]:
    """Looks up the model, raises the open-files limit and opens the listener.

    Args:
        model: a registered model name.
        listener_config: where to listen.
        factory: makes the handler of each connection.
        options: workers, grace, TCP_NODELAY.
        datagrams: answer UDP datagrams on the same port with this handler.

    Returns:
        The driver, ready for :func:`run_driver`, and what to report about it.

    Raises:
        UnknownModel: no such model.
        ServerError: a missing optional dependency; BindError for the listener.
    """
    cls = get_driver_class(model)
    nofile = raise_nofile_limit()
    listener = cls.open_listener(listener_config)
    udp = None
    if datagrams is not None:
        try:
            udp_sock = create_udp_socket(listener_config, listener.address.port)
        except BaseException:
            listener.close()
            raise
        udp = UdpService(udp_sock, datagrams)
    driver = cls(listener, factory, options, udp)
    detail = ""
    inner = getattr(driver, "inner_model", None)
    if inner:
        detail = f"workers run the {inner} model"
    info = ServerInfo(
        model=model,
        address=listener.address,
        backlog=listener.backlog,
        effective_backlog=listener.effective_backlog,
        somaxconn=listener.somaxconn,
        workers=driver.workers,
        nofile=nofile,
        udp=udp is not None,
        pid=os.getpid(),
        grace=driver.options.grace,
        detail=detail,
    )
    return driver, info


def run_driver(driver: Driver, on_ready: Callable[[], None] | None = None) -> int:
    """Serves until SIGTERM or SIGINT; a second signal ends the process at once.

    Must be called from the main thread (signal handlers live there).

    Args:
        driver: the driver from :func:`build_driver`.
        on_ready: called once the driver accepts connections.

    Returns:
        0 after a graceful stop.
    """
    received = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        name = signal.Signals(signum).name
        if received == 1:
            log.info(
                "%s: no new connections; those in flight get %.1f s (again to stop now)",
                name,
                driver.options.grace,
            )
            driver.shutdown()
        else:
            log.warning("%s again: stopping now", name)
            driver.kill()
            os._exit(128 + signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    driver.waker.catch_signals()
    try:
        driver.start()
        if on_ready is not None:
            on_ready()
        driver.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0


def serve(
    model: str,
    listener_config: ListenerConfig,
    factory: HandlerFactory,
    *,
    options: DriverOptions | None = None,
    datagrams: DatagramHandler | None = None,
    on_ready: Callable[[ServerInfo], None] | None = None,
) -> int:
    """Builds the driver, reports it ready, and serves until stopped.

    Returns:
        The process exit status (0 after a graceful stop).
    """
    driver, info = build_driver(
        model, listener_config, factory, options=options, datagrams=datagrams
    )
    return run_driver(driver, None if on_ready is None else lambda: on_ready(info))
