"""The direct path on loopback: real hub, real clients, real TLS links."""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from pathlib import Path

from duplex.client import (
    Client,
    MessageReceived,
    MessageStateChanged,
    PresenceChanged,
    register,
)
from duplex.p2p import DirectRouter
from duplex.protocol.hub import SessionConfig
from duplex.testing.clients import EventLog, new_client, wait_for_event
from duplex.testing.hubs import hub_test_config, running_hub
from duplex.tls import ensure_certificate, server_context
from duplex.wire import messages as m

LINK = SessionConfig(heartbeat=0.5, grace=2.0, auth_timeout=2.0)


def router(**kw: object) -> DirectRouter:
    kw.setdefault("budget", 2.0)
    kw.setdefault("session", LINK)
    kw.setdefault("retry", (0.3, 1.0))
    return DirectRouter(**kw)  # type: ignore[arg-type]


async def pair(address: tuple[str, int], **kw: object) -> tuple[Client, Client]:
    bob = await new_client(address, "bob", router=router(**kw))
    alice = await new_client(address, "alice", router=router(**kw))
    return alice, bob


def test_both_online_goes_direct_and_the_hub_sees_no_body(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            alice, bob = await pair(hub.address)
            ids = [await alice.send("bob", f"direct {i}") for i in range(20)]
            log = EventLog(bob)
            await log.wait(lambda lg: len(lg.of(MessageReceived)) == 20)
            assert [e.body for e in log.of(MessageReceived)] == [f"direct {i}" for i in range(20)]
            assert {e.path for e in log.of(MessageReceived)} == {"direct"}
            for msg_id in ids:
                assert await alice.wait_state(msg_id, "delivered", 5) == "delivered"
                assert alice.state_of(msg_id) == ("delivered", "direct")
            assert (await hub.hub.store.stats()).messages == 0  # no body went through the hub
            # The link is reused both ways: bob answers on it.
            reply = await bob.send("alice", "back at you")
            got = await wait_for_event(alice, MessageReceived)
            assert (got.id, got.path) == (reply, "direct")
            assert len(alice.router.links) == 1  # type: ignore[union-attr]
            assert hub.hub.metrics.direct.labels("ok")._value.get() == 1  # type: ignore[attr-defined]
            assert hub.hub.metrics.introductions._value.get() == 1  # type: ignore[attr-defined]
            await log.stop()
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_closed_peer_port_falls_back_to_the_hub_within_the_budget(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            alice, bob = await pair(hub.address)
            bob.router.stop_listening()  # type: ignore[union-attr]
            loop = asyncio.get_running_loop()
            started = loop.time()
            msg_id = await alice.send("bob", "the port is closed")
            got = await wait_for_event(bob, MessageReceived)
            took = loop.time() - started
            assert (got.id, got.path) == (msg_id, "relayed")
            assert took < 2.0 + 1.0, f"fallback took {took:.2f} s"
            assert await alice.wait_state(msg_id, "delivered", 5) == "delivered"
            assert alice.state_of(msg_id) == ("delivered", "relayed")
            log = EventLog(bob)
            await asyncio.sleep(0.3)
            assert log.of(MessageReceived) == []  # once only
            assert hub.hub.metrics.direct.labels("refused")._value.get() == 1  # type: ignore[attr-defined]
            await log.stop()
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_impostor_at_the_peers_address_gets_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            alice, bob = await pair(hub.address, host="127.0.0.1")
            bob_router = bob.router
            assert isinstance(bob_router, DirectRouter)
            [endpoint] = bob_router.endpoints
            port = int(endpoint.rpartition(":")[2])
            bob_router.stop_listening()
            await asyncio.sleep(0.05)
            # The impostor takes bob's port with a certificate of its own.
            cert, key, _ = ensure_certificate(tmp_path / "impostor", "device", "not bob")
            received: list[bytes] = []

            async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                received.append(await reader.read(65536))
                writer.close()

            fake = await asyncio.start_server(
                impostor, "127.0.0.1", port, ssl=server_context(cert, key), reuse_address=True
            )
            try:
                msg_id = await alice.send("bob", "for bob only")
                got = await wait_for_event(bob, MessageReceived, timeout=10)
                assert (got.id, got.path) == (msg_id, "relayed")
                assert hub.hub.metrics.direct.labels("pin")._value.get() == 1  # type: ignore[attr-defined]
                assert all(
                    b"for bob only" not in chunk and b"peer-hello" not in chunk
                    for chunk in received
                )
            finally:
                fake.close()
                await fake.wait_closed()
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_a_replayed_ticket_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            alice, bob = await pair(hub.address)
            intro = await alice.request(lambda rid: m.Introduce(rid=rid, peer="bob"))
            assert isinstance(intro, m.Introduction)
            host, _, port = intro.endpoints[0].rpartition(":")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE

            async def present() -> bytes:
                reader, writer = await asyncio.open_connection(
                    host.strip("[]"), int(port), ssl=context
                )
                writer.write(
                    m.encode(m.Hello(1)) + m.encode(m.PeerHello(user="alice", ticket=intro.ticket))
                )
                await writer.drain()
                data = await asyncio.wait_for(reader.read(65536), 5)
                writer.close()
                return data

            first = await present()
            assert b"peer-accept" in first
            second = await present()
            assert b"peer-accept" not in second
            assert b"replayed" in second
            bob_router = bob.router
            assert isinstance(bob_router, DirectRouter)
            assert bob_router.stats.get("ticket-refused") == 1
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_killing_the_link_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path, send_burst=5000, send_rate=5000)) as hub:
            alice, bob = await pair(hub.address)
            log = EventLog(bob)
            states = EventLog(alice)
            ids = [await alice.send("bob", "warm-up")]
            await log.wait(lambda lg: len(lg.of(MessageReceived)) == 1)  # the link is up
            for i in range(1, 1000):
                ids.append(await alice.send("bob", f"n{i}"))
                if i == 400:
                    link = alice.router.links["bob"]  # type: ignore[union-attr]
                    link.abort()  # cut mid-stream: some sent, some acked, some in flight
                if i % 50 == 0:
                    await asyncio.sleep(0)
            await log.wait(lambda lg: len({e.id for e in lg.of(MessageReceived)}) == 1000, 30)
            await asyncio.sleep(0.3)
            counts = Counter(e.id for e in log.of(MessageReceived))
            assert set(counts) == set(ids)
            assert max(counts.values()) == 1, "a message was shown twice"
            paths = Counter(e.path for e in log.of(MessageReceived))
            assert paths["direct"] > 0
            assert paths["relayed"] + paths["stored"] > 0
            for msg_id in ids:
                assert await alice.wait_state(msg_id, "delivered", 10) == "delivered"
            delivered = [e for e in states.of(MessageStateChanged) if e.state == "delivered"]
            assert len({e.id for e in delivered}) == 1000
            await log.stop()
            await states.stop()
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_after_a_fallback_the_direct_path_comes_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            alice, bob = await pair(hub.address)
            first = await alice.send("bob", "direct")
            assert (await wait_for_event(bob, MessageReceived)).path == "direct"
            alice.router.links["bob"].abort()  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
            relayed = await alice.send("bob", "while the retry waits")
            assert (await wait_for_event(bob, MessageReceived)).path == "relayed"
            await asyncio.sleep(0.5)  # past the retry time (0.3 s in these tests)
            later = await alice.send("bob", "direct again")
            got = await wait_for_event(bob, MessageReceived)
            assert (got.id, got.path) == (later, "direct")
            assert {first, relayed} and alice.state_of(later)[1] in (None, "direct")  # type: ignore[index]
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_a_contact_that_comes_online_is_dialed_at_once(tmp_path: Path) -> None:
    """Offline, the hub stores, and the router does not ask again for a while (5 s);
    but the hub's presence push that the contact is back ends that wait: the next
    message goes direct, not through the hub."""

    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            await register(hub.address, "bob", "correct horse")
            alice = await new_client(hub.address, "alice", router=router())
            await alice.add_contact("bob")
            alog = EventLog(alice)
            stored = await alice.send("bob", "while you were out")
            assert await alice.wait_state(stored, "stored", 5) == "stored"
            assert alice.router.stats.get("offline") == 1  # type: ignore[union-attr]
            bob = await new_client(hub.address, "bob", register_first=False, router=router())
            await alog.wait(lambda lg: any(p.online for p in lg.of(PresenceChanged)))
            back = await alice.send("bob", "welcome back")
            blog = EventLog(bob)
            await blog.wait(lambda lg: back in {e.id for e in lg.of(MessageReceived)})
            got = {e.id: e.path for e in blog.of(MessageReceived)}
            assert got[back] == "direct"
            await alog.stop()
            await blog.stop()
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_several_devices_of_the_recipient_go_through_the_hub(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            alice, phone = await pair(hub.address)
            laptop = await new_client(hub.address, "bob", register_first=False, router=router())
            msg_id = await alice.send("bob", "to all of bob")
            for device in (phone, laptop):
                got = await wait_for_event(device, MessageReceived)
                # Through the hub either way: pushed, or in the login replay of a device
                # whose session was still coming up (a loaded machine).
                assert got.id == msg_id
                assert got.path in ("relayed", "stored")
            for c in (alice, phone, laptop):
                await c.close()

    asyncio.run(scenario())
