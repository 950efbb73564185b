"""The in-process broker: one hub node, presence in a dict, nothing to route."""

from __future__ import annotations

from duplex.broker.base import Routed, RoutedHandler, SessionInfo
from duplex.errors import BrokerError

__all__ = ["LocalBroker"]


class LocalBroker:
    """Presence of the sessions of this process; routing only to itself.

    Args:
        node: this node's id.
    """

    def __init__(self, node: str = "local") -> None:
        self.node = node
        self._by_user: dict[str, dict[str, SessionInfo]] = {}
        self._on_routed: RoutedHandler | None = None

    async def start(self, on_routed: RoutedHandler) -> None:
        """Remembers the handler (items routed to this node go straight to it)."""
        self._on_routed = on_routed

    async def close(self) -> None:
        """Forgets every session."""
        self._by_user.clear()

    async def session_up(self, info: SessionInfo) -> bool:
        """Adds a session; True when it is the user's first."""
        sessions = self._by_user.setdefault(info.user, {})
        first = not sessions
        sessions[info.session] = info
        return first

    async def session_down(self, info: SessionInfo) -> bool:
        """Removes a session; True when it was the user's last."""
        sessions = self._by_user.get(info.user)
        if not sessions or sessions.pop(info.session, None) is None:
            return False
        if sessions:
            return False
        del self._by_user[info.user]
        return True

    async def refresh(self, sessions: list[SessionInfo]) -> list[str]:
        """Nothing to refresh: presence here lives exactly as long as the session."""
        return []

    async def sessions(self, user: str) -> list[SessionInfo]:
        """Returns the user's sessions."""
        return list(self._by_user.get(user, {}).values())

    def sessions_now(self, user: str) -> list[SessionInfo]:
        """The same as :meth:`sessions`, without a suspension point (hot path)."""
        found = self._by_user.get(user)
        return list(found.values()) if found else []

    async def route(self, node: str, item: Routed) -> None:
        """Hands ``item`` to this node's handler; there is no other node.

        Raises:
            BrokerError: ``node`` is not this node.
        """
        if node != self.node:
            raise BrokerError(f"the local broker has no node {node!r}")
        if self._on_routed is not None:
            await self._on_routed(item)
