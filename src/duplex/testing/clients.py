"""Helpers for tests that drive real clients: register, log in, wait for events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

from duplex.client import Client, ClientEvent, register
from duplex.errors import RemoteError
from duplex.protocol.hub import SessionConfig
from duplex.testing.servers import scaled

__all__ = ["EventLog", "new_client", "wait_for_event"]

E = TypeVar("E", bound=ClientEvent)

PASSWORD = "correct horse"


async def new_client(
    address: tuple[str, int],
    user: str,
    *,
    register_first: bool = True,
    online: bool = True,
    password: str = PASSWORD,
    **kwargs: Any,
) -> Client:
    """Registers ``user`` (if new), starts a client and waits until it is online."""
    if register_first:
        try:
            await register(address, user, password)
        except RemoteError as exc:
            if exc.code != "name-taken":
                raise
    kwargs.setdefault("session", SessionConfig(heartbeat=0.5, grace=2.0, auth_timeout=5.0))
    kwargs.setdefault("backoff", (0.05, 0.5))
    client = Client(address, user, password=password, **kwargs)
    await client.start(wait_online=scaled(15) if online else None)
    return client


async def wait_for_event(
    client: Client,
    kind: type[E],
    predicate: Callable[[E], bool] = lambda e: True,
    timeout: float = 10.0,
) -> E:
    """Returns the first event of ``kind`` matching ``predicate`` (others are skipped)."""
    end = time.monotonic() + scaled(timeout)
    while True:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no {kind.__name__} within {timeout} s")
        event = await client.next_event(remaining)
        if isinstance(event, kind) and predicate(event):
            return event


class EventLog:
    """Collects every event of a client in the background."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.events: list[ClientEvent] = []
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        async for event in self.client.events():
            self.events.append(event)
            self._changed.set()

    def of(self, kind: type[E]) -> list[E]:
        """Events of ``kind`` so far."""
        return [e for e in self.events if isinstance(e, kind)]

    async def wait(self, predicate: Callable[[EventLog], bool], timeout: float = 10.0) -> None:
        """Waits until ``predicate(self)`` holds (re-checked on each event of this client,
        and every 50 ms for conditions that also look at other clients).

        Raises:
            TimeoutError: not reached within ``timeout`` seconds.
        """
        end = time.monotonic() + scaled(timeout)
        while not predicate(self):
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition not reached")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Stops collecting."""
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
