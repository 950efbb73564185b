"""Restart Redis (a private server, never the machine's) under two hub nodes in traffic."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from duplex.client import MessageReceived, MessageStateChanged
from duplex.testing.clients import EventLog, new_client
from duplex.testing.servers import scaled
from tests.cluster.conftest import PrivateRedis, needs_cluster, unique_name
from tests.cluster.scenarios import deployment


@needs_cluster
def test_redis_restart_loses_nothing_and_routing_recovers(
    tmp_path: Path, pg_schema: str, private_redis: PrivateRedis
) -> None:
    from tests.cluster.conftest import PG

    async def scenario() -> None:
        store = f"{PG}{'&' if '?' in PG else '?'}schema={pg_schema}"
        broker = f"{private_redis.url}?prefix={unique_name()}:"
        async with deployment("restart", tmp_path, 2, store=store, broker=broker) as dep:
            alice = await new_client(dep.address(0), "alice")
            bob = await new_client(dep.address(1), "bob")
            carol = await new_client(dep.address(0), "carol")
            logs = {c.user: EventLog(c) for c in (alice, bob, carol)}
            sent: list[tuple[str, bytes]] = []
            try:

                async def flood(rounds: int) -> None:
                    for i in range(rounds):
                        sent.append(("bob", await alice.send("bob", f"a{i}")))
                        sent.append(("bob", await carol.send("bob", f"c{i}")))
                        sent.append(("alice", await bob.send("alice", f"b{i}")))
                        await asyncio.sleep(0.005)

                await flood(40)
                private_redis.restart()  # SIGKILL, then an empty server on the same port
                await flood(40)
                # The last burst goes while a node may still be reconnecting, and
                # nothing follows it: no later entry or login may be needed for it.
                total = len(sent)
                received = lambda: sum(len(lg.of(MessageReceived)) for lg in logs.values())  # noqa: E731
                await logs["bob"].wait(lambda _: received() >= total, 30)
                got = [e for lg in logs.values() for e in lg.of(MessageReceived)]
                counts = Counter(e.id for e in got)
                assert not [i for i, n in counts.items() if n > 1], "shown twice"
                acked = {
                    e.id for lg in logs.values() for e in lg.of(MessageStateChanged)
                    if e.state in ("stored", "delivered")
                }  # fmt: skip
                assert not acked - set(counts), "an acked message was lost"
                assert set(counts) == {i for _, i in sent}
                # Routing recovered by itself: both nodes are back in Redis, and a new
                # message crosses from node 0 to node 1 at once, relayed.
                for hub in dep.hubs:
                    broker_ = hub.hub.broker
                    end = time.monotonic() + scaled(10)
                    while broker_.degraded:  # type: ignore[attr-defined]
                        assert time.monotonic() < end, "a node never got Redis back"
                        await asyncio.sleep(0.05)
                    assert broker_.outages >= 1  # type: ignore[attr-defined]
                start = time.monotonic()
                msg_id = await alice.send("bob", "after the restart")
                await logs["bob"].wait(
                    lambda lg: any(e.id == msg_id for e in lg.of(MessageReceived))
                )
                took = time.monotonic() - start
                # Node 0 saw bob online through Redis ("relayed"), and the entry reached
                # node 1 at once: nothing else (no resync, no login) would bring it now.
                # (The bound allows for one PostgreSQL deadlock retry, which waits for
                # the server's deadlock_timeout, 1 s by default.)
                # alice hears "stored" on her own connection; nothing orders it with bob's
                # copy, so wait for it rather than read it at the instant bob has his.
                assert await alice.wait_state(msg_id, "stored", scaled(5)) in (
                    "stored",
                    "delivered",
                )
                assert alice.state_of(msg_id) in (("stored", "relayed"), ("delivered", "relayed"))
                assert took < scaled(2.5), f"took {took:.2f} s"
                print(
                    f"\nredis restart: {total} messages, {len(acked)} acked, lost 0, "
                    f"duplicated 0; a new message crossed nodes in {took * 1000:.0f} ms"
                )
            finally:
                for log in logs.values():
                    await log.stop()
                for client in (alice, bob, carol):
                    await client.close()

    asyncio.run(scenario())


@needs_cluster
def test_a_lost_route_is_delivered_without_a_next_message(
    tmp_path: Path, pg_schema: str, redis_prefix: str
) -> None:
    """The hole a missed route would leave: the LAST entry of a burst lost between nodes.
    The receiving node's resync (what its broker asks after every resubscription) reads
    it from the store at once, with no later entry or login."""
    from duplex.broker.base import Routed
    from tests.cluster.conftest import PG, REDIS

    async def scenario() -> None:
        store = f"{PG}{'&' if '?' in PG else '?'}schema={pg_schema}"
        broker = f"{REDIS}{'&' if '?' in REDIS else '?'}prefix={redis_prefix}"
        async with deployment("lost", tmp_path, 2, store=store, broker=broker) as dep:
            alice = await new_client(dep.address(0), "alice")
            bob = await new_client(dep.address(1), "bob")
            log = EventLog(bob)
            try:
                first = await alice.send("bob", "first")
                await log.wait(lambda lg: len(lg.of(MessageReceived)) == 1)
                sender_broker = dep.hub(0).hub.broker
                real_route = sender_broker.route

                async def lose(node: str, item: Routed) -> None:
                    pass  # the item vanishes, as in a pub/sub reconnect

                sender_broker.route = lose  # type: ignore[method-assign]
                last = await alice.send("bob", "last")
                assert await alice.wait_state(last, "stored", 10) == "stored"
                await asyncio.sleep(0.3)
                assert [e.id for e in log.of(MessageReceived)] == [first]  # stranded
                sender_broker.route = real_route  # type: ignore[method-assign]
                await dep.hub(1).hub._on_routed(Routed("", "resync", None))
                await log.wait(lambda lg: len(lg.of(MessageReceived)) == 2, 5)
                assert [e.id for e in log.of(MessageReceived)] == [first, last]
            finally:
                await log.stop()
                await alice.close()
                await bob.close()

    asyncio.run(scenario())
