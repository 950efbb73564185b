"""Forged, expired, misdirected and replayed tickets at a peer's listener.

bob's direct-path listener accepts a dialer only with a ticket the hub made for him:
MAC'd under his session's ticket key, naming him and his device, not expired, never
seen before, and presented by the sender it names. Each attack below connects to his
listener (TLS, as any dialer must) and presents a bad ticket; bob must refuse with
``Error{code="ticket"}`` naming the failed rule. A message pipelined behind a ticket,
before bob accepted it, is refused by the state table and never shown. Meanwhile
alice streams to bob over the direct path and the checker finds nothing lost,
duplicated, reordered or made up.

An impostor at bob's address (another certificate) is
``tests/p2p/test_direct.py::test_impostor_at_the_peers_address_gets_nothing``: the
dialer's pin check refuses it before a byte of the ticket leaves.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from pathlib import Path

from duplex.p2p import DirectRouter
from duplex.protocol.hub import SessionConfig
from duplex.protocol.tickets import MAX_LIFETIME_MS, mint_ticket
from duplex.testing.chaos import Checker, note
from duplex.testing.clients import new_client
from duplex.testing.hubs import HubProcess
from duplex.wire import messages as m

LINK = SessionConfig(heartbeat=0.5, grace=2.0, auth_timeout=2.0)


def router() -> DirectRouter:
    """A direct path on loopback."""
    return DirectRouter(budget=2.0, host="127.0.0.1", session=LINK, retry=(0.3, 1.0))


async def present(
    endpoint: str, user: str, ticket: bytes, *, smuggle: bool = False
) -> list[m.Message]:
    """Dials ``endpoint``, presents ``ticket`` as ``user`` (with a message right behind
    it if ``smuggle``); returns what the listener answered before closing."""
    host, _, port = endpoint.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # an attacker pins nothing
    reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        writer.write(m.encode(m.Hello(1)) + m.encode(m.PeerHello(user=user, ticket=ticket)))
        if smuggle:
            now = int(time.time() * 1000)
            writer.write(m.encode(m.PeerSend(id=os.urandom(16), body="let me in", ts=now)))
        await writer.drain()
        data = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 5):
                data += chunk
        except (ConnectionError, ssl.SSLError):
            pass
    finally:
        writer.close()
    got = []
    while len(data) >= 4:
        size = int.from_bytes(data[:4], "big")
        got.append(m.decode(data[4 : 4 + size]))
        data = data[4 + size :]
    return got


def test_bad_tickets_are_refused_and_show_nothing(tmp_path: Path) -> None:
    checker = Checker("forged/expired/misdirected/replayed tickets")

    async def scenario() -> None:
        hub = HubProcess(tmp_path / "hub", args=["--synchronous", "NORMAL"])
        clients = []
        try:
            bob = await new_client(hub.address, "bob", router=router())
            carol = await new_client(hub.address, "carol", router=router())
            alice = await new_client(hub.address, "alice", router=router())
            clients += [bob, carol, alice]
            checker.tap(bob)
            checker.tap(alice)

            async def introduce(peer: str) -> m.Introduction:
                reply = await alice.request(lambda rid: m.Introduce(rid=rid, peer=peer))
                assert isinstance(reply, m.Introduction)
                return reply

            for i in range(50):
                await alice.send("bob", f"direct {i}")
            assert await checker.wait_settled_async(30, expect_messages=50)
            live = bob.router.links["alice"]  # type: ignore[union-attr]
            intro = await introduce("bob")
            endpoint = intro.endpoints[0]
            # A message pipelined right behind a ticket, before the listener accepted it,
            # breaks the state table whatever the ticket: refused, never shown, and the
            # live link from alice stays (a genuine ticket must not let a dead link in).
            for ticket in (b"\x00" * 64, (await introduce("bob")).ticket):
                got = await present(endpoint, "alice", ticket, smuggle=True)
                assert [g.code for g in got if isinstance(g, m.Error)] == ["state"], got
                checker.fault("message smuggled behind a ticket")
            assert bob.router.links.get("alice") is live and not live.closed  # type: ignore[union-attr]
            now = int(time.time() * 1000)
            nonce = os.urandom(16)
            key = bob.ticket_key
            flipped = bytearray((await introduce("bob")).ticket)
            flipped[-1] ^= 1
            cases = [
                ("forged MAC (a flipped byte)", "alice", bytes(flipped), "mac"),
                (
                    "forged: the attacker's own key",
                    "alice",
                    mint_ticket(os.urandom(32), "alice", "bob", bob.device, now, nonce),
                    "mac",
                ),
                (
                    "misdirected: a ticket the hub made for carol",
                    "alice",
                    (await introduce("carol")).ticket,
                    "mac",
                ),
                (
                    "misdirected: naming another recipient",
                    "alice",
                    mint_ticket(key, "alice", "carol", bob.device, now, os.urandom(16)),
                    "recipient",
                ),
                (
                    "misdirected: naming another device of bob",
                    "alice",
                    mint_ticket(key, "alice", "bob", "bob-laptop", now, os.urandom(16)),
                    "recipient",
                ),
                (
                    "expired (made 61 s ago)",
                    "alice",
                    mint_ticket(key, "alice", "bob", bob.device, now - 61_000, os.urandom(16)),
                    "expired",
                ),
                (
                    "from the future (beyond the lifetime)",
                    "alice",
                    mint_ticket(
                        key, "alice", "bob", bob.device, now + MAX_LIFETIME_MS, os.urandom(16)
                    ),
                    "expired",
                ),
                (
                    "presented by another sender",
                    "mallory",
                    (await introduce("bob")).ticket,
                    "sender",
                ),
                ("malformed", "alice", b"x" * 20, "malformed"),
            ]
            # Replay: the genuine ticket works once (the attacker stole it), then never.
            first = await present(endpoint, "alice", intro.ticket)
            assert any(isinstance(g, m.PeerAccept) for g in first), first
            cases.append(("replayed", "alice", intro.ticket, "replayed"))
            refused = 0
            for name, user, ticket, reason in cases:
                got = await present(endpoint, user, ticket)
                errors = [g for g in got if isinstance(g, m.Error)]
                assert errors and errors[0].code == "ticket", f"{name}: {got}"
                assert reason in errors[0].message, f"{name}: {errors[0].message}"
                assert not any(isinstance(g, m.PeerAccept) for g in got), name
                refused += 1
                checker.fault("bad ticket")
            assert bob.router.stats.get("ticket-refused", 0) >= refused - 1  # type: ignore[union-attr]
            for i in range(50, 100):
                await alice.send("bob", f"direct {i}")
            settled = await checker.wait_settled_async(30, expect_messages=100)
            report = checker.check()  # phantom: a message behind a refused ticket shown
            assert report.paths.get("direct", 0) >= 90, report.paths
            assert settled
            note(
                "tickets",
                f"{refused} bad tickets refused with the failed rule (mac, recipient, expired, "
                f"sender, malformed, replayed); nothing behind them shown; 100 direct "
                f"messages meanwhile: lost {report.lost}, duplicated {report.duplicated}",
            )
        finally:
            for client in clients:
                await client.close()
            hub.kill()

    asyncio.run(scenario())
