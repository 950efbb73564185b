"""The RFC 862 echo service on the server core, and a checking echo client.

The protocol logic is :class:`duplex.protocol.echo.EchoSession` (sans-I/O); this module
plugs it into a concurrency model (:func:`serve_echo`) and provides the client side
that CSAPP's ``echoclient`` is, plus a measuring mode that checks every byte.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable

from duplex.config import EchoConfig
from duplex.errors import BrokenResourceError, EchoMismatch, map_exceptions
from duplex.protocol.echo import EchoDatagrams, EchoSession
from duplex.protocol.handler import Endpoint, Handler
from duplex.server.base import DriverOptions
from duplex.server.runner import ServerInfo, serve

__all__ = [
    "EchoClient",
    "RoundTrips",
    "echo_datagram",
    "make_echo_handler",
    "serve_echo",
]


def make_echo_handler() -> Handler:
    """Returns a fresh RFC 862 TCP echo handler."""
    return EchoSession()


def serve_echo(config: EchoConfig, on_ready: Callable[[ServerInfo], None] | None = None) -> int:
    """Runs the echo service with ``config.model`` until SIGTERM or SIGINT.

    Args:
        config: model, address, backlog, workers, UDP, grace.
        on_ready: called once the listener is open, with what to report.

    Returns:
        The exit status (0 after a graceful stop).

    Raises:
        UnknownModel: ``config.model`` is not registered.
        ServerError: the listener cannot be opened, or uvloop is missing.
    """
    return serve(
        config.model,
        config.listener(),
        make_echo_handler,
        options=DriverOptions(workers=config.workers, grace=config.grace),
        datagrams=EchoDatagrams() if config.udp else None,
        on_ready=on_ready,
    )


_OS_ERRORS: dict[type[BaseException], type[BrokenResourceError]] = {OSError: BrokenResourceError}


@dataclasses.dataclass(frozen=True, slots=True)
class RoundTrips:
    """The result of :meth:`EchoClient.measure`: round-trip times in seconds."""

    size: int
    times: list[float]

    def percentile(self, q: float) -> float:
        """Returns the ``q``-th percentile (0..100) of the round-trip times."""
        ordered = sorted(self.times)
        if not ordered:
            return 0.0
        rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        return ordered[rank]


class EchoClient:
    """A blocking echo client (CSAPP's ``echoclient``) that checks what comes back.

    Args:
        host: server host, or None with ``unix``.
        port: server port.
        unix: a Unix socket path instead of host and port.
        timeout: seconds to wait for any one read or write.
    """

    def __init__(
        self,
        host: str | None = "127.0.0.1",
        port: int = 7007,
        *,
        unix: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        with map_exceptions(_OS_ERRORS):
            if unix:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                try:
                    self.sock.connect(unix)
                except OSError:
                    self.sock.close()
                    raise
            else:
                self.sock = socket.create_connection((host, port), timeout=timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def local(self) -> Endpoint:
        """Our end of the connection (the ephemeral port the kernel chose)."""
        return Endpoint.from_sockaddr(self.sock.getsockname())

    @property
    def remote(self) -> Endpoint:
        """The server's end."""
        return Endpoint.from_sockaddr(self.sock.getpeername())

    def close(self) -> None:
        """Closes the connection."""
        self.sock.close()

    def __enter__(self) -> EchoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise BrokenResourceError(
                    f"server closed the connection after {len(buf)} of {n} echoed bytes"
                )
            buf += chunk
        return bytes(buf)

    def echo(self, payload: bytes) -> bytes:
        """Sends ``payload``, reads as many bytes back, and checks they are the same.

        Raises:
            EchoMismatch: the bytes differ.
            BrokenResourceError: the connection failed or timed out.
        """
        with map_exceptions(_OS_ERRORS):
            self.sock.sendall(payload)
            back = self._recv_exact(len(payload))
        if back != payload:
            first = next(i for i, (a, b) in enumerate(zip(back, payload, strict=True)) if a != b)
            raise EchoMismatch(f"echo differs from what was sent at byte {first} of {len(payload)}")
        return back

    def measure(self, count: int, size: int) -> RoundTrips:
        """Does ``count`` round trips of ``size`` random bytes, checking each.

        Returns:
            The round-trip times.
        """
        payload = os.urandom(size)
        times = []
        for _ in range(count):
            start = time.perf_counter()
            self.echo(payload)
            times.append(time.perf_counter() - start)
        return RoundTrips(size, times)


def echo_datagram(host: str, port: int, payload: bytes, *, timeout: float = 2.0) -> bytes:
    """Sends one UDP datagram to an echo server and returns the answer (RFC 862 s. 2).

    Raises:
        BrokenResourceError: no answer within ``timeout``, or an ICMP error.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock, map_exceptions(_OS_ERRORS):
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.send(payload)
        return sock.recv(65536)
