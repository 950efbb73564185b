"""The Redis broker against a real Redis: presence, liveness, routing, outages."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from duplex.broker import open_broker
from duplex.broker.base import Routed, SessionInfo
from duplex.errors import BrokerError, ConfigError
from duplex.testing.servers import scaled
from tests.cluster.conftest import REDIS, PrivateRedis

redis_broker = pytest.importorskip("duplex.broker.redis", reason="redis is not installed")
RedisBroker = redis_broker.RedisBroker


def url(prefix: str, base: str = REDIS) -> str:
    return f"{base}{'&' if '?' in base else '?'}prefix={prefix}"


def info(user: str, session: str, node: str, device: str = "d1") -> SessionInfo:
    return SessionInfo(
        session=session, user=user, device=device, node=node, endpoints=("127.0.0.1:9",),
        fingerprint="ab" * 32, since=1, ticket_key=b"k" * 32,
    )  # fmt: skip


class Inbox:
    """What a broker's node received, with a way to wait for it."""

    def __init__(self) -> None:
        self.items: list[Routed] = []
        self.changed = asyncio.Event()

    async def __call__(self, item: Routed) -> None:
        self.items.append(item)
        self.changed.set()

    async def wait(self, predicate: Callable[[list[Routed]], bool], timeout: float = 5) -> None:
        async def until() -> None:
            while not predicate(self.items):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), scaled(timeout))


async def started(address: str, node: str, inbox: Inbox | None = None, **kw: float) -> RedisBroker:
    broker = RedisBroker(address, node, **kw)
    await broker.start(inbox or Inbox())
    return broker


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Polls an async predicate; returns how long it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await predicate():
        if loop.time() - start > scaled(timeout):
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)
    return loop.time() - start


def test_first_and_last_across_nodes(redis_prefix: str) -> None:
    async def scenario() -> None:
        a = await started(url(redis_prefix), "a")
        b = await started(url(redis_prefix), "b")
        try:
            phone, laptop = info("bob", "s1", "a"), info("bob", "s2", "b", device="d2")
            assert await a.session_up(phone) is True
            assert await b.session_up(laptop) is False
            found = sorted(await a.sessions("bob"), key=lambda i: i.session)
            assert found == [phone, laptop]  # every field survives the round trip
            assert await a.sessions("nobody") == []
            assert await a.session_down(phone) is False
            assert await b.session_down(laptop) is True
            assert await b.session_down(laptop) is False  # already gone: not "last" twice
            assert await a.sessions("bob") == []
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_first_is_atomic_when_two_nodes_log_a_user_in_at_once(redis_prefix: str) -> None:
    async def scenario() -> None:
        brokers = [await started(url(redis_prefix), f"n{i}") for i in range(4)]
        try:
            for round_ in range(20):
                ups = [
                    b.session_up(info(f"u{round_}", f"s{round_}-{i}", b.node))
                    for i, b in enumerate(brokers)
                ]
                assert sum(await asyncio.gather(*ups)) == 1
                downs = [
                    b.session_down(info(f"u{round_}", f"s{round_}-{i}", b.node))
                    for i, b in enumerate(brokers)
                ]
                assert sum(await asyncio.gather(*downs)) == 1
        finally:
            for b in brokers:
                await b.close()

    run(scenario())


def test_a_silent_node_stops_counting_within_its_ttl_and_comes_back(redis_prefix: str) -> None:
    async def scenario() -> None:
        ttl = 0.5
        a = await started(url(redis_prefix), "a", ttl=ttl)
        b = await started(url(redis_prefix), "b", ttl=ttl)
        try:
            bob = info("bob", "s1", "b")
            await b.session_up(bob)
            assert await a.sessions("bob") == [bob]
            # b stops refreshing (a dead or stalled node): gone within the ttl.
            took = await until(lambda: _none(a.sessions("bob")), ttl + 1)
            assert took <= ttl + scaled(0.3)
            # a's refresh purges b's entries in Redis (bob is offline now, and nobody
            # said so: a reports him), and a's "first" ignores them.
            assert await a.refresh([]) == ["bob"]
            assert await a.session_up(info("bob", "s9", "a")) is True
            await a.session_down(info("bob", "s9", "a"))
            # b wakes up: its refresh finds it had lapsed and publishes bob again.
            await b.refresh([bob])
            await until(lambda: _has(a.sessions("bob"), bob), 5)
            assert not b.degraded
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_a_dead_nodes_users_are_reported_offline_once(
    redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users whose last session was on a dead node: one refresh of one node reports
    each of them, once, however many refreshes the purge takes; nobody who is still
    online elsewhere, and nobody whose offline a clean ``session_down`` already said."""

    async def scenario() -> None:
        ttl = 0.5  # b's; a and c stay alive through the test without refreshing
        a = await started(url(redis_prefix), "a", ttl=30)
        b = await started(url(redis_prefix), "b", ttl=ttl)
        c = await started(url(redis_prefix), "c", ttl=30)
        try:
            for n in range(4):
                await b.session_up(info("bob", f"bob-{n}", "b", device=f"d{n}"))  # 4 devices
            await b.session_up(info("carol", "carol-b", "b"))
            await a.session_up(info("carol", "carol-a", "a", device="d2"))  # online on a
            await b.session_up(info("dave", "dave-b", "b"))
            await c.session_up(info("dave", "dave-c", "c", device="d2"))
            await b.session_up(info("erin", "erin-b", "b"))
            # b dies (stops refreshing); a and c go on.
            await until(lambda: _none(a.sessions("bob")), ttl + 1)
            # dave's last live session ends cleanly while his entry on b is not purged
            # yet: c says he is offline, and the purge must not say it again.
            assert await c.session_down(info("dave", "dave-c", "c", device="d2")) is True
            reported: list[str] = []
            for _ in range(10):  # one entry per refresh (PURGE_BATCH, set below): b has 7
                reported += await a.refresh([])
                reported += await c.refresh([])
            assert sorted(reported) == ["bob", "erin"]
            assert [s.session for s in await a.sessions("carol")] == ["carol-a"]
        finally:
            for broker in (a, b, c):
                await broker.close()

    monkeypatch.setattr(redis_broker, "PURGE_BATCH", 1)
    run(scenario())


async def _none(found: Awaitable[list[SessionInfo]]) -> bool:
    return not await found


async def _has(found: Awaitable[list[SessionInfo]], wanted: SessionInfo) -> bool:
    return wanted in await found


def test_a_new_incarnation_of_a_node_id_clears_the_old_one(redis_prefix: str) -> None:
    async def scenario() -> None:
        old = await started(url(redis_prefix), "hub-1")
        await old.session_up(info("alice", "old", "hub-1"))
        old._closing = True  # it dies: no withdrawal
        for task in (old._subscriber, old._flusher):
            assert task is not None
            task.cancel()
        await old._close_clients()
        new = await started(url(redis_prefix), "hub-1")
        try:
            assert await new.sessions("alice") == []
        finally:
            await new.close()

    run(scenario())


def test_routing_one_channel_per_node(redis_prefix: str) -> None:
    async def scenario() -> None:
        inbox_b = Inbox()
        a = await started(url(redis_prefix), "a")
        b = await started(url(redis_prefix), "b", inbox_b)
        try:
            entries = [Routed("bob", "entry", ["bob", seq, "msg", "alice", b"i", "x", 1], "s1")
                       for seq in range(1, 201)]  # fmt: skip
            for item in entries:
                await a.route("b", item)
            await a.route("b", Routed("carol", "presence", ["bob", True], "s2"))
            await inbox_b.wait(lambda items: len(items) == 201)
            got = inbox_b.items
            assert [i.payload[1] for i in got[:200]] == list(range(1, 201))  # in order
            assert got[0] == entries[0]
            assert got[200] == Routed("carol", "presence", ["bob", True], "s2")
            await a.route("nowhere", Routed("x", "entry", [], ""))  # no subscriber: dropped
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_start_fails_clearly_when_redis_is_unreachable() -> None:
    async def scenario() -> None:
        broker = RedisBroker("redis://127.0.0.1:1/0", "a", timeout=0.5)
        with pytest.raises(BrokerError, match="unreachable"):
            await broker.start(Inbox())
        with pytest.raises(ConfigError):
            RedisBroker("redis://127.0.0.1/0", "bad\0node")
        with pytest.raises(ConfigError, match="unknown broker"):
            open_broker("kafka://x", "a")
        assert isinstance(open_broker("redis://127.0.0.1/0?prefix=p:", "a"), RedisBroker)

    run(scenario())


def test_redis_restart_degrades_then_recovers_and_resyncs(private_redis: PrivateRedis) -> None:
    async def scenario() -> None:
        inbox_a, inbox_b = Inbox(), Inbox()
        a = await started(private_redis.url, "a", inbox_a, ttl=2, timeout=0.5)
        b = await started(private_redis.url, "b", inbox_b, ttl=2, timeout=0.5)
        try:
            alice, bob = info("alice", "s1", "a"), info("bob", "s2", "b")
            await a.session_up(alice)
            await b.session_up(bob)
            private_redis.stop()
            # Unreachable: each node answers from its own sessions, without raising.
            assert await a.sessions("alice") == [alice]
            assert await a.sessions("bob") == []  # looked up while away: resynced later
            await a.route("b", Routed("bob", "entry", [], "s2"))
            assert a.degraded
            carol = info("carol", "s3", "a")
            assert await a.session_up(carol) is True  # published once Redis is back
            private_redis.start()  # empty: nothing was saved
            # Both come back by themselves, publish their sessions again, and resync.
            # (b may be told twice: by itself, and by a about bob, whom a missed; a's
            # word is lost if b is not subscribed yet, which b's own resync covers.)
            for inbox in (inbox_a, inbox_b):
                await inbox.wait(lambda items: any(i.kind == "resync" and not i.user
                                                   for i in items), 15)  # fmt: skip
            assert not a.degraded and a.outages == 1
            assert await b.sessions("alice") == [alice]
            assert await b.sessions("carol") == [carol]
            assert await a.sessions("bob") == [bob]
            inbox_b.items.clear()
            await a.route("b", Routed("bob", "presence", ["alice", True], "s2"))
            await inbox_b.wait(lambda items: len(items) == 1)
        finally:
            await a.close()
            await b.close()

    run(scenario())
