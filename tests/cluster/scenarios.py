"""The messenger's conformance behaviours (#3), written once, run on every deployment.

A scenario is an async function of a :class:`Deployment`: one or more hub nodes that
share one user population. ``dep.address(i)`` is where the i-th client of a scenario
connects: on a one-node deployment every client meets the same hub; on two nodes
consecutive indexes alternate between them, so alice (0) and bob (1) sit on
different nodes and every push, receipt and presence change crosses Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duplex.client import Client, MessageReceived, MessageStateChanged, PresenceChanged
from duplex.protocol.tickets import NonceCache, check_ticket
from duplex.testing.clients import EventLog, new_client, wait_for_event
from duplex.testing.hubs import InProcessHub, hub_test_config, running_hub
from duplex.wire import messages as m


@dataclass
class Deployment:
    """Hub nodes on the test's event loop that share a store and a broker."""

    name: str
    hubs: list[InProcessHub]

    def address(self, i: int) -> tuple[str, int]:
        """Where the i-th client connects (alternating over the nodes)."""
        return self.hubs[i % len(self.hubs)].address

    def hub(self, i: int) -> InProcessHub:
        """The node the i-th client connects to."""
        return self.hubs[i % len(self.hubs)]

    @property
    def nodes(self) -> int:
        """How many nodes."""
        return len(self.hubs)


@contextlib.asynccontextmanager
async def deployment(
    name: str, tmp_path: Path, nodes: int, store: str = "", broker: str = "local",
    **overrides: Any,
) -> AsyncIterator[Deployment]:  # fmt: skip
    """Starts ``nodes`` in-process hubs (ids n0, n1, ...) on ``store`` and ``broker``."""
    async with contextlib.AsyncExitStack() as stack:
        hubs = []
        for i in range(nodes):
            config = hub_test_config(
                tmp_path / f"n{i}", store=store, broker=broker, node=f"n{i}", **overrides
            )
            hubs.append(await stack.enter_async_context(running_hub(config)))
        yield Deployment(name, hubs)


Scenario = Callable[[Deployment], Awaitable[None]]


async def _replayed(dep: Deployment, i: int, user: str) -> None:
    """Waits until ``user``'s sessions on the i-th client's node have read what the
    store held for them at login. (Online is not enough: a message stored while the
    login replay reads the store comes with the replay, on the "stored" path, and
    the push finds it sent already. The client cannot tell the two apart.)"""
    hub = dep.hub(i).hub
    for _ in range(500):
        sessions = hub.by_user.get(user, {})
        if sessions and not any(live.replaying for live in sessions.values()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{user}'s login replay did not end within 5 s")


async def online_delivery_relayed_and_acked_end_to_end(dep: Deployment) -> None:
    """Online: pushed at once (relayed), and the sender sees delivered."""
    alice = await new_client(dep.address(0), "alice")
    bob = await new_client(dep.address(1), "bob")
    try:
        await _replayed(dep, 1, "bob")
        msg_id = await alice.send("bob", "hello bob")
        got = await wait_for_event(bob, MessageReceived)
        assert (got.peer, got.id, got.body, got.path) == ("alice", msg_id, "hello bob", "relayed")
        states = []
        while len(states) < 3:
            ev = await wait_for_event(alice, MessageStateChanged, lambda e: e.id == msg_id)
            states.append((ev.state, ev.path))
        assert states == [("queued", None), ("stored", "relayed"), ("delivered", None)]
        # And back, the other way across the nodes.
        reply = await bob.send("alice", "hello alice")
        assert (await wait_for_event(alice, MessageReceived)).id == reply
        assert await bob.wait_state(reply, "delivered", 10) == "delivered"
    finally:
        await alice.close()
        await bob.close()


async def offline_messages_are_stored_then_delivered_in_order(dep: Deployment) -> None:
    """Offline: stored, then replayed in order at the next login (on another node)."""
    bob = await new_client(dep.address(0), "bob")
    await bob.close()
    alice = await new_client(dep.address(0), "alice")
    ids = [await alice.send("bob", f"message {i}") for i in range(30)]
    for msg_id in ids:
        assert await alice.wait_state(msg_id, "stored", 10) == "stored"
    assert alice.state_of(ids[0]) == ("stored", "stored")
    bob = await new_client(dep.address(1), "bob", register_first=False)
    log = EventLog(bob)
    try:
        await log.wait(lambda lg: len(lg.of(MessageReceived)) == 30)
        received = log.of(MessageReceived)
        assert [e.body for e in received] == [f"message {i}" for i in range(30)]
        assert {e.path for e in received} == {"stored"}
        for msg_id in ids:
            assert await alice.wait_state(msg_id, "delivered", 10) == "delivered"
    finally:
        await log.stop()
        await alice.close()
        await bob.close()


async def resent_id_is_stored_once_and_shown_once(dep: Deployment) -> None:
    """A resent id (the sender lost the Stored answer) is stored and shown once."""
    bob = await new_client(dep.address(1), "bob")
    alice = await new_client(dep.address(0), "alice")
    try:
        msg_id = await alice.send("bob", "only once")
        await alice.wait_state(msg_id, "delivered", 10)
        for _ in range(3):
            alice.send_via_hub(msg_id, "bob", "only once")
        follow = await alice.send("bob", "next")
        await wait_for_event(bob, MessageReceived, lambda e: e.id == follow)
        log = EventLog(bob)
        await asyncio.sleep(0.2)
        assert log.of(MessageReceived) == []
        await log.stop()
        assert (await dep.hub(0).hub.store.stats()).messages == 2
        assert dep.hub(0).hub.metrics.duplicates.value == 3
    finally:
        await alice.close()
        await bob.close()


async def presence_is_pushed_to_contacts(dep: Deployment) -> None:
    """Contacts see a user come online and go offline, wherever each one is."""
    bob = await new_client(dep.address(1), "bob")
    await bob.close()
    alice = await new_client(dep.address(0), "alice")
    try:
        await alice.add_contact("bob")
        assert await wait_for_event(alice, PresenceChanged) == PresenceChanged("bob", False)
        bob = await new_client(dep.address(1), "bob", register_first=False)
        assert await wait_for_event(alice, PresenceChanged) == PresenceChanged("bob", True)
        assert [(c.user, c.online) for c in await alice.contacts()] == [("bob", True)]
        await bob.close()
        assert await wait_for_event(alice, PresenceChanged) == PresenceChanged("bob", False)
        assert [(c.user, c.online) for c in await alice.contacts()] == [("bob", False)]
    finally:
        await alice.close()


async def two_sessions_of_one_user_both_receive(dep: Deployment) -> None:
    """Every device of the recipient gets the message (the two may be on two nodes)."""
    phone = await new_client(dep.address(0), "bob")
    laptop = await new_client(dep.address(1), "bob", register_first=False)
    alice = await new_client(dep.address(2), "alice")
    try:
        assert phone.device != laptop.device
        msg_id = await alice.send("bob", "to every device")
        for device in (phone, laptop):
            got = await wait_for_event(device, MessageReceived)
            assert got.id == msg_id
    finally:
        for client in (alice, phone, laptop):
            await client.close()


async def introduction_with_a_valid_ticket(dep: Deployment) -> None:
    """Introduce -> Introduction whose ticket the target device accepts. On two nodes
    the ticket is minted by alice's node, which does not hold bob's session."""
    bob = await new_client(dep.address(1), "bob")
    alice = await new_client(dep.address(0), "alice")
    try:
        offline = await alice.request(lambda rid: m.Introduce(rid=rid, peer="bob"))
        assert isinstance(offline, m.PeerOffline)  # bob has no peer listener
        await bob.close()
        bob = Client(dep.address(1), "bob", password="correct horse", backoff=(0.05, 0.5))
        bob.fingerprint = "ab" * 32  # as a client with a peer listener reports them
        bob.endpoints = ["127.0.0.1:9"]
        await bob.start(wait_online=10)
        if dep.nodes > 1:
            holder = dep.hub(1).hub
            assert bob.session_id in holder.local
            assert bob.session_id not in dep.hub(0).hub.local
        reply = await alice.request(lambda rid: m.Introduce(rid=rid, peer="bob"))
        assert isinstance(reply, m.Introduction), reply
        assert (reply.peer, reply.device, reply.fingerprint) == ("bob", bob.device, "ab" * 32)
        assert "127.0.0.1:9" in reply.endpoints
        ticket = check_ticket(
            reply.ticket, bob.ticket_key, "bob", bob.device, int(time.time() * 1000), NonceCache()
        )
        assert ticket.sender == "alice"
    finally:
        await alice.close()
        await bob.close()


SCENARIOS: list[Scenario] = [
    online_delivery_relayed_and_acked_end_to_end,
    offline_messages_are_stored_then_delivered_in_order,
    resent_id_is_stored_once_and_shown_once,
    presence_is_pushed_to_contacts,
    two_sessions_of_one_user_both_receive,
    introduction_with_a_valid_ticket,
]
