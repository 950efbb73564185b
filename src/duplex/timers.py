"""The asyncio side of a sans-I/O session's timer, shared by every session driver.

Sessions (:mod:`duplex.protocol.hub`, :mod:`duplex.protocol.peer`) only say when they
next need :meth:`handle_timer`; this arms one loop timer for that, *lazily*: activity
moves a session's deadline later, so a timer that fires early re-reads the deadline
and re-arms, instead of being cancelled and re-created on every frame. One timer wake
per grace period per connection, however busy the connection is. Used by the hub's
connections, the client's hub link and direct peer links.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

__all__ = ["LazyTimer", "TimedSession"]


class TimedSession(Protocol):
    """What a session offers its driver for timers (see STYLE.md, "time is a parameter")."""

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next run (loop time), or None."""
        ...

    def handle_timer(self, now: float) -> None:
        """Runs whatever is due at ``now``."""


class LazyTimer:
    """One loop timer for one session.

    Args:
        loop: the running loop (its ``time()`` is the session's clock).
        session: the session whose deadline it keeps.
        after: called after each :meth:`TimedSession.handle_timer`, so the driver can
            flush what the session queued and look at its events.
    """

    __slots__ = ("_after", "_at", "_handle", "_loop", "_session")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, session: TimedSession, after: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._session = session
        self._after = after
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def arm(self) -> None:
        """Makes sure the timer fires no later than the session's next deadline."""
        deadline = self._session.get_timer()
        if deadline is None:
            self.cancel()
            return
        if self._handle is not None:
            if self._at <= deadline:
                return  # fires earlier and will re-read the deadline then
            self._handle.cancel()
        self._at = deadline
        self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        """Stops the timer (the connection is gone)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._session.handle_timer(self._loop.time())
        self._after()
