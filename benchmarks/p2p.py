"""The direct path against the relay: how fast a link comes up, and messages/s per pair.

    .venv/bin/python benchmarks/p2p.py                  # 50 link set-ups, 5 s per path
    .venv/bin/python benchmarks/p2p.py --trials 200 --duration 10 --window 64

Measured on loopback with the real client library (SQLite history in memory) and a
hub process pinned to CPU 0 (clients on the other CPU):

* set-up: from ``send()`` of the first message to a peer with no link (so the client
  asks the hub to ``Introduce``, dials, opens pinned TLS and presents the ticket) to
  that message's direct acknowledgement, p50/p99 over ``--trials`` fresh links;
* throughput: one sender and one receiver, ``--window`` messages in flight, delivered
  (end-to-end acked) messages per second, over the direct link and then through the
  hub (the hub fsyncs each group commit), in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from duplex.client import Client, MessageStateChanged, register
from duplex.client.local import LocalStore
from duplex.p2p import DirectRouter
from duplex.testing.hubs import HubProcess

PASSWORD = "bench-password"


async def client(address: tuple[str, int], user: str, direct: bool) -> Client:
    router = DirectRouter(host="127.0.0.1") if direct else None
    c = Client(address, user, password=PASSWORD, local=LocalStore(":memory:"), router=router)
    await c.start(wait_online=30)
    return c


async def setup_times(alice: Client, trials: int) -> list[float]:
    router = alice.router
    assert isinstance(router, DirectRouter)
    times = []
    for i in range(trials):
        link = router.links.pop("bob", None)
        if link is not None:
            link.close("bye", "benchmark: next trial")
        router._retry_at.pop("bob", None)  # a fresh attempt each trial
        router._failures.pop("bob", None)
        started = time.perf_counter()
        msg_id = await alice.send("bob", f"setup {i}")
        await alice.wait_state(msg_id, "delivered", 10)
        took = time.perf_counter() - started
        state = alice.state_of(msg_id)
        if state != ("delivered", "direct"):
            raise RuntimeError(f"trial {i} did not go direct: {state}")
        times.append(took)
    return times


async def throughput(alice: Client, window: int, duration: float) -> float:
    """Delivered messages per second, ``window`` in flight (closed loop)."""
    delivered = 0
    in_flight = 0
    done = asyncio.Event()
    end = time.perf_counter() + duration

    async def pump() -> None:
        nonlocal in_flight
        while time.perf_counter() < end:
            while in_flight < window:
                await alice.send("bob", "x" * 64)
                in_flight += 1
            await done.wait()
            done.clear()

    async def watch() -> None:
        nonlocal delivered, in_flight
        while time.perf_counter() < end:
            try:
                event = await alice.next_event(0.5)
            except TimeoutError:
                continue
            if isinstance(event, MessageStateChanged) and event.state == "delivered":
                delivered += 1
                in_flight -= 1
                done.set()
        done.set()  # let the pump see the end

    alice.pending_events()
    started = time.perf_counter()
    await asyncio.gather(pump(), watch())
    return delivered / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        hub = HubProcess(
            Path(tmp) / "hub",
            args=["--log-level", "warning"],
            env={"DUPLEX_HUB_SEND_RATE": "1000000", "DUPLEX_HUB_SEND_BURST": "1000000"},
        )
        try:
            if len(cpus) >= 2:
                os.sched_setaffinity(hub.proc.pid, {cpus[0]})
                os.sched_setaffinity(0, set(cpus[1:]))
            for user in ("alice", "bob"):
                await register(hub.address, user, PASSWORD)
            bob = await client(hub.address, "bob", direct=True)
            alice = await client(hub.address, "alice", direct=True)
            times = await setup_times(alice, args.trials)
            ms = sorted(t * 1000 for t in times)
            p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
            print(
                f"direct link set-up (Introduce -> first direct ack), {len(ms)} trials: "
                f"p50 {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms"
            )
            direct = await throughput(alice, args.window, args.duration)
            await alice.close()
            relayed_alice = await client(hub.address, "alice", direct=False)
            relayed = await throughput(relayed_alice, args.window, args.duration)
            print(
                f"one pair, window {args.window}: direct {direct:,.0f} msg/s, "
                f"relayed {relayed:,.0f} msg/s, direct/relayed = {direct / relayed:.2f}"
            )
            await relayed_alice.close()
            await bob.close()
        finally:
            hub.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=32)
    parsed = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(parsed))
    except ImportError:
        asyncio.run(main(parsed))
