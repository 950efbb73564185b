"""Messenger load: K sender/receiver pairs through a hub, measured end to end.

Each pair is two lean clients that speak the real protocol through the sans-I/O
:class:`~duplex.protocol.hub.HubClientSession` but keep nothing on disk (the load
generator must not measure its own SQLite): the sender keeps ``window`` messages in
flight (a new one leaves when the hub says ``Stored``, so every message is durable at
the hub before the next takes its place), the receiver acks what it receives once per
read (cumulatively, as the real client does) and records the latency from the moment
the message was sent to the moment it arrived. Receipts flow back to the sender and
are acked too, as the real client acks them (later, cumulatively: see
:data:`~duplex.client.core.RECEIPT_ACK_DELAY`), so the hub does all the work of a real
conversation.

With ``rate`` set, senders follow a fixed schedule instead (open loop) and latency is
measured from the *scheduled* send time, so a stall at the hub shows in the numbers
rather than slowing the generator down (no coordinated omission).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from duplex.bench.histogram import LatencyRecorder, summarize
from duplex.bench.reference import HUB_PAIRS, build_reference
from duplex.bench.spec import BenchError
from duplex.client.core import RECEIPT_ACK_DELAY, new_message_id
from duplex.errors import RemoteError
from duplex.protocol.events import Closed, Received
from duplex.protocol.hub import HubClientSession, SessionConfig
from duplex.wire import messages as m
from duplex.wire.frames import FrameDecoder

__all__ = [
    "RelayResult",
    "plot_chat",
    "register_users",
    "run_direct",
    "run_relay",
    "run_relay_native",
]

PASSWORD = "bench-password"


class _Lean(asyncio.Protocol):
    """One lean client connection.

    The handshake (Hello, Login, Welcome) goes through the real sans-I/O session; once
    welcomed, frames are split (:class:`FrameDecoder`) and decoded here directly, and
    the handler gets the decoded messages and returns the messages to send back. The
    state table has nothing left to check on that path, and a load generator that
    spends its CPU on bookkeeping measures itself: with the session on every frame the
    clients, not the hub, were the ceiling at 16,000 messages/s on one CPU.
    """

    def __init__(
        self, user: str, on_message: Callable[[_Lean, list[m.Message]], list[m.Message]]
    ) -> None:
        self.user = user
        self.loop = asyncio.get_running_loop()
        self.session = HubClientSession(SessionConfig(heartbeat=5, grace=60), self.loop.time())
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.welcome: asyncio.Future[m.Welcome] = self.loop.create_future()
        self.last_seq = 0
        self.ack_later: asyncio.TimerHandle | None = None
        self._ready = False
        self._frames = FrameDecoder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.flush()

    def flush(self) -> None:
        transport = self.transport
        out = self.session.data_to_send()
        if out and transport is not None and not transport.is_closing():
            transport.writelines([c for c in out if c])

    def send(self, messages: list[m.Message]) -> None:
        """Writes ``messages`` in one system call."""
        transport = self.transport
        if self._ready and transport is not None and not transport.is_closing():
            transport.write(b"".join([m.encode(msg) for msg in messages]))

    def data_received(self, data: bytes) -> None:
        if self._ready:
            messages = [m.decode(body) for body in self._frames.feed(data)]
            out = self.on_message(self, messages) if messages else None
            if out:
                self.send(out)
            return
        self.session.receive_data(data, self.loop.time())
        for event in self.session.events_received():
            if isinstance(event, Received):
                msg = event.message
                if isinstance(msg, m.Welcome):
                    self._ready = True
                    self.welcome.set_result(msg)
                elif isinstance(msg, m.Error) and not self.welcome.done():
                    self.welcome.set_exception(RemoteError(msg.code, msg.message))
            elif isinstance(event, Closed) and not self.welcome.done():
                self.welcome.set_exception(ConnectionError(event.reason))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(str(exc)))


@dataclasses.dataclass
class RelayResult:
    """What one relay run measured."""

    pairs: int
    window: int
    payload: int
    duration: float
    delivered: int
    errors: int
    rate: float | None
    latency_ms: dict[str, float]
    generator_cpu: float
    path: str = "relayed"
    histogram: str = ""
    """The latency histogram, encoded (see :func:`duplex.bench.histogram.decode_histogram`)."""
    server_cpu: float | None = None
    """The hub's CPU use over the measured seconds (1.0 = one core), when it was read."""
    stale: int = 0
    """Messages of an earlier run received at login (in flight when it stopped, or all of
    them if the devices did not say what they held): acked, not counted."""
    client: str = "python"
    """Which load generator: ``python`` (:func:`run_relay`) or ``c``
    (:func:`run_relay_native`)."""

    @property
    def per_second(self) -> float:
        """Messages delivered per second (after the warm-up)."""
        return self.delivered / self.duration if self.duration else 0.0

    @property
    def server_us(self) -> float | None:
        """The hub's CPU time per delivered message, in microseconds (a steadier figure
        than the rate on a shared machine: it does not count the time it was not run)."""
        if self.server_cpu is None or not self.per_second:
            return None
        return self.server_cpu / self.per_second * 1e6

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["per_second"] = self.per_second
        data["server_us"] = self.server_us
        return data


async def register_users(address: tuple[str, int], users: list[str], concurrency: int = 20) -> None:
    """Registers every user (an existing name is fine)."""
    from duplex.client import register

    sem = asyncio.Semaphore(concurrency)

    async def one(user: str) -> None:
        async with sem:
            with contextlib.suppress(RemoteError):
                await register(address, user, PASSWORD, timeout=60)

    await asyncio.gather(*(one(u) for u in users))


async def _login(
    address: tuple[str, int],
    user: str,
    handler: Callable[[_Lean, list[m.Message]], list[m.Message]],
    last_seq: int = 0,
) -> _Lean:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: _Lean(user, handler), *address)
    proto.last_seq = last_seq
    proto.session.send(
        m.Login(rid=1, user=user, device=f"bench-{user}", password=PASSWORD, last_seq=last_seq)
    )
    proto.flush()
    await asyncio.wait_for(proto.welcome, 60)
    return proto


async def run_relay(
    address: tuple[str, int],
    *,
    pairs: int = 100,
    window: int = 1,
    payload: int = 64,
    duration: float = 5.0,
    warmup: float = 1.0,
    rate: float | None = None,
    prefix: str = "b",
    server_cpu: Callable[[], float] | None = None,
    resume: dict[str, int] | None = None,
) -> RelayResult:
    """Drives ``pairs`` conversations through the hub at ``address`` and measures them.

    Args:
        address: the hub.
        pairs: sender/receiver pairs (users ``{prefix}s{i}`` and ``{prefix}r{i}``).
        window: messages in flight per pair (closed loop).
        payload: bytes of each message body (at least the timestamp it carries).
        duration: measured seconds, after ``warmup`` unmeasured ones.
        warmup: seconds before measuring.
        rate: total messages per second (open loop), or None for the closed loop.
        prefix: user-name prefix (users must be registered, see :func:`register_users`).
        server_cpu: reads the hub's CPU seconds so far, to report its use over the
            measured seconds beside the generator's (which side is saturated?).
        resume: the last sequence each user's device holds, as a real client keeps it:
            read at login and updated at the end. Pass the same dict to runs against
            one hub, or each run's login replays every earlier run's messages first
            (the third run of 5 s at window 32 on one hub measured 0 msg/s that way).
    """
    loop = asyncio.get_running_loop()
    recorder = LatencyRecorder()
    measuring = False
    delivered = 0
    errors = 0
    stale = 0
    stopping = False
    pad = "x" * max(0, payload - 20)
    senders: list[_Lean] = []
    started = time.perf_counter()  # bodies carry perf_counter send times

    def on_receiver(proto: _Lean, messages: list[m.Message]) -> list[m.Message]:
        nonlocal delivered, stale
        now = time.perf_counter()
        upto = 0
        for msg in messages:
            if isinstance(msg, m.Deliver):
                upto = proto.last_seq = msg.seq
                if msg.kind != "msg":
                    continue
                sent = float(msg.body[:20])
                if sent < started:  # an earlier run's, replayed at login: not this run's
                    stale += 1
                elif measuring:
                    recorder.record(now - sent)
                    delivered += 1
        return [m.Ack(upto=upto)] if upto else []

    def on_sender(proto: _Lean, messages: list[m.Message]) -> list[m.Message]:
        nonlocal errors
        upto = 0
        out: list[m.Message] = []
        for msg in messages:
            if isinstance(msg, m.Stored):
                if rate is None and not stopping:
                    out.append(new_send(proto))
            elif isinstance(msg, m.Deliver):
                upto = proto.last_seq = msg.seq  # receipts
            elif isinstance(msg, m.Error):
                errors += 1
                if rate is None and not stopping:
                    out.append(new_send(proto))
        if upto and proto.ack_later is None:
            # Receipts are acked as the real client acks them: later, cumulatively.
            proto.ack_later = loop.call_later(RECEIPT_ACK_DELAY, ack_receipts, proto)
        return out

    def ack_receipts(proto: _Lean) -> None:
        proto.ack_later = None
        proto.send([m.Ack(upto=proto.last_seq)])

    peer_of: dict[str, str] = {}

    def new_send(proto: _Lean, when: float | None = None) -> m.Send:
        stamp = f"{when if when is not None else time.perf_counter():<20.9f}"[:20]
        # The ids the real client makes (UUIDv7): their order is what keeps the hub's
        # index appends local, so random ids would measure a hub nobody runs.
        msg_id = new_message_id()
        return m.Send(id=msg_id, to=peer_of[proto.user], body=stamp + pad)

    held = resume if resume is not None else {}
    receivers = [
        await _login(address, f"{prefix}r{i}", on_receiver, held.get(f"{prefix}r{i}", 0))
        for i in range(pairs)
    ]
    for i in range(pairs):
        peer_of[f"{prefix}s{i}"] = f"{prefix}r{i}"
        senders.append(
            await _login(address, f"{prefix}s{i}", on_sender, held.get(f"{prefix}s{i}", 0))
        )
    if rate is None:
        for proto in senders:
            proto.send([new_send(proto) for _ in range(window)])
    else:
        # Open loop: message k leaves at start + k / rate, from sender k mod pairs.
        async def schedule() -> None:
            interval = 1.0 / rate
            k = 0
            base = time.perf_counter()
            while not stopping:
                due = base + k * interval
                delay = due - time.perf_counter()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                proto = senders[k % pairs]
                proto.send([new_send(proto, due)])
                k += 1

        ticker = loop.create_task(schedule())
    await asyncio.sleep(warmup)
    measuring = True
    delivered = 0
    began = loop.time()
    cpu1 = time.process_time()
    hub1 = server_cpu() if server_cpu is not None else 0.0
    await asyncio.sleep(duration)
    measuring = False
    elapsed = loop.time() - began
    cpu = (time.process_time() - cpu1) / elapsed if elapsed else 0.0
    hub_cpu = None
    if server_cpu is not None and elapsed:
        hub_cpu = (server_cpu() - hub1) / elapsed
    stopping = True
    if rate is not None:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    total = delivered
    for proto in senders + receivers:
        held[proto.user] = proto.last_seq
        if proto.ack_later is not None:
            proto.ack_later.cancel()
        if proto.transport is not None:
            proto.transport.close()
    recorder.flush()
    return RelayResult(
        pairs=pairs,
        window=window,
        payload=payload,
        duration=elapsed,
        delivered=total,
        errors=errors,
        rate=rate,
        latency_ms=summarize(recorder.hist),
        generator_cpu=cpu,
        histogram=recorder.encoded(),
        server_cpu=hub_cpu,
        stale=stale,
    )


def run_relay_native(
    address: tuple[str, int],
    *,
    pairs: int = 100,
    window: int = 1,
    payload: int = 64,
    duration: float = 5.0,
    warmup: float = 1.0,
    rate: float | None = None,
    prefix: str = "b",
    server_cpu: Callable[[], float] | None = None,
    resume: dict[str, int] | None = None,
    cpu: int | None = None,
) -> RelayResult:
    """Like :func:`run_relay`, with the load generated by the C client
    ``benchmarks/reference/hub_pairs.c`` (built on demand): the same users, devices,
    messages, acks and measurement, at about half the client CPU per message. It is
    how ``mqtt_pairs.c`` drives the MQTT reference, so the two compare like with like.
    Blocking: run it in a thread from async code.

    Args:
        address, pairs, window, payload, duration, warmup, rate, prefix, server_cpu,
            resume: as :func:`run_relay`'s (``payload`` is at least 20 bytes here).
        cpu: pin the client to this CPU.

    Raises:
        BenchError: no C compiler, the hub refused a login or closed a connection, or
            the client failed.
    """
    try:
        binary = build_reference(name=HUB_PAIRS)
    except BenchError as exc:
        raise BenchError(f"{exc}; the Python clients (--client python) need none") from None
    host, port = address
    args = [str(binary), "-h", host, "-p", str(port), "-n", str(pairs), "-W", str(window)]
    args += ["-s", str(max(20, payload)), "-d", str(duration), "-w", str(warmup)]
    args += ["-u", prefix, "-a", str(RECEIPT_ACK_DELAY)]
    if rate:
        args += ["-R", str(rate)]
    if cpu is not None:
        args += ["-c", str(cpu)]
    held = resume if resume is not None else {}
    with tempfile.TemporaryDirectory(prefix="duplex-hub-pairs-") as tmp:
        samples = Path(tmp) / "latency-us.u32"
        with subprocess.Popen(
            [*args, "-o", str(samples)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DUPLEX_PASSWORD": PASSWORD},
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            assert proc.stderr is not None
            # Logins (argon2 each) and the run, with room: then it is stuck, not slow.
            watchdog = threading.Timer(duration + warmup + 180, proc.kill)
            watchdog.start()
            try:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write("".join(f"{user} {seq}\n" for user, seq in held.items()))
                    proc.stdin.close()
                hub = [0.0, 0.0]
                last = ""
                for line in proc.stdout:
                    if line.startswith("measuring") and server_cpu is not None:
                        hub[0] = server_cpu()
                    elif line.startswith("measured") and server_cpu is not None:
                        hub[1] = server_cpu()
                    elif line.strip():
                        last = line
                err = proc.stderr.read()
                code = proc.wait()
            finally:
                watchdog.cancel()
                if proc.poll() is None:
                    proc.kill()
        if code != 0:
            detail = err.strip().splitlines()
            raise BenchError(detail[-1] if detail else f"hub_pairs exited {code}")
        try:
            figures = json.loads(last)
        except json.JSONDecodeError as exc:
            raise BenchError(f"hub_pairs printed no result: {last[:200]!r}") from exc
        latencies = array.array("I", samples.read_bytes())
    recorder = LatencyRecorder()
    recorder.counts.update(Counter(latencies))
    recorder.flush()
    held.update({user: int(seq) for user, seq in figures["seqs"].items()})
    elapsed = float(figures["elapsed"])
    return RelayResult(
        pairs=pairs,
        window=window,
        payload=payload,
        duration=elapsed,
        delivered=int(figures["messages"]),
        errors=int(figures["errors"]),
        rate=rate,
        latency_ms=summarize(recorder.hist),
        generator_cpu=float(figures["cpu"]),
        histogram=recorder.encoded(),
        server_cpu=(hub[1] - hub[0]) / elapsed if server_cpu is not None and elapsed else None,
        stale=int(figures["stale"]),
        client="c",
    )


async def run_direct(
    address: tuple[str, int],
    *,
    pairs: int = 10,
    window: int = 8,
    payload: int = 64,
    duration: float = 5.0,
    warmup: float = 1.0,
    prefix: str = "d",
) -> RelayResult:
    """Like :func:`run_relay`, over direct peer links (full clients, histories in memory).

    Use other users than a relay run just before (``prefix``): the hub relays to a user
    with several sessions, and the relay run's sessions may not all be gone yet.

    Each pair's first message sets up the link (introduction, dial, pinned TLS,
    ticket); the warm-up absorbs it. The latency is from the send to the receiver's
    ``MessageReceived``; a message counts when the receiver has it.
    """
    from duplex.client import Client, MessageReceived, MessageStateChanged
    from duplex.client.local import LocalStore
    from duplex.p2p import DirectRouter

    recorder = LatencyRecorder()
    measuring = False
    delivered = 0
    errors = 0
    pad = "x" * max(0, payload - 20)

    async def make(user: str) -> Client:
        client = Client(
            address,
            user,
            password=PASSWORD,
            local=LocalStore(":memory:"),
            router=DirectRouter(host="127.0.0.1"),
        )
        await client.start(wait_online=60)
        return client

    receivers = [await make(f"{prefix}r{i}") for i in range(pairs)]
    senders = [await make(f"{prefix}s{i}") for i in range(pairs)]
    paths: dict[str, int] = {}
    stop = asyncio.Event()

    async def receive(client: Client) -> None:
        nonlocal delivered, errors
        while not stop.is_set():
            try:
                event = await client.next_event(0.2)
            except TimeoutError:
                continue
            if isinstance(event, MessageReceived):
                paths[event.path] = paths.get(event.path, 0) + 1
                if event.path != "direct":
                    errors += 1  # the direct path failed: it is not what we measure
                if measuring:
                    recorder.record(time.perf_counter() - float(event.body[:20]))
                    delivered += 1

    async def send(client: Client, to: str) -> None:
        in_flight = 0
        while not stop.is_set():
            while in_flight < window:
                await client.send(to, f"{time.perf_counter():<20.9f}"[:20] + pad)
                in_flight += 1
            try:
                event = await client.next_event(0.2)
            except TimeoutError:
                continue
            if isinstance(event, MessageStateChanged) and event.state in ("delivered", "failed"):
                in_flight -= 1

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(receive(c)) for c in receivers]
    tasks += [loop.create_task(send(c, f"{prefix}r{i}")) for i, c in enumerate(senders)]
    await asyncio.sleep(warmup)
    measuring = True
    delivered = 0
    began = loop.time()
    cpu1 = time.process_time()
    await asyncio.sleep(duration)
    measuring = False
    elapsed = loop.time() - began
    cpu = (time.process_time() - cpu1) / elapsed if elapsed else 0.0
    stop.set()
    await asyncio.gather(*tasks)
    for client in senders + receivers:
        await client.close()
    recorder.flush()
    return RelayResult(
        pairs=pairs,
        window=window,
        payload=payload,
        duration=elapsed,
        delivered=delivered,
        errors=errors,
        rate=None,
        latency_ms=summarize(recorder.hist),
        generator_cpu=cpu,
        path="direct",
        histogram=recorder.encoded(),
    )


def plot_chat(results: list[RelayResult], path: str) -> None:
    """Writes the latency percentile spectrum of each run (matplotlib) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from duplex.bench.histogram import decode_histogram, percentile_spectrum

    fig, ax = plt.subplots(figsize=(8, 5))
    for result in results:
        points = percentile_spectrum(decode_histogram(result.histogram))
        label = f"{result.path}, {result.pairs} pairs x {result.window}: {result.per_second:,.0f}/s"
        xs = [1 / (1 - min(p, 99.9999) / 100) for p, _ in points]
        ax.plot(xs, [y for _, y in points], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("percentile (1 / (1 - p), log scale: 10 = p90, 100 = p99, 1000 = p99.9)")
    ax.set_ylabel("end-to-end latency, ms")
    ax.set_title("duplex bench chat: messages through the hub (relayed) and peer to peer")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
