"""The direct peer link, both ends, sans-I/O.

A direct link is the hub protocol's little sibling on the same framing and the same
session machinery (:mod:`duplex.protocol.hub`): Hello both ways, then the *dialer*
presents the hub's ticket in :class:`~duplex.wire.messages.PeerHello`, the *listener*
checks it (:mod:`duplex.protocol.tickets`) and answers
:class:`~duplex.wire.messages.PeerAccept`; from then on both sides send
:class:`~duplex.wire.messages.PeerSend` and acknowledge each with
:class:`~duplex.wire.messages.PeerAck`. The dialer pings like a client does its hub,
and both give up on a silent peer after the grace.

The listener's authentication timeout bounds how long a stranger may hold a
connection to a peer's listener without a valid ticket.
"""

from __future__ import annotations

from duplex.protocol.hub import (
    HubClientSession,
    HubServerSession,
    Role,
    State,
)
from duplex.wire import messages as m
from duplex.wire.messages import Message

__all__ = ["PEER_DIALER_TABLE", "PEER_LISTENER_TABLE", "PeerDialerSession", "PeerListenerSession"]

H, A, L, R = State.HELLO, State.AUTH, State.LOGIN, State.READY
_TRAFFIC: dict[type[Message], State] = {m.PeerSend: R, m.PeerAck: R}

PEER_LISTENER_TABLE: dict[str, dict[State, dict[type[Message], State]]] = {
    "receive": {H: {}, A: {m.PeerHello: L}, L: {}, R: _TRAFFIC},
    "send": {H: {}, A: {}, L: {m.PeerAccept: R}, R: _TRAFFIC},
}
PEER_DIALER_TABLE: dict[str, dict[State, dict[type[Message], State]]] = {
    "receive": {H: {}, A: {}, L: {m.PeerAccept: R}, R: _TRAFFIC},
    # The ticket may follow our Hello at once, as a Login may on a hub connection.
    "send": {H: {m.PeerHello: L}, A: {m.PeerHello: L}, L: {}, R: _TRAFFIC},
}


class PeerListenerSession(HubServerSession):
    """The accepting end: checks the ticket, then exchanges messages."""

    role = Role.LISTENER
    table = PEER_LISTENER_TABLE


class PeerDialerSession(HubClientSession):
    """The dialing end: presents the ticket, pings, then exchanges messages."""

    role = Role.DIALER
    table = PEER_DIALER_TABLE
