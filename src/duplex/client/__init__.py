"""The asyncio messenger client library (no UI code): :class:`Client` and its events."""

from __future__ import annotations

from duplex.client.core import Client, PinStore, Router, new_message_id, register, unsendable
from duplex.client.events import (
    ClientEvent,
    ConnectionStateChanged,
    MessageReceived,
    MessageStateChanged,
    PresenceChanged,
)
from duplex.client.local import LocalStore

__all__ = [
    "Client",
    "ClientEvent",
    "ConnectionStateChanged",
    "LocalStore",
    "MessageReceived",
    "MessageStateChanged",
    "PinStore",
    "PresenceChanged",
    "Router",
    "new_message_id",
    "register",
    "unsendable",
]
