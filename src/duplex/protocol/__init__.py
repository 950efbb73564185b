"""Sans-I/O protocol sessions: bytes in, events out, bytes to send.

Nothing in this package touches a socket, a thread, an event loop or the clock
(``tests/test_layers.py`` enforces it).
"""

from __future__ import annotations

from duplex.protocol.echo import EchoDatagrams, EchoSession, EchoState
from duplex.protocol.events import Closed, Event, Received, TimedOut
from duplex.protocol.handler import DatagramHandler, Endpoint, Handler, HandlerFactory, SocketPair
from duplex.protocol.hub import HubClientSession, HubServerSession, SessionConfig, State

__all__ = [
    "Closed",
    "DatagramHandler",
    "EchoDatagrams",
    "EchoSession",
    "EchoState",
    "Endpoint",
    "Event",
    "Handler",
    "HandlerFactory",
    "HubClientSession",
    "HubServerSession",
    "Received",
    "SessionConfig",
    "SocketPair",
    "State",
    "TimedOut",
]
