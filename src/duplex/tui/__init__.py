"""``duplex chat``: the terminal messenger (Textual), over the client library only."""

from __future__ import annotations

from duplex.tui.app import ChatApp
from duplex.tui.backend import ChatBackend, ChatClient, TokenStore, write_client_config
from duplex.tui.format import Clock
from duplex.tui.notify import Notifier

__all__ = [
    "ChatApp",
    "ChatBackend",
    "ChatClient",
    "Clock",
    "Notifier",
    "TokenStore",
    "write_client_config",
]
