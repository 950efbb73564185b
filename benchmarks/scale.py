#!/usr/bin/env python3
"""Cluster scale on one machine: idle sessions held, memory per session, message p99,
and relay throughput with 2 hub nodes against 1 (issue #8).

Phase 1, sessions: ``duplex serve --nodes N`` on ONE port (PostgreSQL + Redis), and
client processes that log in and keep heartbeating up to each step of ``--steps``
(default 10,000 ... 100,000). A client process holds at most :data:`PER_PROCESS`
connections (the machine allows 20,000 open files per process) and binds its own
source address, 127.0.0.2, 127.0.0.3, ... (each source address has about 28,000
ephemeral ports towards one destination). At each step it reports:

* hub user-space memory per idle session: the growth of the nodes' RSS since they
  started, summed over the node processes, divided by the sessions (the kernel's
  socket memory is not in RSS);
* message latency, p50/p99/max: ``--probe-pairs`` pairs of extra sessions exchange
  messages at ``--probe-rate`` per second in all, while every session heartbeats;
  from the sender's Send to the recipient's Deliver, across nodes most of the time.

Phase 2, relay throughput: a fresh ``duplex serve --nodes 1``, then ``--nodes 2``, on
the same backends; ``--pairs`` sender/recipient pairs, each sender keeping ``--window``
messages in flight (a new one when the recipient gets one), for ``--duration`` s
after a warm-up. Messages are stored durably (PostgreSQL commits before Stored) and
pushed through Redis when the two ends of a pair sit on different nodes.

The clients are light: a raw asyncio protocol around the sans-I/O
:class:`~duplex.protocol.hub.HubClientSession` (Hello, Login, Ping, Ack), with no
local store -- the full client keeps a SQLite history, which would cost more than the
hub itself at this scale. Accounts are created straight in PostgreSQL (COPY, one
cheap argon2id hash for all) after the store's own migrations made the tables.

Each run uses a PostgreSQL schema and a Redis key prefix of its own and removes both
at the end; nothing else on the shared servers is touched.

Examples::

    python benchmarks/scale.py                                  # the full run (minutes)
    python benchmarks/scale.py --steps 2000,5000 --nodes 2 --duration 5   # a quick look
    python benchmarks/scale.py --skip-sessions                  # only 1 vs 2 node relay
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import psutil
from hdrh.histogram import HdrHistogram

from duplex.bench.machine import process_cpu_seconds
from duplex.protocol.events import Closed, Received
from duplex.protocol.hub import HubClientSession, SessionConfig
from duplex.wire import messages as m

__all__ = ["PER_PROCESS", "main"]

PG = os.environ.get("DUPLEX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("DUPLEX_TEST_REDIS", "redis://127.0.0.1:6379/0")
PASSWORD = "scale-password"

PER_PROCESS = 17_000
"""Connections per client process at most (20,000 open files, some to spare)."""

LOGINS_IN_FLIGHT = 200
"""Logins a client process has outstanding at once (keeps the accept queues short)."""


# -- the light client ---------------------------------------------------------------


class Light(asyncio.Protocol):
    """One logged-in, heartbeating session: a HubClientSession and a timer."""

    __slots__ = (
        "closing", "loop", "on_deliver", "on_state", "session", "timer", "timer_at",
        "transport", "user",
    )  # fmt: skip

    def __init__(
        self, user: str, config: SessionConfig, on_state: Callable[[Light, str], None],
        on_deliver: Callable[[Light, m.Deliver], None] | None = None,
    ) -> None:  # fmt: skip
        self.loop = asyncio.get_running_loop()
        self.closing = False  # we closed it: its end is not news
        self.user = user
        self.on_state = on_state
        self.on_deliver = on_deliver
        self.session = HubClientSession(config, self.loop.time())
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.session.send(m.Login(rid=1, user=self.user, device="d", password=PASSWORD))
        self._flush()
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.session.receive_data(data, self.loop.time())
        self._after()
        deadline = self.session.get_timer()
        if deadline is not None and deadline < self.timer_at:
            self._arm()  # e.g. Welcome: pings start (activity only moves it later)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.session.closed:
            self.session.receive_eof()
            if not self.closing:
                self.on_state(self, "lost")

    def send(self, message: m.Message) -> None:
        if not self.session.closed:
            self.session.send(message)
            self._flush()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _flush(self) -> None:
        for chunk in self.session.data_to_send():
            if chunk and self.transport is not None:
                self.transport.write(chunk)
            elif self.transport is not None:
                self.transport.close()

    def _after(self) -> None:
        ack = 0
        for event in self.session.events_received():
            if isinstance(event, Received):
                msg = event.message
                if type(msg) is m.Deliver:
                    ack = max(ack, msg.seq)
                    if self.on_deliver is not None:
                        self.on_deliver(self, msg)
                elif type(msg) is m.Welcome:
                    self.on_state(self, "ready")
                elif type(msg) is m.Error:
                    self.on_state(self, f"error {msg.code}: {msg.message}")
            elif isinstance(event, Closed):
                self.on_state(self, f"closed {event.code}")
        if ack:
            self.session.send(m.Ack(upto=ack))
        self._flush()

    def _arm(self) -> None:
        deadline = self.session.get_timer()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if deadline is not None:
            self.timer_at = deadline
            self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.session.handle_timer(self.loop.time())
        self._after()
        self._arm()


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- phase 1: the holders -------------------------------------------------------------


def holder_main(control: Connection, port: int, source: str, users: list[str],
                heartbeat: float, grace: float) -> None:  # fmt: skip
    """A client process: grows to the asked number of sessions, and keeps them."""
    _raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.set_event_loop(_loop())
    asyncio.get_event_loop().run_until_complete(
        _hold(control, port, source, users, heartbeat, grace)
    )


async def _hold(control: Connection, port: int, source: str, users: list[str],
                heartbeat: float, grace: float) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    config = SessionConfig(heartbeat=heartbeat, grace=grace, auth_timeout=120)
    ready: set[Light] = set()
    problems: list[str] = []
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(control.fileno(), lambda: commands.put_nowait(control.recv()))
    slots = asyncio.Semaphore(LOGINS_IN_FLIGHT)
    lights: list[Light] = []

    changed = asyncio.Event()

    def on_state(light: Light, state: str) -> None:
        changed.set()
        if state == "ready":
            ready.add(light)
            slots.release()
            return
        if light not in ready:
            slots.release()
        ready.discard(light)
        if len(problems) < 20:
            problems.append(f"{light.user}: {state}")

    def factory(user: str) -> Light:
        light = Light(user, config, on_state)
        lights.append(light)
        return light

    async def open_one(user: str) -> None:
        try:
            await loop.create_connection(
                lambda: factory(user), "127.0.0.1", port, local_addr=(source, 0)
            )
        except OSError as exc:
            slots.release()
            problems.append(f"{user}: {exc}")

    opened = 0
    while True:
        command = await commands.get()
        if command[0] == "stop":
            for light in lights:
                light.close()
            await asyncio.sleep(0.5)
            control.send(("stopped", len(ready)))
            return
        target = min(int(command[1]), len(users))
        tasks = []
        while opened < target:
            await slots.acquire()
            tasks.append(loop.create_task(open_one(users[opened])))
            opened += 1
        await asyncio.gather(*tasks)
        end = loop.time() + 120
        while len(ready) < target and loop.time() < end and not problems:
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), end - loop.time())
        control.send(("ready", len(ready), problems[:5]))


# -- phase 1: probes -----------------------------------------------------------------


async def probe(port: int, pairs: int, rate: float, seconds: float, heartbeat: float,
                grace: float, source: str) -> HdrHistogram:  # fmt: skip
    """Latency of messages between ``pairs`` extra sessions while the others idle."""
    loop = asyncio.get_running_loop()
    config = SessionConfig(heartbeat=heartbeat, grace=grace, auth_timeout=60)
    histogram = HdrHistogram(1, 60_000_000, 3)  # microseconds
    sent_at: dict[bytes, float] = {}
    ready = asyncio.Event()
    count = 0

    def on_state(light: Light, state: str) -> None:
        nonlocal count
        if state == "ready":
            count += 1
            if count == 2 * pairs:
                ready.set()
        else:
            print(f"  probe {light.user}: {state}", file=sys.stderr)

    def on_deliver(light: Light, msg: m.Deliver) -> None:
        start = sent_at.pop(msg.id, None)
        if start is not None and msg.kind == "msg":
            histogram.record_value(max(1, int((time.perf_counter() - start) * 1e6)))

    lights: list[Light] = []
    for i in range(pairs):
        for user in (f"ps{i}", f"pr{i}"):
            _, light = await loop.create_connection(
                lambda u=user: Light(u, config, on_state, on_deliver),  # type: ignore[misc]
                "127.0.0.1", port, local_addr=(source, 0),
            )  # fmt: skip
            lights.append(light)
    await asyncio.wait_for(ready.wait(), 60)
    interval = pairs / rate
    end = loop.time() + seconds

    async def sender(i: int) -> None:
        light = lights[2 * i]
        await asyncio.sleep(interval * i / pairs)
        while loop.time() < end:
            msg_id = os.urandom(16)
            sent_at[msg_id] = time.perf_counter()
            light.send(m.Send(id=msg_id, to=f"pr{i}", body="probe"))
            await asyncio.sleep(interval)

    await asyncio.gather(*(sender(i) for i in range(pairs)))
    await asyncio.sleep(2.0)
    for light in lights:
        light.close()
    await asyncio.sleep(0.2)
    return histogram


# -- phase 2: relay throughput ---------------------------------------------------------


def load_main(control: Connection, port: int, source: str, first: int, pairs: int,
              window: int, warmup: float, duration: float) -> None:  # fmt: skip
    """A load process: ``pairs`` closed-loop pairs; reports delivered count and latency."""
    _raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.set_event_loop(_loop())
    result = asyncio.get_event_loop().run_until_complete(
        _load(port, source, first, pairs, window, warmup, duration)
    )
    control.send(result)


async def _load(port: int, source: str, first: int, pairs: int, window: int,
                warmup: float, duration: float) -> tuple[int, bytes, list[str]]:  # fmt: skip
    loop = asyncio.get_running_loop()
    config = SessionConfig(heartbeat=5, grace=30, auth_timeout=60)
    histogram = HdrHistogram(1, 60_000_000, 3)
    problems: list[str] = []
    ready = asyncio.Event()
    count = 0
    measuring = closing = False
    delivered = 0
    sent_at: dict[bytes, float] = {}
    senders: dict[str, Light] = {}

    def on_state(light: Light, state: str) -> None:
        nonlocal count
        if state == "ready":
            count += 1
            if count == 2 * pairs:
                ready.set()
        elif len(problems) < 5 and not closing:
            problems.append(f"{light.user}: {state}")

    def send_one(sender: Light, to: str) -> None:
        msg_id = os.urandom(16)
        sent_at[msg_id] = time.perf_counter()
        sender.send(m.Send(id=msg_id, to=to, body="x" * 64))

    def on_deliver(light: Light, msg: m.Deliver) -> None:
        nonlocal delivered
        if msg.kind != "msg":
            return
        start = sent_at.pop(msg.id, None)
        if start is None:
            return
        if measuring:
            delivered += 1
            histogram.record_value(max(1, int((time.perf_counter() - start) * 1e6)))
        send_one(senders[light.user], light.user)

    for i in range(first, first + pairs):
        for user, deliver in ((f"ls{i}", None), (f"lr{i}", on_deliver)):
            _, light = await loop.create_connection(
                lambda u=user, d=deliver: Light(u, config, on_state, d),  # type: ignore[misc]
                "127.0.0.1", port, local_addr=(source, 0),
            )  # fmt: skip
            if deliver is None:
                senders[f"lr{i}"] = light
    await asyncio.wait_for(ready.wait(), 60)
    for to, sender in senders.items():
        for _ in range(window):
            send_one(sender, to)
    await asyncio.sleep(warmup)
    measuring = True
    await asyncio.sleep(duration)
    measuring = False
    closing = True
    for light in senders.values():
        light.close()
    await asyncio.sleep(0.2)
    return delivered, histogram.encode(), problems


# -- the run ---------------------------------------------------------------------------


class Hub:
    """``duplex serve`` as a subprocess; its ready line names the node processes."""

    def __init__(self, nodes: int, port: int, store: str, broker: str, heartbeat: float,
                 grace: float) -> None:  # fmt: skip
        env = dict(os.environ)
        # Every login of the run comes from a few addresses: lift the per-address
        # login throttle (it exists against password guessing, which this is not).
        env.update(DUPLEX_HUB_IP_LOGIN_RATE="1000000", DUPLEX_HUB_IP_LOGIN_BURST="1000000",
                   DUPLEX_HUB_MAX_CONNECTIONS="1000000")  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "duplex", "serve", "--json", "--port", str(port),
             "--nodes", str(nodes), "--store", store, "--broker", broker,
             "--heartbeat", str(heartbeat), "--grace", str(grace), "--data-dir", "/tmp",
             "--log-level", "warning"],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the hub did not start (exit {self.proc.wait()})")
        self.info = json.loads(line)
        workers = self.info.get("workers") or [{"pid": self.info["pid"]}]
        self.pids = [int(w["pid"]) for w in workers]

    def rss(self) -> int:
        """Sum of the node processes' resident memory, bytes."""
        return sum(psutil.Process(pid).memory_info().rss for pid in self.pids)

    def cpu(self) -> float:
        """Sum of the node processes' CPU seconds."""
        return sum(process_cpu_seconds(pid) for pid in self.pids)

    def stop(self) -> None:
        """SIGTERM, and wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def service_cpu() -> dict[str, dict[int, float]]:
    """CPU seconds of every PostgreSQL and Redis server process, by pid."""
    found: dict[str, dict[int, float]] = {"postgres": {}, "redis-server": {}}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        name = proc.info["name"] or ""
        times = proc.info["cpu_times"]
        if name in found and times is not None:
            found[name][proc.pid] = times.user + times.system
    return found


def service_cores(before: dict[str, dict[int, float]], seconds: float) -> dict[str, float]:
    """Cores used by PostgreSQL and Redis since ``before``."""
    after = service_cpu()
    return {
        name: round(sum(t - before[name].get(pid, 0.0) for pid, t in pids.items()) / seconds, 2)
        for name, pids in after.items()
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def create_accounts(store_url: str, schema: str, names: list[str]) -> None:
    """Migrates a fresh schema through the store, then COPYs the accounts in."""
    import asyncpg

    from duplex.hub.accounts import PasswordHasher
    from duplex.store import open_store

    store = open_store(store_url)
    await store.open()
    await store.close()
    digest = PasswordHasher(time_cost=1, memory_kib=64).hash(PASSWORD)
    conn = await asyncpg.connect(PG)
    try:
        now = int(time.time() * 1000)
        await conn.copy_records_to_table(
            "users", records=[(n, digest, now) for n in names], schema_name=schema
        )
    finally:
        await conn.close()


async def drop_backends(schema: str, prefix: str) -> None:
    """Removes the run's schema and Redis keys."""
    import asyncpg
    import redis.asyncio as aredis

    conn = await asyncpg.connect(PG)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()
    client = aredis.Redis.from_url(REDIS)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()


def fmt_us(histogram: HdrHistogram, q: float) -> str:
    return f"{histogram.get_value_at_percentile(q) / 1000:.1f}"


def run_sessions(args: argparse.Namespace, store: str, broker: str) -> list[dict[str, Any]]:
    """Phase 1: grow to each step, measure memory and latency there."""
    steps = [int(s) for s in args.steps.split(",")]
    top = steps[-1]
    processes = max(args.processes, -(-top // PER_PROCESS))
    port = free_port()
    hub = Hub(args.nodes, port, store, broker, args.heartbeat, args.grace)
    rows: list[dict[str, Any]] = []
    ctx = multiprocessing.get_context("fork")
    holders: list[tuple[Any, Connection]] = []
    try:
        time.sleep(2.0)  # let the nodes settle (pools, imports) before the baseline
        base_rss = hub.rss()
        print(f"hub: {args.nodes} nodes on port {port}, pids {hub.pids}; baseline RSS "
              f"{base_rss / 2**20:.0f} MiB; {processes} client processes")  # fmt: skip
        share = -(-top // processes)
        for i in range(processes):
            users = [f"u{j}" for j in range(i * share, min(top, (i + 1) * share))]
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=holder_main,
                args=(theirs, port, f"127.0.0.{2 + i}", users, args.heartbeat, args.grace),
                daemon=True,
            )
            proc.start()
            holders.append((proc, mine))
        for step in steps:
            started = time.monotonic()
            for i, (_, pipe) in enumerate(holders):
                pipe.send(("grow", max(0, min(share, step - i * share))))
            held = 0
            for _, pipe in holders:
                reply = pipe.recv()
                held += reply[1]
                if reply[2]:
                    print(f"  client problems: {reply[2]}", file=sys.stderr)
            login_s = time.monotonic() - started
            # Idle for two heartbeats, so every session has pinged and been refreshed.
            time.sleep(max(2 * args.heartbeat, 3.0))
            rss = hub.rss()
            cpu0 = hub.cpu()
            try:
                histogram = asyncio.run(
                    probe(port, args.probe_pairs, args.probe_rate, args.probe_seconds,
                          args.heartbeat, args.grace, f"127.0.0.{2 + processes}")
                )  # fmt: skip
            except TimeoutError:
                print("  the probe's sessions did not all log in within 60 s", file=sys.stderr)
                histogram = HdrHistogram(1, 60_000_000, 3)
            cpu = (hub.cpu() - cpu0) / (args.probe_seconds + 2.2)
            row = {
                "sessions": held,
                "login_s": round(login_s, 1),
                "rss_mib": round(rss / 2**20, 1),
                "bytes_per_session": round((rss - base_rss) / max(1, held)),
                "p50_ms": float(fmt_us(histogram, 50)),
                "p99_ms": float(fmt_us(histogram, 99)),
                "max_ms": round(histogram.get_max_value() / 1000, 1),
                "probe_msgs": histogram.get_total_count(),
                "hub_cpu": round(cpu, 2),
            }
            rows.append(row)
            print(f"  {held:>7,} sessions (logins {login_s:5.1f} s): hub RSS {row['rss_mib']:7.1f} "
                  f"MiB, {row['bytes_per_session'] / 1024:5.2f} KiB/session; messages p50 "
                  f"{row['p50_ms']} ms p99 {row['p99_ms']} ms max {row['max_ms']} ms "
                  f"({row['probe_msgs']} msgs); hub CPU {cpu:.2f} cores")  # fmt: skip
            sys.stdout.flush()
    finally:
        for _, pipe in holders:
            with contextlib.suppress(OSError, EOFError):
                pipe.send(("stop",))
        for proc, pipe in holders:
            with contextlib.suppress(OSError, EOFError):
                if pipe.poll(10):
                    pipe.recv()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            pipe.close()
        hub.stop()
    return rows


def run_throughput(args: argparse.Namespace, store: str, broker: str) -> dict[int, dict[str, Any]]:
    """Phase 2: relay throughput with 1 node, then 2, same load, same backends."""
    ctx = multiprocessing.get_context("fork")
    results: dict[int, dict[str, Any]] = {}
    for nodes in (1, 2):
        port = free_port()
        hub = Hub(nodes, port, store, broker, 5.0, 30.0)
        try:
            time.sleep(1.0)
            per = -(-args.pairs // args.load_processes)
            procs = []
            for i in range(args.load_processes):
                mine, theirs = ctx.Pipe()
                first = i * per
                count = max(0, min(per, args.pairs - first))
                proc = ctx.Process(
                    target=load_main,
                    args=(theirs, port, f"127.0.1.{2 + i}", first, count, args.window,
                          args.warmup, args.duration),
                    daemon=True,
                )  # fmt: skip
                proc.start()
                procs.append((proc, mine))
            cpu0, t0, services0 = hub.cpu(), time.monotonic(), service_cpu()
            histogram = HdrHistogram(1, 60_000_000, 3)
            delivered = 0
            for proc, pipe in procs:
                got, encoded, problems = pipe.recv()
                delivered += got
                histogram.add(HdrHistogram.decode(encoded))
                if problems:
                    print(f"  load problems: {problems}", file=sys.stderr)
                proc.join(10)
                pipe.close()
            elapsed = time.monotonic() - t0
            cpu = (hub.cpu() - cpu0) / elapsed
            services = service_cores(services0, elapsed)
        finally:
            hub.stop()
        rate = delivered / args.duration
        results[nodes] = {
            "msgs_per_s": round(rate),
            "p50_ms": float(fmt_us(histogram, 50)),
            "p99_ms": float(fmt_us(histogram, 99)),
            "hub_cpu": round(cpu, 2),
            "postgres_cpu": services["postgres"],
            "redis_cpu": services["redis-server"],
        }
        print(f"  {nodes} node{'s' if nodes > 1 else ' '}: {rate:9,.0f} msgs/s delivered, "
              f"p50 {fmt_us(histogram, 50)} ms p99 {fmt_us(histogram, 99)} ms; cores used: "
              f"hub {cpu:.2f}, PostgreSQL {services['postgres']:.2f}, "
              f"Redis {services['redis-server']:.2f} (of {os.cpu_count()})")  # fmt: skip
        sys.stdout.flush()
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Hub cluster scale: sessions held, memory per session, p99, relay 1 vs 2.",
        epilog="example: %(prog)s --steps 10000,25000,50000,100000 --nodes 6",
    )
    parser.add_argument("--steps", default="10000,25000,50000,75000,100000",
                        help="session counts to step through (default: up to 100,000)")  # fmt: skip
    parser.add_argument("--nodes", type=int, default=6,
                        help="hub nodes for the sessions phase (default: 6, each under "
                             "20,000 open files at 100,000 sessions)")  # fmt: skip
    parser.add_argument("--processes", type=int, default=1, help="client processes, at least")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds (default: 5)")
    parser.add_argument("--grace", type=float, default=15.0, help="seconds (default: 15)")
    parser.add_argument("--probe-pairs", type=int, default=50, help="latency pairs")
    parser.add_argument("--probe-rate", type=float, default=500.0, help="probe messages/s")
    parser.add_argument("--probe-seconds", type=float, default=5.0, help="probe duration")
    parser.add_argument("--pairs", type=int, default=100, help="throughput pairs (default 100)")
    parser.add_argument("--window", type=int, default=4, help="messages in flight per pair")
    parser.add_argument("--load-processes", type=int, default=2, help="throughput load processes")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--skip-sessions", action="store_true", help="only the relay phase")
    parser.add_argument("--skip-relay", action="store_true", help="only the sessions phase")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns the exit status."""
    args = _parser().parse_args(argv)
    _raise_nofile()
    tag = f"scale{os.getpid()}"
    schema, prefix = f"duplex_{tag}", f"duplex_{tag}:"
    store = f"{PG}{'&' if '?' in PG else '?'}schema={schema}"
    broker = f"{REDIS}{'&' if '?' in REDIS else '?'}prefix={prefix}"
    steps = [int(s) for s in args.steps.split(",")]
    names = [f"u{i}" for i in range(steps[-1])]
    names += [f"ps{i}" for i in range(args.probe_pairs)] + [
        f"pr{i}" for i in range(args.probe_pairs)
    ]
    names += [f"ls{i}" for i in range(args.pairs)] + [f"lr{i}" for i in range(args.pairs)]
    report: dict[str, Any] = {"args": vars(args), "cpus": os.cpu_count()}
    try:
        started = time.monotonic()
        asyncio.run(create_accounts(store, schema, names))
        print(f"{len(names):,} accounts in {time.monotonic() - started:.1f} s "
              f"(schema {schema}, Redis prefix {prefix})")  # fmt: skip
        if not args.skip_sessions:
            print(f"sessions on one port, heartbeat {args.heartbeat:g} s, grace {args.grace:g} s:")
            report["sessions"] = run_sessions(args, store, broker)
        if not args.skip_relay:
            print(f"relay throughput, {args.pairs} pairs, window {args.window}, "
                  f"{args.duration:g} s measured:")  # fmt: skip
            relay = run_throughput(args, store, broker)
            ratio = relay[2]["msgs_per_s"] / max(1, relay[1]["msgs_per_s"])
            relay_report: dict[str, Any] = {str(k): v for k, v in relay.items()}
            relay_report["ratio"] = round(ratio, 2)
            report["relay"] = relay_report
            print(f"  2 nodes / 1 node = {ratio:.2f}x")
    finally:
        asyncio.run(drop_backends(schema, prefix))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
