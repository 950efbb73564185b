"""A state machine over the messenger: hypothesis chooses the order of everything.

Rules: register, log in, log out, send, a raw ``Ack`` of any sequence (the hub must cap
it at what it sent), drop a client's connection (it reconnects), restart the hub, let
time pass. The world is real: an in-process hub on loopback with its SQLite store
and real clients, each user's client with its own local store on disk (so a user
who logs out and in again is the same device, with its outbox and its last sequence).

Invariants, after every step: nothing shown twice, nothing out of order, nothing
made up. At the end of every example the hub is brought up, everyone logs in, and
every message sent must reach its recipient, once and in order, with its receipt
back at the sender: no loss (the checker of :mod:`duplex.testing.chaos`).

CI runs a few examples (the ``duplex-fuzz-ci`` profile); ``DUPLEX_FUZZ=long`` selects
``duplex-fuzz-long`` for hundreds (``make fuzz``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from duplex.client import Client, register
from duplex.errors import DuplexError
from duplex.protocol.hub import SessionConfig
from duplex.testing.chaos import Checker, ClientTap, note
from duplex.testing.hubs import InProcessHub, hub_test_config, running_hub
from duplex.wire import messages as m

T = TypeVar("T")

USERS = ("ann", "ben", "cat")
PASSWORD = "correct horse"

settings.register_profile(
    "duplex-fuzz-ci",
    max_examples=20,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "duplex-fuzz-long",
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = "duplex-fuzz-long" if os.environ.get("DUPLEX_FUZZ") == "long" else "duplex-fuzz-ci"
TOTALS: collections.Counter[str] = collections.Counter()
pytestmark = pytest.mark.timeout(3600 if PROFILE == "duplex-fuzz-long" else 240)


@pytest.fixture(autouse=True, scope="module")
def _summary() -> Iterator[None]:
    """One line for the whole run (each example checks its own verdict)."""
    yield
    if TOTALS["examples"]:
        note(
            "state machine",
            f"{TOTALS['examples']} examples with messages, {TOTALS['messages']} messages, "
            f"{TOTALS['restarts']} hub restarts: lost 0, duplicated 0, reordered 0",
        )


class Messenger(RuleBasedStateMachine):
    """The messenger, driven step by step from hypothesis (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="duplex-fuzz-"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.checker = Checker("state machine")
        self.hub: InProcessHub | None = None
        self.hub_cm: contextlib.AbstractAsyncContextManager[InProcessHub] | None = None
        self.port = 0
        self.registered: set[str] = set()
        self.clients: dict[str, Client] = {}
        self.taps: dict[str, ClientTap] = {}
        self.run(self._start_hub())

    # -- plumbing ------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Runs ``coro`` on the world's loop and waits for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start_hub(self) -> None:
        config = hub_test_config(self.tmp / "hub", port=self.port, grace=3.0)
        self.hub_cm = running_hub(config)
        self.hub = await self.hub_cm.__aenter__()
        self.port = self.hub.address[1]

    async def _stop_hub(self) -> None:
        if self.hub_cm is not None:
            cm, self.hub_cm, self.hub = self.hub_cm, None, None
            await cm.__aexit__(None, None, None)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def _login(self, user: str) -> None:
        client = Client(
            self.address,
            user,
            password=PASSWORD,
            data_dir=self.tmp / "clients" / user,
            session=SessionConfig(heartbeat=0.5, grace=3.0, auth_timeout=5.0),
            backoff=(0.02, 0.2),
        )
        await client.start()
        self.clients[user] = client
        self.taps[user] = self.checker.tap(client)

    async def _logout(self, user: str, *, polite: bool) -> None:
        client = self.clients.pop(user)
        if polite and client.state == "online":
            await client.logout()
        await client.close()
        await self.taps.pop(user).stop()

    # -- rules -------------------------------------------------------------------------------

    @initialize(online=st.sets(st.sampled_from(USERS), min_size=1))
    def everyone_registered(self, online: set[str]) -> None:
        """Every user has an account; some start logged in."""

        async def go() -> None:
            for user in USERS:
                await register(self.address, user, PASSWORD)
                self.registered.add(user)
            for user in sorted(online):
                await self._login(user)

        self.run(go())

    @precondition(lambda self: self.hub is not None and len(self.registered) < len(USERS))
    @rule(data=st.data())
    def sign_up(self, data: st.DataObject) -> None:
        user = data.draw(st.sampled_from(sorted(set(USERS) - self.registered)), "user")

        async def go() -> None:
            try:
                await register(self.address, user, PASSWORD)
            except DuplexError as exc:
                if getattr(exc, "code", "") != "name-taken":
                    raise
            self.registered.add(user)

        self.run(go())

    @precondition(lambda self: self.registered - set(self.clients))
    @rule(data=st.data())
    def login(self, data: st.DataObject) -> None:
        user = data.draw(st.sampled_from(sorted(self.registered - set(self.clients))), "user")
        self.run(self._login(user))

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), polite=st.booleans())
    def logout(self, data: st.DataObject, polite: bool) -> None:
        user = data.draw(st.sampled_from(sorted(self.clients)), "user")
        self.run(self._logout(user, polite=polite))

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), count=st.integers(1, 8))
    def send(self, data: st.DataObject, count: int) -> None:
        sender = data.draw(st.sampled_from(sorted(self.clients)), "sender")
        recipient = data.draw(st.sampled_from(sorted(self.registered)), "recipient")
        client = self.clients[sender]

        async def go() -> None:
            for i in range(count):
                await client.send(recipient, f"{sender}>{recipient} {i}")

        self.run(go())

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), upto=st.sampled_from([0, 1, 7, 1000, 2**62]))
    def raw_ack(self, data: st.DataObject, upto: int) -> None:
        """An Ack the client did not mean: of nothing, or of what it never got."""
        client = self.clients[data.draw(st.sampled_from(sorted(self.clients)), "user")]

        async def go() -> None:
            link = client._link
            if link is not None:
                link.send(m.Ack(upto=upto))

        self.run(go())

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def drop_connection(self, data: st.DataObject) -> None:
        client = self.clients[data.draw(st.sampled_from(sorted(self.clients)), "user")]

        async def go() -> None:
            link = client._link
            if link is not None:
                link.abort()

        self.run(go())

    @rule()
    def restart_hub(self) -> None:
        self.checker.fault("hub restart")
        self.run(self._stop_hub())
        self.run(self._start_hub())

    @rule(seconds=st.sampled_from([0.0, 0.05, 0.3]))
    def wait(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def nothing_twice_nothing_out_of_order_nothing_made_up(self) -> None:
        report = self.checker.report()
        assert report.duplicated == 0, "shown twice"
        assert report.reordered == 0, self.checker.reorderings()
        assert report.phantom == 0, "shown, never sent"

    def teardown(self) -> None:
        try:
            if self.checker.messages:
                self.run(self._settle())
                report = self.checker.check(keep=False)
                TOTALS["examples"] += 1
                TOTALS["messages"] += report.messages
                TOTALS["restarts"] += report.faults
        finally:
            self.run(self._shutdown())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    async def _settle(self) -> None:
        if self.hub is None:
            await self._start_hub()
        for user in self.registered - set(self.clients):
            await self._login(user)
        await self.checker.wait_settled_async(30)  # check() then says what is missing

    async def _shutdown(self) -> None:
        for user in list(self.clients):
            await self._logout(user, polite=False)
        await self._stop_hub()
        await asyncio.sleep(0.1)  # connections accepted during the stop close now
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.05)  # and the transports those tasks closed
        await asyncio.get_running_loop().shutdown_asyncgens()


Messenger.TestCase.settings = settings.get_profile(PROFILE)
TestMessenger = Messenger.TestCase
