"""What a :class:`~duplex.client.Client` tells its application: one stream of typed events."""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = [
    "ClientEvent",
    "ConnectionState",
    "ConnectionStateChanged",
    "MessageReceived",
    "MessageState",
    "MessageStateChanged",
    "Path",
    "PresenceChanged",
]

Path = Literal["direct", "relayed", "stored"]
"""How a message travelled: a direct peer link, through the hub at once, or through
the hub's store (the recipient was offline)."""

MessageState = Literal["queued", "stored", "delivered", "failed"]
"""A sent message's state: in our outbox; durable at the hub; acked by the recipient's
device; refused for good (``reason`` says why)."""

ConnectionState = Literal["connecting", "online", "reconnecting", "offline"]
"""The client's link to the hub."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClientEvent:
    """Base class of client events."""


@dataclasses.dataclass(frozen=True, slots=True)
class MessageReceived(ClientEvent):
    """A message for us, shown once: duplicates are dropped before this event.

    Attributes:
        peer: the sender.
        id: the message id the sender chose.
        body: the text.
        ts: when the hub stored it (ms since the epoch), or when the peer sent it (direct).
        path: how it came.
    """

    peer: str
    id: bytes
    body: str
    ts: int
    path: Path


@dataclasses.dataclass(frozen=True, slots=True)
class MessageStateChanged(ClientEvent):
    """A message we sent moved on.

    Attributes:
        id: the message id.
        peer: its recipient.
        state: the new state.
        path: how it travels (the hub's answer, or ``direct``).
        reason: why it failed, for ``failed``.
    """

    id: bytes
    peer: str
    state: MessageState
    path: Path | None = None
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class PresenceChanged(ClientEvent):
    """A contact came online or went offline."""

    user: str
    online: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionStateChanged(ClientEvent):
    """The link to the hub changed.

    Attributes:
        state: the new state.
        detail: why (the hub's error, the OS error, ...).
        retry_in: for ``reconnecting``, seconds until the next attempt.
    """

    state: ConnectionState
    detail: str = ""
    retry_in: float = 0.0
