"""The RFC 862 echo protocol, sans-I/O.

RFC 862 section 1 (TCP): "Once a connection is established any data received is sent
back. This continues until the calling user terminates the connection." We read the
calling user's FIN as that termination: everything received before it is echoed, then
our side closes too. Section 2 (UDP): "When a datagram is received, the data from it
is sent back in an answering datagram."
"""

from __future__ import annotations

import enum
from typing import Any

from duplex.errors import InvalidState
from duplex.protocol.handler import SocketPair

__all__ = ["EchoDatagrams", "EchoSession", "EchoState"]


class EchoState(enum.Enum):
    """States of one echo connection."""

    OPEN = "open"
    """Echoing whatever arrives."""
    CLOSING = "closing"
    """The peer sent its FIN: what was received is flushed, then our side closes."""


# The whole state table: (state, event) -> next state. Anything absent is illegal.
TRANSITIONS: dict[tuple[EchoState, str], EchoState] = {
    (EchoState.OPEN, "data"): EchoState.OPEN,
    (EchoState.OPEN, "eof"): EchoState.CLOSING,
}


class EchoSession:
    """One echo connection: every byte received is queued to be sent back.

    Implements :class:`duplex.protocol.handler.Handler`. Received chunks are passed
    through without copying, so the cost per chunk is one list append.
    """

    __slots__ = ("_out", "pair", "state")

    def __init__(self) -> None:
        self.state = EchoState.OPEN
        self.pair: SocketPair | None = None
        self._out: list[bytes] = []

    def on_connect(self, pair: SocketPair) -> None:
        """Remembers the socket pair (for logs)."""
        self.pair = pair

    def _step(self, event: str) -> None:
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise InvalidState(
                f"echo: {event!r} is not allowed in state {self.state.value}"
            ) from None

    def receive_data(self, data: bytes) -> None:
        """Queues ``data`` to be echoed (RFC 862 section 1).

        Raises:
            InvalidState: data after the peer's EOF.
        """
        if self.state is not EchoState.OPEN:
            self._step("data")
        self._out.append(data)

    def receive_eof(self) -> None:
        """The peer closed its side: flush, then close ours.

        Raises:
            InvalidState: a second EOF.
        """
        self._step("eof")
        self._out.append(b"")

    def data_to_send(self) -> list[bytes]:
        """Returns the queued bytes; ends with ``b""`` once the peer has closed."""
        out = self._out
        if out:
            self._out = []
        return out


class EchoDatagrams:
    """RFC 862 section 2: each datagram is sent back to its sender, unchanged."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> list[tuple[bytes, Any]]:
        """Returns the datagram, addressed back to its sender."""
        return [(data, addr)]
