"""The hub with real clients on loopback (in-process hub, real sockets, real SQLite)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from duplex.client import (
    Client,
    ConnectionStateChanged,
    MessageReceived,
    MessageStateChanged,
    PresenceChanged,
    new_message_id,
    register,
)
from duplex.client.local import LocalStore
from duplex.errors import AuthError, RemoteError, StoreError, Unsendable
from duplex.hub import core
from duplex.hub.core import LiveSession
from duplex.store.base import Entry
from duplex.testing.clients import PASSWORD, EventLog, new_client, wait_for_event
from duplex.testing.hubs import hub_test_config, running_hub
from duplex.wire import messages as m
from duplex.wire.frames import encode_frame


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_online_delivery_relayed_and_acked_end_to_end(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            bob = await new_client(hub.address, "bob")
            alice = await new_client(hub.address, "alice")
            try:
                msg_id = await alice.send("bob", "hello bob")
                got = await wait_for_event(bob, MessageReceived)
                assert (got.peer, got.id, got.body, got.path) == (
                    "alice",
                    msg_id,
                    "hello bob",
                    "relayed",
                )
                states = []
                while len(states) < 3:
                    ev = await wait_for_event(alice, MessageStateChanged, lambda e: e.id == msg_id)
                    states.append((ev.state, ev.path))
                assert states == [("queued", None), ("stored", "relayed"), ("delivered", None)]
                assert alice.state_of(msg_id) == ("delivered", "relayed")
            finally:
                await alice.close()
                await bob.close()

    run(scenario())


def test_offline_messages_are_stored_then_delivered_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            bob = await new_client(hub.address, "bob")
            await bob.close()  # bob exists but is offline
            alice = await new_client(hub.address, "alice")
            ids = [await alice.send("bob", f"message {i}") for i in range(30)]
            for msg_id in ids:
                assert await alice.wait_state(msg_id, "stored", 10) == "stored"
            assert alice.state_of(ids[0]) == ("stored", "stored")
            bob = await new_client(hub.address, "bob", register_first=False)
            log = EventLog(bob)
            await log.wait(lambda lg: len(lg.of(MessageReceived)) == 30)
            received = log.of(MessageReceived)
            assert [e.body for e in received] == [f"message {i}" for i in range(30)]
            assert {e.path for e in received} == {"stored"}
            for msg_id in ids:
                assert await alice.wait_state(msg_id, "delivered", 10) == "delivered"
            await log.stop()
            await alice.close()
            await bob.close()

    run(scenario())


def test_two_sessions_of_one_user_both_receive(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            phone = await new_client(hub.address, "bob")
            laptop = await new_client(hub.address, "bob", register_first=False)
            assert phone.device != laptop.device
            alice = await new_client(hub.address, "alice")
            msg_id = await alice.send("bob", "to every device")
            for device in (phone, laptop):
                got = await wait_for_event(device, MessageReceived)
                assert got.id == msg_id
            for client in (alice, phone, laptop):
                await client.close()

    run(scenario())


def test_resent_id_is_stored_once_and_shown_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            bob = await new_client(hub.address, "bob")
            alice = await new_client(hub.address, "alice")
            msg_id = await alice.send("bob", "only once")
            await alice.wait_state(msg_id, "delivered", 10)
            for _ in range(3):  # a client that lost the Stored answer resends
                alice.send_via_hub(msg_id, "bob", "only once")
            follow = await alice.send("bob", "next")
            await wait_for_event(bob, MessageReceived, lambda e: e.id == follow)
            log = EventLog(bob)
            await asyncio.sleep(0.2)
            assert log.of(MessageReceived) == []
            stats = await hub.hub.store.stats()
            assert stats.messages == 2
            assert hub.hub.metrics.duplicates.value == 3
            await log.stop()
            await alice.close()
            await bob.close()

    run(scenario())


def test_wrong_password_is_a_clear_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            alice = await new_client(hub.address, "alice")
            await alice.close()
            with pytest.raises(AuthError, match="wrong user name or password"):
                await new_client(hub.address, "alice", register_first=False, password="nope")
            with pytest.raises(AuthError, match="wrong user name or password"):
                await new_client(hub.address, "nobody", register_first=False)

    run(scenario())


def test_registration_refusals(tmp_path: Path) -> None:
    async def scenario() -> None:
        from duplex.client import register

        async with running_hub(hub_test_config(tmp_path)) as hub:
            await register(hub.address, "carol", "long enough")
            with pytest.raises(RemoteError) as taken:
                await register(hub.address, "carol", "long enough")
            assert taken.value.code == "name-taken"
            with pytest.raises(RemoteError) as bad:
                await register(hub.address, "Bad Name!", "long enough")
            assert bad.value.code == "bad-name"
            with pytest.raises(RemoteError) as weak:
                await register(hub.address, "dave", "123")
            assert weak.value.code == "weak-password"

    run(scenario())


def test_brute_force_is_throttled_but_the_real_user_gets_in(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = hub_test_config(tmp_path, login_burst=3, login_rate=0.01)
        async with running_hub(config) as hub:
            real = await new_client(hub.address, "alice")
            await real.close()
            codes = []
            for attempt in range(6):  # the attacker, from 127.0.0.1
                try:
                    await new_client(
                        hub.address,
                        "alice",
                        register_first=False,
                        password=f"guess{attempt}",
                        reconnect=False,
                    )
                except (AuthError, Exception) as exc:
                    codes.append(str(exc))
            assert sum("too many login attempts" in c for c in codes) >= 2, codes
            # The right password from the attacker's address is throttled too...
            with pytest.raises(Exception, match="too many login attempts"):
                await new_client(hub.address, "alice", register_first=False, reconnect=False)
            # ...but alice, from her own address, logs in at once.
            alice = await new_client(hub.address, "alice", register_first=False, bind="127.0.0.2")
            assert alice.state == "online"
            await alice.close()

    run(scenario())


async def _raw_login(address: tuple[str, int], user: str) -> socket.socket:
    """A raw TCP client that logs in and then does whatever the test wants."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(m.encode(m.Hello(1, "raw")))
    writer.write(m.encode(m.Login(rid=1, user=user, device="raw", password="correct horse")))
    await writer.drain()
    while True:
        size = int.from_bytes(await reader.readexactly(4), "big")
        msg = m.decode(await reader.readexactly(size))
        if isinstance(msg, m.Welcome):
            break
    sock = writer.get_extra_info("socket").dup()
    writer.transport.pause_reading()
    writer.close()
    return sock  # type: ignore[no-any-return]


class _RawSession:
    """A logged-in connection that sends and reads frames by hand, and pings only when
    told to: it shows when the hub writes what."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def login(cls, address: tuple[str, int], user: str) -> _RawSession:
        await register(address, user, PASSWORD)
        reader, writer = await asyncio.open_connection(*address)
        writer.write(m.encode(m.Hello(1, "raw")))
        writer.write(m.encode(m.Login(rid=1, user=user, device="raw", password=PASSWORD)))
        raw = cls(reader, writer)
        while not isinstance(await raw.next(5.0), m.Welcome):
            pass
        return raw

    async def next(self, timeout: float) -> m.Message | None:
        """The next message, or None if none comes within ``timeout`` seconds."""
        try:
            size = int.from_bytes(await asyncio.wait_for(self.reader.readexactly(4), timeout))
        except TimeoutError:
            return None
        return m.decode(await self.reader.readexactly(size))

    def send(self, to: str, body: str) -> bytes:
        msg_id = new_message_id()
        self.writer.write(m.encode(m.Send(id=msg_id, to=to, body=body)))
        return msg_id

    def close(self) -> None:
        self.writer.close()


def test_a_receipt_rides_with_the_next_frame_or_leaves_after_the_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender's "delivered" (a receipt) does not cost a write of its own when more
    goes to the sender soon (core.RECEIPT_FLUSH_DELAY), and is never held longer than
    twice that."""

    async def first_message_received(
        delay: float, rest: Callable[[_RawSession, bytes], Awaitable[None]]
    ) -> None:
        """alice (raw) sends bob one message and sees it stored; once bob has it (and
        acks it), ``rest(alice, its id)``."""
        monkeypatch.setattr(core, "RECEIPT_FLUSH_DELAY", delay)
        async with running_hub(hub_test_config(tmp_path / str(delay))) as hub:
            bob = await new_client(hub.address, "bob")
            alice = await _RawSession.login(hub.address, "alice")
            try:
                first = alice.send("bob", "one")
                stored = await alice.next(5.0)
                assert isinstance(stored, m.Stored) and stored.id == first
                await wait_for_event(bob, MessageReceived, lambda e: e.id == first)
                await rest(alice, first)
            finally:
                alice.close()
                await bob.close()

    async def company(alice: _RawSession, first: bytes) -> None:
        # Held for 30 s: nothing else goes to alice, yet the next Stored brings the
        # receipt along, ahead of itself.
        assert await alice.next(0.5) is None  # bob acked; the receipt waits
        second = alice.send("bob", "two")
        receipt = await alice.next(5.0)
        assert isinstance(receipt, m.Deliver) and receipt.kind == "receipt"
        assert receipt.id == first
        stored = await alice.next(5.0)
        assert isinstance(stored, m.Stored) and stored.id == second

    async def alone(alice: _RawSession, first: bytes) -> None:
        # Nothing to ride with: it leaves after the delay, within twice the delay.
        received = time.monotonic()
        receipt = await alice.next(5.0)
        waited = time.monotonic() - received
        assert isinstance(receipt, m.Deliver) and receipt.id == first
        assert 0.2 < waited < 1.5, waited  # (past the grace, 2 s, alice is dropped)

    run(first_message_received(30.0, company))
    run(first_message_received(0.3, alone))


def test_bad_frames_close_only_that_connection(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            bob = await new_client(hub.address, "bob")
            alice = await new_client(hub.address, "alice")
            attacks = [
                (2**31).to_bytes(4, "big"),  # 2 GiB announced: refused from the prefix alone
                os.urandom(4096),  # garbage
                encode_frame(b"\xc1" * 10),  # a frame that is not MessagePack
                m.encode(m.Hello(1))
                + m.encode(m.Send(id=b"x" * 16, to="bob", body="before login")),
                m.encode(m.Hello(1)) + encode_frame(b"\x81\xa4type\xa7welcome"),  # forged type
            ]
            for payload in attacks:
                reader, writer = await asyncio.open_connection(*hub.address)
                writer.write(payload)
                await writer.drain()
                data = await asyncio.wait_for(reader.read(), 10)  # the hub closes on us
                assert data  # its Hello and an Error, then EOF
                writer.close()
                msg_id = await alice.send("bob", "still fine")
                got = await wait_for_event(bob, MessageReceived)
                assert (got.id, got.body) == (msg_id, "still fine")
            assert len(hub.hub.connections) == 2
            await alice.close()
            await bob.close()

    run(scenario())


def test_connection_that_never_logs_in_is_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path, auth_timeout=0.5)) as hub:
            reader, writer = await asyncio.open_connection(*hub.address)
            started = asyncio.get_running_loop().time()
            data = await asyncio.wait_for(reader.read(), 10)
            took = asyncio.get_running_loop().time() - started
            assert b"auth-timeout" in data
            assert 0.4 < took < 3
            writer.close()

    run(scenario())


def test_a_client_that_stops_reading_is_cut_off_and_loses_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = hub_test_config(tmp_path, send_buffer=256 * 1024, send_burst=5000, send_rate=5000)
        async with running_hub(config) as hub:
            bob = await new_client(hub.address, "bob")
            await bob.close()
            alice = await new_client(hub.address, "alice")
            stuck = await _raw_login(hub.address, "bob")  # logs in, never reads again
            try:
                stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                body = "x" * 8000
                # 16 MB for bob: more than the kernel's socket buffers on both sides hold.
                ids = [await alice.send("bob", body) for _ in range(2000)]
                await alice.wait_state(ids[-1], "stored", 20)

                def bob_connected() -> bool:
                    return any(c.live and c.live.user == "bob" for c in hub.hub.connections)

                for _ in range(100):  # the cut happens as the last pushes are flushed
                    if not bob_connected():
                        break
                    await asyncio.sleep(0.02)
                assert not bob_connected(), "the hub kept a connection that does not read"
                refused = hub.hub.metrics.refused.labels("slow-consumer")
                assert refused._value.get() >= 1  # type: ignore[attr-defined]
            finally:
                stuck.close()
            bob = await new_client(hub.address, "bob", register_first=False)
            log = EventLog(bob)
            await log.wait(lambda lg: len(lg.of(MessageReceived)) == 2000, 30)
            assert [e.id for e in log.of(MessageReceived)] == ids
            await log.stop()
            await alice.close()
            await bob.close()

    run(scenario())


def test_presence_is_pushed_to_contacts(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            bob = await new_client(hub.address, "bob")
            await bob.close()
            alice = await new_client(hub.address, "alice")
            await alice.add_contact("bob")
            first = await wait_for_event(alice, PresenceChanged)
            assert first == PresenceChanged("bob", False)
            bob = await new_client(hub.address, "bob", register_first=False)
            assert await wait_for_event(alice, PresenceChanged) == PresenceChanged("bob", True)
            contacts = await alice.contacts()
            assert [(c.user, c.online) for c in contacts] == [("bob", True)]
            await bob.close()
            assert await wait_for_event(alice, PresenceChanged) == PresenceChanged("bob", False)
            with pytest.raises(RemoteError, match="no user"):
                await alice.add_contact("ghost")
            await alice.remove_contact("bob")
            assert await alice.contacts() == []
            await alice.close()

    run(scenario())


def test_client_reconnects_after_hub_restart_and_resends(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = hub_test_config(tmp_path)
        async with running_hub(config) as hub:
            address = hub.address
            bob = await new_client(address, "bob")
            alice = await new_client(address, "alice")
        # The hub is down: alice's message waits in her outbox.
        log = EventLog(alice)
        await log.wait(
            lambda lg: any(
                isinstance(e, ConnectionStateChanged) and e.state == "reconnecting"
                for e in lg.events
            )
        )
        msg_id = await alice.send("bob", "while the hub was down")
        assert alice.state_of(msg_id) == ("queued", None)
        async with running_hub(hub_test_config(tmp_path, port=address[1])):
            got = await wait_for_event(bob, MessageReceived, timeout=20)
            assert got.id == msg_id
            assert await alice.wait_state(msg_id, "delivered", 10) == "delivered"
        await log.stop()
        await alice.close()
        await bob.close()

    run(scenario())


def test_outbox_survives_a_client_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        data = tmp_path / "alice-data"
        config = hub_test_config(tmp_path / "hub")
        async with running_hub(config) as hub:
            address = hub.address
            bob = await new_client(address, "bob")
            first = await new_client(address, "alice", data_dir=data)
            await first.close()
        offline = Client(address, "alice", password="correct horse", data_dir=data, backoff=(5, 5))
        await offline.start()
        msg_id = await offline.send("bob", "written offline")
        await offline.close()  # the client process ends; the message is on disk
        async with running_hub(hub_test_config(tmp_path / "hub", port=address[1])):
            restarted = await new_client(address, "alice", register_first=False, data_dir=data)
            got = await wait_for_event(bob, MessageReceived, timeout=20)
            assert (got.id, got.body) == (msg_id, "written offline")
            await restarted.close()
        await bob.close()

    run(scenario())


def test_admin_endpoints(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path, admin="127.0.0.1:0")) as hub:
            bob = await new_client(hub.address, "bob")
            host, port = hub.info.admin.split(":")

            async def get(path: str) -> tuple[str, str]:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                data = (await reader.read()).decode()
                writer.close()
                head, _, body = data.partition("\r\n\r\n")
                return head.splitlines()[0], body

            assert await get("/healthz") == ("HTTP/1.0 200 OK", "ok\n")
            status, body = await get("/metrics")
            assert status == "HTTP/1.0 200 OK"
            assert "duplex_sessions_online 1.0" in body
            assert "duplex_connections 1.0" in body
            assert (await get("/nope"))[0].startswith("HTTP/1.0 404")
            await bob.close()

    run(scenario())


def test_a_sender_flood_is_paused_not_buffered(tmp_path: Path) -> None:
    from duplex.hub.connection import STORE_BACKLOG

    async def scenario() -> None:
        config = hub_test_config(tmp_path, send_burst=10_000, send_rate=10_000)
        async with running_hub(config) as hub:
            for user in ("alice", "bob"):
                await (await new_client(hub.address, user)).close()
            flood = await _raw_login(hub.address, "bob")  # to alice, who is offline
            try:
                body = "y" * 60_000
                frames = b"".join(
                    m.encode(m.Send(id=os.urandom(16), to="alice", body=body)) for _ in range(600)
                )  # 36 MB, written as fast as the socket takes it
                loop = asyncio.get_running_loop()
                flood.setblocking(True)  # the dup of an asyncio socket is non-blocking
                writer = loop.run_in_executor(None, flood.sendall, frames)
                peak = 0
                while not writer.done():
                    peak = max([peak, *(c.storing for c in hub.hub.connections)])
                    await asyncio.sleep(0.001)
                await writer
                # The hub paused reading instead of queueing the flood for the store:
                # what waited for the store stayed near STORE_BACKLOG (4 MiB), far below
                # the 36 MB sent.
                assert STORE_BACKLOG == 4 * 1024 * 1024
                assert peak <= 6 * 1024 * 1024, peak
                for _ in range(500):
                    if (await hub.hub.store.stats()).messages == 600:
                        break
                    await asyncio.sleep(0.02)
                assert (await hub.hub.store.stats()).messages == 600  # and lost nothing
            finally:
                flood.close()

    run(scenario())


def test_a_failed_ack_write_is_retried_by_the_next_ack(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The hub stages acks in the store at once; one that fails loses nothing.

    (Staging an ack can fail on its own when the store must read a mailbox it does
    not hold in memory and the read fails.)"""

    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            bob = await new_client(hub.address, "bob")
            alice = await new_client(hub.address, "alice")
            core = hub.hub
            real = core._stage_ack
            assert real is not None  # SQLite and the in-process broker: the fast path
            failed: list[int] = []
            tried = asyncio.Event()

            def failing_once(user: str, device: str, upto: int, ts: int) -> list[Entry] | None:
                if failed:
                    return real(user, device, upto, ts)
                failed.append(upto)
                tried.set()
                raise StoreError("disk on fire")

            core._stage_ack = failing_once
            try:
                first = await alice.send("bob", "one")
                await wait_for_event(bob, MessageReceived, lambda e: e.id == first)
                await asyncio.wait_for(tried.wait(), 10)
                assert alice.state_of(first)[0] == "stored"  # its receipt was not written
                second = await alice.send("bob", "two")
                for msg_id in (first, second):
                    await wait_for_event(
                        alice,
                        MessageStateChanged,
                        lambda e, i=msg_id: e.id == i and e.state == "delivered",  # type: ignore[misc]
                    )
                assert len(core.connections) == 2  # nobody was disconnected for it
            finally:
                await alice.close()
                await bob.close()

    with caplog.at_level("ERROR", logger="duplex.hub"):
        run(scenario())
    assert "writing an ack of bob failed: disk on fire" in caplog.text


def test_receipts_are_acked_later_and_messages_at_once(tmp_path: Path) -> None:
    """A message is acked as soon as it is in the local history (its sender waits for
    "delivered"); a receipt only moves the cursor, so it is acked within
    RECEIPT_ACK_DELAY, cumulatively, or at once when the client closes."""
    from duplex.client.core import RECEIPT_ACK_DELAY

    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            bob = await new_client(hub.address, "bob")
            alice = await new_client(hub.address, "alice")

            def session(user: str) -> LiveSession:
                (live,) = hub.hub.by_user[user].values()
                return live

            try:
                msg_id = await alice.send("bob", "hi")
                await wait_for_event(
                    alice, MessageStateChanged, lambda e: e.id == msg_id and e.state == "delivered"
                )
                assert session("bob").acked == 1
                # alice holds her receipt (seq 1 of her mailbox) but has not acked it yet
                # (an ack sent at once would have reached the hub by now).
                await asyncio.sleep(RECEIPT_ACK_DELAY / 4)
                assert session("alice").cursor == 1
                assert session("alice").acked == 0
                for _ in range(100):
                    if session("alice").acked == 1:
                        break
                    await asyncio.sleep(RECEIPT_ACK_DELAY / 10)
                assert session("alice").acked == 1
                # A receipt still unacked when the client closes is acked on the way out.
                second = await alice.send("bob", "bye")
                await wait_for_event(
                    alice, MessageStateChanged, lambda e: e.id == second and e.state == "delivered"
                )
                live = session("alice")
                assert live.acked == 1
                await alice.close()
                for _ in range(100):
                    if live.acked == 2:
                        break
                    await asyncio.sleep(0.01)
                assert live.acked == 2
            finally:
                await alice.close()
                await bob.close()

    run(scenario())


# -- one client, several hub stores ------------------------------------------------------


async def _inbox(address: tuple[str, int], data: Path, expect: int) -> list[str]:
    """Logs bob in at ``address`` with the device in ``data``; the bodies he receives."""
    bob = await new_client(address, "bob", register_first=False, data_dir=data)
    log = EventLog(bob)
    try:
        await log.wait(lambda lg: len(lg.of(MessageReceived)) >= expect)
        return [e.body for e in log.of(MessageReceived)]
    finally:
        await log.stop()
        await bob.close()


async def _send(address: tuple[str, int], *texts: str) -> None:
    """alice sends ``texts`` to bob through the hub at ``address``, each stored."""
    alice = await new_client(address, "alice", register_first=False)
    try:
        ids = [await alice.send("bob", text) for text in texts]
        for msg_id in ids:
            assert await alice.wait_state(msg_id, "stored", 10) == "stored"
    finally:
        await alice.close()


def test_a_device_that_moves_between_hubs_misses_nothing(tmp_path: Path) -> None:
    # Sequence numbers count within one store. Before the store had a name in Login and
    # Welcome, bob's cursor from hub A (3) made hub B (2 entries) skip both of his, and
    # a hub whose data dir was replaced skipped a device's first entries likewise.
    async def scenario() -> None:
        data = tmp_path / "bob-device"
        async with (
            running_hub(hub_test_config(tmp_path / "a")) as a,
            running_hub(hub_test_config(tmp_path / "b")) as b,
        ):
            assert a.hub.store.store_id != b.hub.store.store_id
            for address in (a.address, b.address):
                for user in ("alice", "bob"):
                    await register(address, user, PASSWORD)
            await _send(a.address, "a1", "a2", "a3")
            assert await _inbox(a.address, data, 3) == ["a1", "a2", "a3"]
            alice = await new_client(b.address, "alice", register_first=False)
            on_b = [await alice.send("bob", text) for text in ("b1", "b2")]
            for msg_id in on_b:
                assert await alice.wait_state(msg_id, "stored", 10) == "stored"
            assert await _inbox(b.address, data, 2) == ["b1", "b2"]
            for msg_id in on_b:  # acked by bob's device: the sender hears it
                assert await alice.wait_state(msg_id, "delivered", 10) == "delivered"
            await alice.close()
            # Back on A: its cursor was kept, so only what is new there arrives.
            await _send(a.address, "a4")
            assert await _inbox(a.address, data, 1) == ["a4"]
            port = a.address[1]
        # A's data dir replaced: a new store behind the same address.
        async with running_hub(hub_test_config(tmp_path / "a-new", port=port)) as a2:
            for user in ("alice", "bob"):
                await register(a2.address, user, PASSWORD)
            await _send(a2.address, "n1")
            assert await _inbox(a2.address, data, 1) == ["n1"]

    run(scenario())


def test_a_message_written_for_one_hub_never_goes_out_through_another(tmp_path: Path) -> None:
    # A user name names a person within one hub only: bob on B need not be bob on A.
    async def scenario() -> None:
        data = tmp_path / "alice-device"
        with socket.socket() as probe:  # an address where no hub ever answered
            probe.bind(("127.0.0.1", 0))
            nowhere = probe.getsockname()
        config_a = hub_test_config(tmp_path / "a")
        async with (
            running_hub(config_a) as a,
            running_hub(hub_test_config(tmp_path / "b")) as b,
        ):
            for address in (a.address, b.address):
                for user in ("alice", "bob"):
                    await register(address, user, PASSWORD)
            first = await new_client(a.address, "alice", register_first=False, data_dir=data)
            await first.close()  # alice's device knows A's store now
            bob_b = await new_client(b.address, "bob", register_first=False)
            log_b = EventLog(bob_b)
            port_a = a.address[1]
        # A is down (and B with it: B's port is new when it comes back).
        for address, text in ((("127.0.0.1", port_a), "for A"), (nowhere, "for nowhere")):
            offline = Client(address, "alice", password=PASSWORD, data_dir=data, backoff=(5, 5))
            await offline.start()
            msg_id = await offline.send("bob", text)
            assert offline.state_of(msg_id) == ("queued", None)
            await offline.close()
        async with running_hub(hub_test_config(tmp_path / "b")) as b:
            bob_b = await new_client(b.address, "bob", register_first=False)
            log_b = EventLog(bob_b)
            alice_b = await new_client(b.address, "alice", register_first=False, data_dir=data)
            # What was queued goes out at login, before anything new: had "for A" or
            # "for nowhere" gone to B, bob on B would see it before "for B".
            msg_id = await alice_b.send("bob", "for B")
            await log_b.wait(lambda lg: len(lg.of(MessageReceived)) >= 1)
            assert [e.body for e in log_b.of(MessageReceived)] == ["for B"]
            assert len(alice_b.local.queued()) == 0  # none of the two is B's
            await alice_b.close()
            await log_b.stop()
            await bob_b.close()
        async with running_hub(hub_test_config(tmp_path / "a", port=port_a)) as a:
            alice_a = await new_client(a.address, "alice", register_first=False, data_dir=data)
            assert await _inbox(a.address, tmp_path / "bob-device", 1) == ["for A"]
            await alice_a.close()

    run(scenario())


def test_an_outbox_message_the_wire_cannot_carry_fails_instead_of_blocking(
    tmp_path: Path,
) -> None:
    # Written before Client.send refused it (or by another program): at each login it
    # was resent, the hub closed the connection over it, and nothing after it went out.
    async def scenario() -> None:
        data = tmp_path / "alice-device"
        async with running_hub(hub_test_config(tmp_path / "hub")) as hub:
            bob = await new_client(hub.address, "bob")
            first = await new_client(hub.address, "alice", data_dir=data)
            await first.close()
            local = LocalStore(data / "local.db")
            local.bind(f"{hub.address[0]}:{hub.address[1]}")
            poison = new_message_id()
            local.add_outgoing("bob", "z" * (m.MAX_TEXT + 1), poison, 1)
            local.add_outgoing("bob", "after it", new_message_id(), 2)
            local.close()
            alice = await new_client(hub.address, "alice", register_first=False, data_dir=data)
            got = await wait_for_event(bob, MessageReceived)
            assert got.body == "after it"
            state, _ = alice.state_of(poison) or ("?", None)
            assert state == "failed"
            reason = alice.local.line_of(poison, outgoing=True)
            assert reason is not None and "at most 65,536 characters" in reason.reason
            with pytest.raises(Unsendable, match="this one has 65,537"):
                await alice.send("bob", "z" * (m.MAX_TEXT + 1))
            await alice.close()
            await bob.close()

    run(scenario())


def test_a_one_shot_client_beside_a_running_one_of_its_device_hides_nothing(
    tmp_path: Path,
) -> None:
    # Both sessions of the device get the push. When the one-shot command's client
    # stores it first, the running one found it "already held" and never showed it.
    async def scenario() -> None:
        data = tmp_path / "bob-device"
        async with running_hub(hub_test_config(tmp_path / "hub")) as hub:
            alice = await new_client(hub.address, "alice")
            running = await new_client(hub.address, "bob", data_dir=data)
            log = EventLog(running)
            one_shot = await new_client(
                hub.address, "bob", register_first=False, data_dir=data, transient=True
            )
            assert running.state == "online"  # (the one-shot login did not replace it)
            link = running._link
            assert link is not None and link.transport is not None
            link.transport.pause_reading()  # the one-shot client gets it first
            await alice.send("bob", "hello")
            got = await wait_for_event(one_shot, MessageReceived)
            assert got.body == "hello"
            link.transport.resume_reading()
            await log.wait(lambda lg: len(lg.of(MessageReceived)) == 1)
            assert [e.body for e in log.of(MessageReceived)] == ["hello"]
            await alice.send("bob", "again")  # and nothing twice
            await log.wait(lambda lg: len(lg.of(MessageReceived)) == 2)
            assert [e.body for e in log.of(MessageReceived)] == ["hello", "again"]
            await log.stop()
            for client in (one_shot, running, alice):
                await client.close()

    run(scenario())
