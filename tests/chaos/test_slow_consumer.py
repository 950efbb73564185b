"""A consumer that stops reading: the hub's memory stays bounded, the consumer is cut
off, and nothing meant for it is lost.

bob logs in with a raw socket and never reads again (a tiny receive buffer, so the
kernel cannot absorb much); alice sends him 30 MB. The hub must not queue that for
bob in memory: past its per-connection ``send_buffer`` (256 KiB here) it disconnects
him as a slow consumer, with everything still in the store. bob's real client then
logs in and is shown every message, once, in order (the checker).

Memory is measured against the same flood to a user who is offline, sent first: what
storing costs the hub (its buffers, the store's cache, memory the allocator keeps
afterwards). The flood to the stuck consumer may then cost at most 8 MB more; a hub
that queued bob's messages in memory would grow by all 30. alice keeps at most
:data:`WINDOW` messages unacknowledged, so that what the hub holds of her own flood
(which it reads as fast as she writes) stays small and the same in both floods.

``tests/hub/test_hub.py::test_a_client_that_stops_reading_is_cut_off_and_loses_nothing``
is the in-process ancestor; this one runs the hub as a process and measures its memory.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

import psutil

from duplex.client import MessageStateChanged
from duplex.testing.chaos import Checker, ClientTap, long_run, note
from duplex.testing.clients import new_client
from duplex.testing.hubs import HubProcess
from duplex.wire import messages as m

SEND_BUFFER = 256 * 1024
WINDOW = 64
"""Messages alice keeps unacknowledged at most during a flood."""


async def stuck_login(address: tuple[str, int], user: str) -> socket.socket:
    """Logs in with a raw socket, then never reads again."""
    reader, writer = await asyncio.open_connection(*address)
    sock: socket.socket = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(m.encode(m.Hello(1, "stuck")))
    writer.write(m.encode(m.Login(rid=1, user=user, device="stuck", password="correct horse")))
    while True:
        size = int.from_bytes(await reader.readexactly(4), "big")
        if isinstance(m.decode(await reader.readexactly(size)), m.Welcome):
            break
    raw = sock.dup()
    writer.transport.pause_reading()
    writer.close()
    return raw


def refusals(admin: str) -> dict[str, float]:
    """``duplex_refusals_total`` by code, from the hub's /metrics."""
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("duplex_refusals_total{"):
            labels, _, value = line.rpartition(" ")
            out[labels.split('"')[1]] = float(value)
    return out


def test_a_consumer_that_stops_reading(tmp_path: Path) -> None:
    count = 4000 if long_run() else 2000
    body = "x" * 16_000
    stuck_total = (count * len(body)) >> 20
    checker = Checker(f"consumer stops reading, {stuck_total} MB for it")

    async def scenario() -> None:
        hub = HubProcess(
            tmp_path / "hub",
            args=["--synchronous", "NORMAL", "--admin", "127.0.0.1:0"],
            env={
                "DUPLEX_HUB_SEND_BUFFER": str(SEND_BUFFER),
                "DUPLEX_HUB_SEND_RATE": "100000",
                "DUPLEX_HUB_SEND_BURST": "100000",
            },
        )
        clients = []
        stuck: socket.socket | None = None
        try:
            for user in ("bob", "carol"):
                await (await new_client(hub.address, user)).close()
            alice = await new_client(hub.address, "alice")
            clients.append(alice)
            tap = checker.tap(alice)
            proc = psutil.Process(hub.proc.pid)
            peak = 0

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, proc.memory_info().rss)
                    await asyncio.sleep(0.02)

            stored = 0
            seen = 0

            def count_stored(t: ClientTap) -> int:
                nonlocal stored, seen
                for event in t.events[seen:]:
                    if isinstance(event, MessageStateChanged) and event.state == "stored":
                        stored += 1
                seen = len(t.events)
                return stored

            async def flood(to: str, n: int) -> int:
                """Sends ``n`` messages to ``to``, at most WINDOW unacknowledged at a time
                (so that what the hub holds of the *sender's* flood stays small); returns
                the hub's peak RSS growth, in MB."""
                nonlocal peak
                peak = before = proc.memory_info().rss
                sampler = asyncio.get_running_loop().create_task(sample())
                start = count_stored(tap)
                for i in range(n):
                    await alice.send(to, body)
                    if i - (count_stored(tap) - start) >= WINDOW:
                        await tap.wait(lambda t, i=i: i - (count_stored(t) - start) < WINDOW, 60)
                await tap.wait(lambda t: count_stored(t) - start == n, 120)
                sampler.cancel()
                return (peak - before) >> 20

            # First the flood to carol, who is offline: what storing costs the hub (its
            # buffers, the store's cache, memory the allocator keeps afterwards). Then the
            # same to bob, who is logged in and reads nothing: a hub that queued it for
            # him would grow by all of it.
            offline = await flood("carol", count)
            checker.expect("carol", "carol-later")
            stuck = await stuck_login(hub.address, "bob")
            checker.fault("consumer stops reading")
            growth = await flood("bob", count)
            note(
                "consumer stops reading",
                f"hub RSS grew {offline} MB storing {stuck_total} MB for an offline user, then "
                f"{growth} MB more sending {stuck_total} MB to a consumer that stopped reading",
            )
            assert growth <= 8, f"the hub grew by {growth} MB for {stuck_total} MB"
            assert refusals(hub.info["admin"]).get("slow-consumer", 0) >= 1
            bob = await new_client(hub.address, "bob", register_first=False)
            clients.append(bob)
            checker.tap(bob)
            carol = await new_client(hub.address, "carol", register_first=False)
            clients.append(carol)
            checker.tap(carol, "carol-later")
            settled = await checker.wait_settled_async(120, expect_messages=2 * count)
            checker.check()
            assert settled
        finally:
            if stuck is not None:
                stuck.close()
            for client in clients:
                await client.close()
            hub.kill()

    asyncio.run(scenario())
