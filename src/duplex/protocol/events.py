"""Events that sans-I/O sessions emit, all in one place (aioquic's ``events.py`` style)."""

from __future__ import annotations

import msgspec

from duplex.wire.messages import Message

__all__ = ["Closed", "Event", "Received", "TimedOut"]


class Event(msgspec.Struct, frozen=True, gc=False):
    """Base class of every session event (a frozen struct: cheap, one per frame)."""


class Received(Event, frozen=True, gc=False):
    """The peer sent ``message``, and the state table allowed it."""

    message: Message


class TimedOut(Event, frozen=True, gc=False):
    """A timer expired: ``"auth"`` (no login in time), ``"heartbeat"`` (peer silent
    beyond the grace), or ``"handshake"`` (the hub never welcomed us)."""

    what: str


class Closed(Event, frozen=True, gc=False):
    """The session is over.

    Attributes:
        code: why: ``"eof"``, ``"timeout"``, a protocol error code, or the code of an
            ``Error`` we or the peer sent.
        reason: a human-readable reason.
        by_peer: True when the peer closed or broke the protocol, False when we did.
    """

    code: str
    reason: str
    by_peer: bool
