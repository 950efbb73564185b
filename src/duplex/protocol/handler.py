"""The sans-I/O interface every concurrency model drives: :class:`Handler`.

A handler is one connection's protocol logic with no I/O in it. The driver (any
model in :mod:`duplex.server`) owns the socket and does exactly this, in this order::

    handler.on_connect(pair)                  once, after accept()
    handler.receive_data(chunk)               for every chunk recv() returned
    handler.receive_eof()                     once, when recv() returned b"" (peer's FIN)
    for out in handler.data_to_send(): ...    after each of the calls above

``data_to_send()`` returns the bytes to write, in order. An empty ``b""`` in that list
means "I will send nothing more": the driver flushes what came before it, then shuts
down its write side (``shutdown(SHUT_WR)``); once the peer's EOF has also been seen the
driver closes the socket. This is the convention of websockets' sans-I/O layer, and it
is what lets one handler run unchanged under nine models: only the driver differs, as
only ``process_request`` differs between the classes of CPython's ``socketserver``.

Datagram services implement :class:`DatagramHandler` instead: one datagram in, the
datagrams to send back out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "DatagramHandler",
    "Endpoint",
    "Handler",
    "HandlerFactory",
    "SocketPair",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """One end of a connection: an IP address and port, or a Unix socket path.

    Attributes:
        host: the IP address as text (no brackets), or the Unix socket path.
        port: the port, or -1 for a Unix socket.
    """

    host: str
    port: int

    @classmethod
    def from_sockaddr(cls, addr: Any) -> Endpoint:
        """Builds an endpoint from what ``getsockname()``/``getpeername()`` return.

        Args:
            addr: ``(host, port)``, ``(host, port, flowinfo, scope_id)`` or a path.

        Returns:
            The endpoint; an unnamed Unix socket (``""``) gives host ``"unix:"``.
        """
        if isinstance(addr, tuple):
            return cls(str(addr[0]), int(addr[1]))
        if isinstance(addr, bytes):  # abstract-namespace Unix sockets
            addr = addr.decode("utf-8", "backslashreplace")
        return cls(str(addr) or "(unnamed)", -1)

    @property
    def is_unix(self) -> bool:
        """True for a Unix domain socket endpoint."""
        return self.port < 0

    def __str__(self) -> str:
        if self.is_unix:
            return f"unix:{self.host}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class SocketPair:
    """The two ends that identify a connection: ``client ip:port <-> server ip:port``.

    A TCP connection is identified by this 4-tuple (plus the protocol), not by the
    server's port alone: that is why one listening port can hold many connections.
    """

    client: Endpoint
    server: Endpoint

    def __str__(self) -> str:
        return f"{self.client} <-> {self.server}"


class Handler(Protocol):
    """One connection's protocol logic, free of I/O (see the module docstring)."""

    def on_connect(self, pair: SocketPair) -> None:
        """Called once, after the connection is accepted."""

    def receive_data(self, data: bytes) -> None:
        """Feeds bytes received from the peer (never empty)."""

    def receive_eof(self) -> None:
        """Signals the peer's end of stream (its FIN)."""

    def data_to_send(self) -> list[bytes]:
        """Returns the bytes to write, in order; ``b""`` means shut down the write side."""
        ...


HandlerFactory = Callable[[], Handler]
"""Makes a fresh handler for each accepted connection."""


class DatagramHandler(Protocol):
    """A datagram service: each datagram in gives zero or more datagrams out."""

    def datagram_received(self, data: bytes, addr: Any) -> list[tuple[bytes, Any]]:
        """Returns ``(payload, address)`` pairs to send in answer to one datagram."""
        ...
