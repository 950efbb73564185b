"""The ``Broker`` protocol: who is online where, and how to reach them.

The hub asks the broker which sessions a user has (on this node or another) and
hands it items to route to the node that holds a session. The in-process backend
(:mod:`duplex.broker.local`) serves a single node; the Redis backend serves a cluster
with presence keys kept alive by TTLs and one channel per node.

Nothing is ever only in the broker: a message is durable in the store before any
routing, and a node that receives an item for a session it no longer holds drops it,
because the session's next login replays it from the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

__all__ = ["Broker", "Routed", "SessionInfo"]


@dataclasses.dataclass(frozen=True, slots=True)
class SessionInfo:
    """One logged-in device, as the broker publishes it.

    Attributes:
        session: the session id (unique in the cluster).
        user: the user name.
        device: the client's device id.
        node: the hub node that holds the connection.
        endpoints: the device's P2P endpoints (``host:port``), the hub-observed last.
        fingerprint: SHA-256 fingerprint of the device's certificate (hex), or "".
        since: login time, in ms since the epoch.
        ticket_key: the session's introduction-ticket key, so that any node can mint a
            ticket for it. It travels only between hub nodes and the broker, which are
            trusted infrastructure (put Redis on a private network, with AUTH/TLS).
    """

    session: str
    user: str
    device: str
    node: str
    endpoints: tuple[str, ...] = ()
    fingerprint: str = ""
    since: int = 0
    ticket_key: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class Routed:
    """An item for a user's sessions on another node.

    Attributes:
        user: whose sessions should get it.
        kind: ``"entry"`` (a mailbox entry to push), ``"presence"``, ``"kick"``, or
            ``"resync"`` (entries routed here may have been lost: re-read the store;
            with no ``user``, for every session of the node).
        payload: kind-specific, msgspec-encodable data.
        session: only this session, or "" for all of the user's sessions on the node.
    """

    user: str
    kind: str
    payload: Any
    session: str = ""


RoutedHandler = Callable[[Routed], Awaitable[None]]


class Broker(Protocol):
    """Presence and cross-node routing. Methods may raise :class:`~duplex.errors.BrokerError`."""

    node: str
    """This node's id."""

    async def start(self, on_routed: RoutedHandler) -> None:
        """Connects, and calls ``on_routed`` for each item routed to this node."""

    async def close(self) -> None:
        """Withdraws this node's sessions and disconnects."""

    async def session_up(self, info: SessionInfo) -> bool:
        """Publishes a session. Returns True when it is the user's first (user now online)."""
        ...

    async def session_down(self, info: SessionInfo) -> bool:
        """Withdraws a session. Returns True when it was the user's last (user now offline)."""
        ...

    async def refresh(self, sessions: list[SessionInfo]) -> list[str]:
        """Keeps these sessions alive (heartbeats); backends with TTLs extend them.

        Returns the users who went offline without a ``session_down`` (the last of
        their sessions was on a node that died), for the hub to tell their watchers;
        each such change once, on one node.
        """
        ...

    async def sessions(self, user: str) -> list[SessionInfo]:
        """Returns the live sessions of ``user`` on every node."""
        ...

    async def route(self, node: str, item: Routed) -> None:
        """Delivers ``item`` to ``node`` (best effort: the store is the source of truth)."""
