"""One load-generator process: many echo connections on one uvloop event loop.

:func:`worker_main` is the body of each generator process that
:func:`duplex.bench.runner.run_load` starts. It talks to its parent over a pipe::

    worker                              parent
    connects its share of connections
    ("ready", connected, failed, err) ->
                                    <-  ("go", t0)   a common start, CLOCK_MONOTONIC
    warm-up, then the measured window
    ("progress", ...) every 0.5 s     ->
    ("done", WorkerResult)            ->

``time.monotonic()`` reads CLOCK_MONOTONIC, one clock for every process on the
machine, so all generator processes start, stop measuring and stop sending together.

Closed loop: each connection sends ``pipeline`` requests, and sends the next one as
soon as an echo is complete and checked. The latency of a request is from its send to
the last byte of its echo.

Open loop (``rate``): requests are *scheduled* at fixed intervals, whatever the
server does, and each request's latency is measured from its scheduled time, not from
when it was actually written. This is how wrk2 avoids coordinated omission: when the
server stalls, a closed-loop client stops sending and so records one slow request per
connection, while real users would have kept arriving; the open loop records every
request that would have waited. The time from the actual write is kept too
(``service`` time). Scheduling uses the event loop's timers (1 ms resolution), so
open-loop latencies may include up to about a millisecond of timer lateness.

Every byte of every echo is compared with what was sent; a difference is a
``mismatch`` error and ends that connection (its stream can no longer be trusted).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, ClassVar

from duplex.bench.histogram import LatencyRecorder

__all__ = ["PROGRESS_INTERVAL", "WorkerPlan", "WorkerResult", "worker_main"]

PROGRESS_INTERVAL = 0.5
"""Seconds between progress messages to the parent."""

PAYLOAD_MEMORY = 64 * 1024 * 1024
"""Bytes of distinct payloads a process keeps, at most. Below it every connection
sends its own random bytes (so an echo that crossed connections is caught too);
above it connections share payloads."""

TICK_MIN = 50e-6
"""Seconds between open-loop wake-ups, at least (a request may be sent this late)."""

GO_TIMEOUT = 60.0
"""Seconds a ready worker waits for the parent's "go" before it gives up."""

_now = time.monotonic


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one generator process does: its share of the run's load."""

    index: int
    """This process's number, from 0."""
    host: str
    """The echo server's host."""
    port: int
    """The echo server's port."""
    connections: int
    """Connections this process opens."""
    size: int
    """Bytes per request."""
    pipeline: int
    """Requests in flight per connection (closed loop), or their limit (open loop)."""
    rate: float | None
    """This process's share of the open-loop rate; None for a closed loop."""
    requests: int | None
    """This process's share of the measured requests; None for no limit."""
    duration: float | None
    """Seconds of measured load; None with ``requests``."""
    warmup: float
    """Seconds of unmeasured load first."""
    timeout: float
    """Seconds a request or a connect may take."""
    time_limit: float
    """Seconds of measured load at most when ``duration`` is None."""
    cpus: tuple[int, ...] | None = None
    """CPUs to pin this process to; None leaves the affinity alone."""


@dataclasses.dataclass(slots=True)
class WorkerResult:
    """What one generator process measured. Counters include the warm-up unless noted."""

    index: int
    """The process's number."""
    connected: int = 0
    """Connections opened."""
    connect_failed: int = 0
    """Connects that failed or timed out."""
    completed: int = 0
    """Measured requests whose echo came back complete and correct."""
    sent: int = 0
    """Measured requests sent (scheduled, in the open loop)."""
    in_window: int = 0
    """Echoes completed inside the measured window (the throughput's numerator)."""
    timeouts: int = 0
    """Requests with no complete echo within the timeout."""
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    """Failed requests by kind: mismatch, closed (EOF), reset, extra (unasked bytes)."""
    lost: int = 0
    """Connections that ended before the run did (error, timeout, or server close)."""
    first_error: str = ""
    """The first error seen, in words."""
    latency: str = ""
    """Encoded histogram of latencies (µs), from the scheduled time in the open loop."""
    service: str = ""
    """Encoded histogram of service times (µs) from the actual send; open loop only."""
    window: float = 0.0
    """Seconds from the start of measuring to the end of sending."""
    cpu: float = 0.0
    """CPU seconds this process used during the window."""
    backlog_max: int = 0
    """Open loop: the most scheduled requests that waited for a connection at once."""


class _Conn(asyncio.Protocol):
    """A closed-loop connection: send, wait for the whole echo, check it, send again."""

    def __init__(self, worker: _Worker, payload: bytes) -> None:
        self.w = worker
        self.payload = payload
        self.size = len(payload)
        self.starts: collections.deque[float] = collections.deque()
        self.offset = 0
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.closing = False
        self.number = 0

    # -- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        starts = self.starts
        if self.offset or len(data) != self.size or not starts:
            self._partial(data)
            return
        if data != self.payload:
            self._mismatch(data, 0)
            return
        # The hot path: one whole, correct echo in one chunk, in a closed loop that
        # goes on. _complete() does the same in general; this is it inlined, because
        # the generator must stay cheaper than the servers it measures.
        w = self.w
        if w.sending and w.remaining is None and not w.open_loop:
            now = _now()
            start = starts.popleft()
            if now >= w.measure_start:
                if start >= w.measure_start:
                    us = int((now - start) * 1_000_000)
                    counts = w.counts
                    counts[us] = counts.get(us, 0) + 1
                    w.completed += 1
                w.in_window += 1
                w.sent += 1
            starts.append(now)
            self.transport.write(self.payload)  # type: ignore[union-attr]
            return
        self._complete()

    def eof_received(self) -> bool:
        self._lost("closed", "the server closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open:
            if exc is None:
                self._lost("closed", "the server closed the connection")
            else:
                self._lost("reset", f"connection broken: {exc}")

    # -- requests ----------------------------------------------------------------

    def start(self) -> None:
        """Sends the first ``pipeline`` requests (closed loop)."""
        now = _now()
        for _ in range(self.w.plan.pipeline):
            self._send_next(now)

    def _send_next(self, now: float) -> None:
        w = self.w
        if now >= w.measure_start:
            if w.remaining is not None:
                if w.remaining <= 0:
                    return
                w.remaining -= 1
            w.sent += 1
        self.starts.append(now)
        w.inflight += 1
        self.transport.write(self.payload)  # type: ignore[union-attr]

    def _complete(self) -> None:
        now = _now()
        w = self.w
        start = self.starts.popleft()
        w.inflight -= 1
        if start >= w.measure_start:
            w.latency.record(now - start)
            w.completed += 1
        if now >= w.measure_start and not w.stopped:
            w.in_window += 1
        if w.sending:
            self._send_next(now)
        if w.inflight == 0:
            w.check_done(now)

    def _partial(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if not self.starts:
                self._error("extra", f"{n - pos} bytes arrived that were never sent")
                return
            take = min(self.size - self.offset, n - pos)
            # Slices of bytes compare with memcmp, 15 times faster than memoryviews
            # (which compare item by item); the copy is cheap next to that.
            got = data[pos : pos + take]
            if got != self.payload[self.offset : self.offset + take]:
                self._mismatch(got, self.offset)
                return
            pos += take
            self.offset += take
            if self.offset == self.size:
                self.offset = 0
                self._complete()
                if not self.open:
                    return

    def oldest(self) -> float | None:
        """Returns the send time of the oldest request in flight, or None."""
        return self.starts[0] if self.starts else None

    # -- failures ----------------------------------------------------------------

    def _mismatch(self, got: bytes, offset: int) -> None:
        expected = self.payload[offset : offset + len(got)]
        at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), 0)
        self._error(
            "mismatch",
            f"echo differs at byte {offset + at} of {self.size} on connection "
            f"{self.w.plan.index}.{self.number}: sent 0x{expected[at]:02x}, got 0x{got[at]:02x}",
        )

    def _error(self, kind: str, message: str) -> None:
        # The failed request is one error of this kind; the others in flight end with it.
        self.w.count_error(kind, 1, message)
        if self.starts:
            self.starts.popleft()
            self.w.inflight -= 1
        self._abandon("aborted")

    def _lost(self, kind: str, message: str) -> None:
        if not self.open:
            return
        inflight = self._inflight_count()
        if inflight:
            self.w.count_error(kind, inflight, message)
        elif not self.closing:
            self.w.note_error(message)
        self._abandon(None)

    def time_out(self) -> None:
        """Counts every request in flight as a timeout and closes the connection."""
        count = self._inflight_count()
        self.w.timeouts += count
        self.w.note_error(f"no echo within {self.w.plan.timeout:g} s")
        self._clear_inflight()
        self._abandon(None)

    def _inflight_count(self) -> int:
        return len(self.starts)

    def _clear_inflight(self) -> None:
        self.w.inflight -= len(self.starts)
        self.starts.clear()

    def _abandon(self, kind: str | None) -> None:
        """Ends this connection; requests still in flight count as errors of ``kind``."""
        if not self.open:
            return
        if kind is not None and self._inflight_count():
            self.w.count_error(kind, self._inflight_count(), "")
        self._clear_inflight()
        self.open = False
        if not self.closing:
            self.w.lost += 1
        if self.transport is not None:
            self.transport.abort()
        self.w.connection_ended()

    def close(self) -> None:
        """Closes the connection at the end of the run (not an error)."""
        self.closing = True
        if self.open:
            self.open = False
            self._clear_inflight()
            if self.transport is not None:
                self.transport.close()


class _OpenConn(_Conn):
    """An open-loop connection: requests come from the schedule, not from echoes."""

    def __init__(self, worker: _Worker, payload: bytes) -> None:
        super().__init__(worker, payload)
        self.sent_at: collections.deque[float] = collections.deque()
        self.backlog: collections.deque[float] = collections.deque()

    def schedule(self, when: float, now: float) -> None:
        """Sends a request scheduled for ``when``, or queues it if ``pipeline`` are out."""
        if len(self.starts) < self.w.plan.pipeline:
            self.starts.append(when)
            self.sent_at.append(now)
            self.w.inflight += 1
            self.transport.write(self.payload)  # type: ignore[union-attr]
        else:
            self.backlog.append(when)
            self.w.inflight += 1
            if len(self.backlog) > self.w.backlog_max:
                self.w.backlog_max = len(self.backlog)

    def data_received(self, data: bytes) -> None:
        if self.offset or len(data) != self.size or not self.starts:
            self._partial(data)
        elif data != self.payload:
            self._mismatch(data, 0)
        else:
            self._complete()

    def _complete(self) -> None:
        now = _now()
        w = self.w
        start = self.starts.popleft()
        sent = self.sent_at.popleft()
        w.inflight -= 1
        if start >= w.measure_start:
            # LatencyRecorder.record(), inlined: this runs once per request.
            counts = w.counts
            us = int((now - start) * 1_000_000)
            counts[us] = counts.get(us, 0) + 1
            counts = w.service_counts
            us = int((now - sent) * 1_000_000)
            counts[us] = counts.get(us, 0) + 1
            w.completed += 1
        if now >= w.measure_start and not w.stopped:
            w.in_window += 1
        if self.backlog:
            # Still timed from its schedule: the wait for a free slot is latency too.
            self.starts.append(self.backlog.popleft())
            self.sent_at.append(now)
            self.transport.write(self.payload)  # type: ignore[union-attr]
        if w.inflight == 0:
            w.check_done(now)

    def _error(self, kind: str, message: str) -> None:
        if self.sent_at:
            self.sent_at.popleft()
        super()._error(kind, message)

    def oldest(self) -> float | None:
        """Returns the actual send time of the oldest request in flight, or None."""
        return self.sent_at[0] if self.sent_at else None

    def _inflight_count(self) -> int:
        return len(self.starts) + len(self.backlog)

    def _clear_inflight(self) -> None:
        self.w.inflight -= len(self.starts) + len(self.backlog)
        self.starts.clear()
        self.sent_at.clear()
        self.backlog.clear()


class _PreciseTimer:
    """A one-shot timer on a Linux ``timerfd``, armed at absolute CLOCK_MONOTONIC times.

    ``time.monotonic()`` reads the same clock, so ``arm(t)`` fires at ``t`` to the
    microsecond (or at once if ``t`` has passed).
    """

    _CLOCK_MONOTONIC = 1
    _TFD_TIMER_ABSTIME = 1
    _TFD_NONBLOCK = os.O_NONBLOCK
    _TFD_CLOEXEC = os.O_CLOEXEC

    class _Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, libc: Any, callback: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._settime = libc.timerfd_settime
        self._callback = callback
        self._spec = _Itimerspec()
        loop.add_reader(fd, self._fire)

    @classmethod
    def create(
        cls, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]
    ) -> _PreciseTimer | None:
        """Returns a timer that calls ``callback`` on ``loop``, or None without timerfd."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(cls._CLOCK_MONOTONIC, cls._TFD_NONBLOCK | cls._TFD_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        try:
            return cls(loop, fd, libc, callback)
        except Exception:
            os.close(fd)
            return None

    def arm(self, when: float) -> None:
        """Fires once at ``when`` (``time.monotonic()`` seconds)."""
        when = max(when, 1e-6)  # an all-zero time would disarm the timer
        sec = int(when)
        value = self._spec.it_value
        value.tv_sec = sec
        value.tv_nsec = int((when - sec) * 1e9)
        self._settime(self._fd, self._TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None)

    def _fire(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return
        self._callback()

    def close(self) -> None:
        """Stops the timer and closes its descriptor."""
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)


class _Itimerspec(ctypes.Structure):
    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("it_interval", _PreciseTimer._Timespec),
        ("it_value", _PreciseTimer._Timespec),
    ]


class _Worker:
    """The state of one generator process during a run."""

    def __init__(self, plan: WorkerPlan, pipe: Connection) -> None:
        self.plan = plan
        self.pipe = pipe
        self.result = WorkerResult(plan.index)
        self.latency = LatencyRecorder()
        self.service = LatencyRecorder()
        self.counts = self.latency.counts
        self.service_counts = self.service.counts
        self.open_loop = plan.rate is not None
        self.conns: list[_Conn] = []
        self.live = 0
        self.inflight = 0
        self.remaining: int | None = plan.requests
        self.sent = 0
        self.completed = 0
        self.in_window = 0
        self.timeouts = 0
        self.lost = 0
        self.backlog_max = 0
        self.errors: dict[str, int] = {}
        self.first_error = ""
        self.measure_start = float("inf")
        self.sending = False
        self.stopped = False
        self.scheduling_done = False
        self.stop_time = 0.0
        self.cpu_start = 0.0
        self.cpu = 0.0
        self.done: asyncio.Future[None] | None = None
        self._timer: _PreciseTimer | None = None

    # -- bookkeeping called by the connections ----------------------------------

    def note_error(self, message: str) -> None:
        if message and not self.first_error:
            self.first_error = message

    def count_error(self, kind: str, count: int, message: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + count
        self.note_error(message)

    def connection_ended(self) -> None:
        self.live -= 1
        if self.live <= 0:
            self.stop(_now())
            self._finish()

    def check_done(self, now: float) -> None:
        """Called when nothing is in flight: ends the run if nothing more will be sent."""
        if self.stopped:
            self._finish()
        elif self.plan.rate is None:
            if self.remaining is not None and self.remaining <= 0:
                self.stop(now)
                self._finish()
        elif self.scheduling_done:
            self.stop(now)
            self._finish()

    def stop(self, now: float) -> None:
        """Stops sending and closes the measured window."""
        if self.stopped:
            return
        self.sending = False
        self.stopped = True
        self.stop_time = now
        self.cpu = time.process_time() - self.cpu_start if self.cpu_start else 0.0
        if self.inflight <= 0:
            self._finish()

    def _finish(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _begin_window(self) -> None:
        self.cpu_start = time.process_time()

    # -- the run -----------------------------------------------------------------

    def _payloads(self) -> list[bytes]:
        plan = self.plan
        distinct = max(1, min(plan.connections, PAYLOAD_MEMORY // max(1, plan.size)))
        return [os.urandom(plan.size) for _ in range(distinct)]

    async def _connect_all(self) -> None:
        loop = asyncio.get_running_loop()
        plan = self.plan
        payloads = self._payloads()
        cls = _Conn if plan.rate is None else _OpenConn

        async def connect(number: int) -> None:
            proto = cls(self, payloads[number % len(payloads)])
            proto.number = number
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda: proto, plan.host, plan.port), plan.timeout
                )
            except (OSError, TimeoutError) as exc:
                self.result.connect_failed += 1
                reason = str(exc) or type(exc).__name__
                self.note_error(f"connect to {plan.host}:{plan.port} failed: {reason}")
                return
            self.conns.append(proto)

        await asyncio.gather(*(connect(i) for i in range(plan.connections)))
        self.conns.sort(key=lambda c: c.number)
        self.live = len(self.conns)
        self.result.connected = self.live

    def _wait_go(self) -> float | None:
        # Nothing else can happen on this loop before the start, so a blocking wait
        # on the pipe is fine here.
        if not self.pipe.poll(GO_TIMEOUT):
            return None
        message = self.pipe.recv()
        if message[0] != "go":
            return None
        return float(message[1])

    async def _watchdog(self) -> None:
        """Times out requests that waited longer than the timeout, until the run ends."""
        timeout = self.plan.timeout
        tick = min(0.1, timeout / 5)
        while True:
            await asyncio.sleep(tick)
            now = _now()
            limit = now - timeout
            self.latency.maybe_flush()
            self.service.maybe_flush()
            for conn in self.conns:
                if conn.open:
                    oldest = conn.oldest()
                    if oldest is not None and oldest < limit:
                        conn.time_out()
            if self.stopped and now >= self.stop_time + timeout:
                # Whatever is still in flight missed its deadline (it may be queued
                # behind a request that timed out on another check).
                for conn in self.conns:
                    if conn.open and conn._inflight_count():
                        conn.time_out()
                self._finish()
                return

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self._send(
                (
                    "progress",
                    self.plan.index,
                    self.completed,
                    self.in_window,
                    sum(self.errors.values()),
                    self.timeouts,
                )
            )

    def _send(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.pipe.send(message)

    def _start_ticker(self, t0: float, end: float) -> None:
        """Open loop: sends each request at its scheduled time, to the next connection.

        Event-loop timers have a resolution of 1 ms, too coarse for requests due every
        20 µs, or for an echo that takes 50 µs: a request sent up to 1 ms late would
        add that much to its latency (which counts from the schedule). So the schedule
        wakes on a ``timerfd`` armed at the absolute CLOCK_MONOTONIC time of the next
        request (microsecond precision, no spinning); each wake-up sends whatever is
        due. Where timerfd is missing, loop timers are the fallback.
        """
        plan = self.plan
        assert plan.rate is not None
        loop = asyncio.get_running_loop()
        interval = 1.0 / plan.rate
        conns = self.conns
        count = len(conns)
        state = {"k": 0, "turn": 0}
        timer = _PreciseTimer.create(loop, lambda: tick())
        self._timer = timer

        def tick() -> None:
            if self.stopped:
                return
            now = _now()
            k, turn = state["k"], state["turn"]
            due = int((now - t0) / interval) + 1
            while k < due:
                when = t0 + k * interval
                if when >= end:
                    self._end_schedule(now)
                    return
                if when >= self.measure_start:
                    if self.remaining is not None:
                        if self.remaining <= 0:
                            self._end_schedule(now)
                            return
                        self.remaining -= 1
                    self.sent += 1
                for _ in range(count):
                    conn = conns[turn]
                    turn = (turn + 1) % count
                    if conn.open:
                        conn.schedule(when, now)  # type: ignore[attr-defined]
                        break
                else:
                    return  # no connection left; connection_ended() finished the run
                k += 1
            state["k"], state["turn"] = k, turn
            next_at = t0 + k * interval
            if timer is not None:
                # At high rates, wake at most every TICK_MIN: a few requests per
                # wake-up instead of one, for at most that much lateness.
                timer.arm(max(next_at, now + TICK_MIN))
            else:
                loop.call_later(max(0.0, next_at - _now()), tick)

        loop.call_soon(tick)

    def _end_schedule(self, now: float) -> None:
        self.scheduling_done = True
        if self.inflight <= 0:
            self.stop(now)

    async def run(self) -> WorkerResult:
        """Connects, waits for the start, runs the load, and returns what it measured."""
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        plan = self.plan
        await self._connect_all()
        self._send(
            (
                "ready",
                plan.index,
                self.result.connected,
                self.result.connect_failed,
                self.first_error,
            )
        )
        t0 = self._wait_go()
        if t0 is None or not self.conns:
            self._close_all()
            return self._result()
        await asyncio.sleep(max(0.0, t0 - _now()))
        self.measure_start = t0 + plan.warmup
        limit = plan.duration if plan.duration is not None else plan.time_limit
        end = self.measure_start + limit
        self.sending = True
        now = _now()
        loop.call_later(max(0.0, self.measure_start - now), self._begin_window)
        loop.call_later(max(0.0, end - now), lambda: self.stop(_now()))
        tasks = [loop.create_task(self._watchdog()), loop.create_task(self._progress())]
        if plan.rate is None:
            for conn in list(self.conns):
                if conn.open:
                    conn.start()
        else:
            self._start_ticker(t0, end)
        try:
            # The watchdog ends the run at the latest one timeout after the stop;
            # this outer bound only guards against a bug in that logic.
            await asyncio.wait_for(
                asyncio.shield(self.done), max(0.0, end - _now()) + plan.timeout + 5.0
            )
        except TimeoutError:
            self.note_error("generator: the run did not end by itself; stopped")
        finally:
            self.stop(_now())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._timer is not None:
                self._timer.close()
            self._close_all()
            await asyncio.sleep(0)  # let the transports report connection_lost
        return self._result()

    def _close_all(self) -> None:
        for conn in self.conns:
            conn.close()

    def _result(self) -> WorkerResult:
        r = self.result
        r.completed = self.completed
        r.sent = self.sent
        r.in_window = self.in_window
        r.timeouts = self.timeouts
        r.errors = dict(self.errors)
        r.lost = self.lost
        r.first_error = self.first_error
        r.latency = self.latency.encoded()
        r.service = self.service.encoded() if self.plan.rate is not None else ""
        r.window = max(0.0, self.stop_time - self.measure_start) if self.stopped else 0.0
        r.cpu = self.cpu
        r.backlog_max = self.backlog_max
        return r


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency of bench
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def worker_main(plan: WorkerPlan, pipe: Connection) -> None:
    """Runs one generator process's share of the load and sends back its result.

    Args:
        plan: this process's share of the run.
        pipe: the connection to the parent (see the module docstring).
    """
    # Ctrl-C reaches the whole process group; the parent alone decides to stop us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if plan.cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, plan.cpus)
        loop = _new_loop()
        try:
            result = loop.run_until_complete(_Worker(plan, pipe).run())
        finally:
            loop.close()
        pipe.send(("done", plan.index, result))
    except BaseException as exc:  # report, do not hang the parent
        with contextlib.suppress(Exception):
            pipe.send(("failed", plan.index, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        pipe.close()
