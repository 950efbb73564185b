"""One load run: start the generator processes, run them together, merge what they saw.

The generator runs in several processes (``spawn``, so nothing of the parent's
threads or sockets is inherited), each with its own uvloop event loop and its share
of the connections, so one core's worth of Python is not the ceiling. The parent
does no load itself: it hands out the shares, gives every process the same start
time once all of them are connected, shows a live progress line, samples the
server's CPU time over the measured window, and merges the results. Histograms are
merged (not their percentiles averaged), so a merged p99 is the p99 of every sample.

Every run stops by itself. Each worker ends one timeout after the end of its window
at the latest; the parent additionally gives up on a worker that is silent long
after that, and kills it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from duplex.bench.generator import WorkerPlan, WorkerResult, worker_main
from duplex.bench.histogram import encode_histogram, merge_histograms, summarize
from duplex.bench.machine import CpuTimes, busy_between, read_cpu_times
from duplex.bench.result import (
    FOREIGN_CPU_BUSY,
    GENERATOR_SATURATED,
    RunResult,
    collect_metadata,
)
from duplex.bench.servers import BenchServer
from duplex.bench.spec import BenchError, LoadSpec, Target

__all__ = ["Progress", "plan_workers", "run_load"]

log = logging.getLogger("duplex.bench")

START_SLACK = 30.0
"""Seconds the parent allows, beyond the connect timeout, for processes to start and
connect (spawning a Python process and importing uvloop takes a few hundred ms)."""

END_SLACK = 15.0
"""Seconds the parent waits, beyond a worker's own bound, before it kills the worker."""

STEAL_CPU_WARN = 0.05
"""Cores of hypervisor steal that make a run doubtful."""

START_DELAY = 0.05
"""Seconds between the "go" message and the common start: time to deliver it."""

Progress = Callable[[dict[str, Any]], None]
"""Called about twice a second during a run with the aggregated counters."""


class _Window:
    """CPU samples at the start and the end of the measured window.

    The server's CPU time (its whole process tree), this process's, and whole CPUs'
    from ``/proc/stat``, so that the report can say who used the CPUs meanwhile.
    """

    def __init__(self, server: BenchServer | None) -> None:
        self.server = server
        self.marks: dict[str, tuple[float, float | None, float, dict[int, CpuTimes]]] = {}

    def sample(self, mark: str) -> None:
        if mark in self.marks:
            return
        server = self.server.cpu_seconds() if self.server is not None else None
        self.marks[mark] = (time.monotonic(), server, time.process_time(), read_cpu_times())

    def rates(
        self, cpus: Sequence[int] | None, generator_cores: float
    ) -> tuple[float | None, float | None, float | None]:
        """Returns (server cores, other programs' cores, stolen cores) over the window."""
        if "start" not in self.marks or "end" not in self.marks:
            return None, None, None
        t0, server0, _, stat0 = self.marks["start"]
        t1, server1, _, stat1 = self.marks["end"]
        wall = t1 - t0
        if wall < 0.2:
            return None, None, None
        server = None
        if server0 is not None and server1 is not None:
            server = max(0.0, (server1 - server0) / wall)
        totals = busy_between(stat0, stat1, cpus)
        if totals is None:
            return server, None, None
        busy, steal = totals
        # This process is deliberately not "ours": it should use next to nothing, and
        # if it ever does (a polling loop), that shows here as taken from the run.
        ours = generator_cores + (server or 0.0)
        return server, max(0.0, busy / wall - ours), steal / wall


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def plan_workers(
    target: Target, spec: LoadSpec, cpus: Sequence[int] | None = None
) -> list[WorkerPlan]:
    """Divides a run among generator processes.

    Connections are spread evenly; the open-loop rate and the request count follow
    the connections, so every connection carries the same load.

    Args:
        target: the echo server.
        spec: the load.
        cpus: CPUs for the generator; process ``i`` is pinned to ``cpus[i % len]``.

    Returns:
        One plan per process.
    """
    count = spec.process_count(len(cpus) if cpus else None)
    conns = _split(spec.connections, count)
    requests = _split(spec.requests, count) if spec.requests is not None else [None] * count
    plans = []
    for i in range(count):
        rate = None if spec.rate is None else spec.rate * conns[i] / spec.connections
        plans.append(
            WorkerPlan(
                index=i,
                host=target.host,
                port=target.port,
                connections=conns[i],
                size=spec.size,
                pipeline=spec.pipeline,
                rate=rate,
                requests=requests[i],
                duration=spec.duration,
                warmup=spec.warmup,
                timeout=spec.timeout,
                time_limit=spec.time_limit,
                cpus=(cpus[i % len(cpus)],) if cpus else None,
            )
        )
    return plans


class _Processes:
    """The generator processes of one run, with their pipes; always cleaned up."""

    def __init__(self, plans: Sequence[WorkerPlan]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.pipes: list[multiprocessing.connection.Connection] = []
        try:
            for plan in plans:
                parent, child = ctx.Pipe(duplex=True)
                proc = ctx.Process(
                    target=worker_main,
                    args=(plan, child),
                    name=f"duplex-bench-{plan.index}",
                    daemon=True,
                )
                self.pipes.append(parent)
                self.procs.append(proc)
                try:
                    proc.start()
                finally:
                    child.close()
        except BaseException:
            self.close()
            raise

    def send_all(self, message: tuple[Any, ...]) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(message)

    def close(self, wait: float = 5.0) -> None:
        """Waits up to ``wait`` s for each process, ends stragglers, closes everything."""
        for proc in self.procs:
            if proc.pid is not None:
                proc.join(wait)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(2)
                if proc.is_alive():
                    proc.kill()
                    proc.join(2)
        for pipe in self.pipes:
            pipe.close()
        for proc in self.procs:
            with contextlib.suppress(ValueError):
                proc.close()
        self.procs, self.pipes = [], []


def _receive(
    procs: _Processes,
    deadline: float,
    wanted: str,
    on_message: Callable[[tuple[Any, ...]], None],
    wake_at: Callable[[], float] = lambda: float("inf"),
) -> dict[int, tuple[Any, ...]]:
    """Collects one ``wanted`` message from every process, passing the others on.

    ``on_message(("tick",))`` is called at least every 0.25 s, and at ``wake_at()``.
    """
    got: dict[int, tuple[Any, ...]] = {}
    pending = {id(p): (i, p) for i, p in enumerate(procs.pipes)}
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = sorted(i for i, _ in pending.values())
            raise BenchError(f"generator processes {missing} did not report {wanted!r} in time")
        ready = multiprocessing.connection.wait(
            [p for _, p in pending.values()],
            max(0.0, min(0.25, remaining, wake_at() - time.monotonic())),
        )
        for pipe in ready:
            assert isinstance(pipe, multiprocessing.connection.Connection)
            index, _ = pending[id(pipe)]
            try:
                message = pipe.recv()
            except (EOFError, OSError):
                raise BenchError(f"generator process {index} exited unexpectedly") from None
            if message[0] == "failed":
                raise BenchError(f"generator process {index} failed: {message[2]}")
            if message[0] == wanted:
                got[index] = message
                del pending[id(pipe)]
            else:
                on_message(message)
        on_message(("tick",))
    return got


def run_load(
    target: Target,
    spec: LoadSpec,
    *,
    label: str | None = None,
    server: BenchServer | None = None,
    cpus: Sequence[int] | None = None,
    progress: Progress | None = None,
    metadata: dict[str, Any] | None = None,
    repeat: int = 1,
) -> RunResult:
    """Runs one load against an echo server and returns what it measured.

    Args:
        target: where the echo server listens.
        spec: the load (connections, size, loop kind, bounds).
        label: what to call the server in reports (default: the model, or the target).
        server: the server, when the bench started it: its CPU use is measured.
        cpus: CPUs for the generator processes (None: not pinned).
        progress: called about twice a second with counters, for a live line.
        metadata: extra metadata fields for the report.
        repeat: the run's number in a ``--repeat`` series.

    Returns:
        The merged result of every generator process.

    Raises:
        BenchError: no connection could be made, or a generator process failed.
    """
    plans = plan_workers(target, spec, cpus)
    live: dict[int, tuple[int, int, int, int]] = {}
    marks: dict[str, float] = {}
    sampler = _Window(server)

    def wake_at() -> float:
        # The next CPU sample still to take: wake up for it, then never again.
        for name, mark in (("measure_start", "start"), ("measure_end", "end")):
            if name in marks and mark not in sampler.marks:
                return marks[name]
        return float("inf")

    def on_message(message: tuple[Any, ...]) -> None:
        if message[0] == "progress":
            live[message[1]] = tuple(message[2:6])
        now = time.monotonic()
        start = marks.get("measure_start")
        if start is not None and now >= start:
            sampler.sample("start")
        end = marks.get("measure_end")
        if end is not None and now >= end:
            sampler.sample("end")
        if progress is not None and start is not None:
            progress(
                {
                    "elapsed": now - marks["t0"],
                    "warmup": spec.warmup,
                    "limit": spec.warmup + spec.measure_limit,
                    "completed": sum(v[0] for v in live.values()),
                    "in_window": sum(v[1] for v in live.values()),
                    "errors": sum(v[2] for v in live.values()),
                    "timeouts": sum(v[3] for v in live.values()),
                    "measuring": now >= start,
                }
            )

    procs = _Processes(plans)
    try:
        ready = _receive(procs, time.monotonic() + spec.timeout + START_SLACK, "ready", on_message)
        connected = sum(m[2] for m in ready.values())
        failed = sum(m[3] for m in ready.values())
        if connected == 0:
            procs.send_all(("stop",))
            reason = next((m[4] for m in ready.values() if m[4]), "no connection")
            raise BenchError(f"cannot load {target}: {reason}")
        t0 = time.monotonic() + START_DELAY
        marks["t0"] = t0
        marks["measure_start"] = t0 + spec.warmup
        marks["measure_end"] = t0 + spec.warmup + spec.measure_limit
        procs.send_all(("go", t0))
        deadline = marks["measure_end"] + spec.timeout + END_SLACK
        done = _receive(procs, deadline, "done", on_message, wake_at)
        # A run that ended early (a request bound, lost connections) ends its window
        # when the workers report, a little after they stopped.
        sampler.sample("start")
        sampler.sample("end")
    except BaseException:
        # A failure or Ctrl-C: the workers ignore SIGINT and would run to their end.
        procs.close(wait=0.0)
        raise
    procs.close()

    results: list[WorkerResult] = [done[i][2] for i in sorted(done)]
    return _merge(
        results,
        target=target,
        spec=spec,
        label=label,
        server=server,
        failed=failed,
        sampler=sampler,
        cpus=cpus,
        metadata=metadata or {},
        repeat=repeat,
    )


def _merge(
    results: list[WorkerResult],
    *,
    target: Target,
    spec: LoadSpec,
    label: str | None,
    server: BenchServer | None,
    failed: int,
    sampler: _Window,
    cpus: Sequence[int] | None,
    metadata: dict[str, Any],
    repeat: int,
) -> RunResult:
    latency = merge_histograms(r.latency for r in results)
    service = merge_histograms(r.service for r in results) if spec.rate is not None else None
    errors: dict[str, int] = {}
    for r in results:
        for kind, count in r.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    window = max((r.window for r in results), default=0.0)
    in_window = sum(r.in_window for r in results)
    throughput = in_window / window if window > 0 else 0.0
    generator_cpu = [r.cpu / r.window if r.window > 0 else 0.0 for r in results]
    watched: list[int] | None = None
    if cpus:
        watched = sorted(set(cpus) | set(server.cpus if server is not None and server.cpus else ()))
    server_cpu, foreign_cpu, steal_cpu = sampler.rates(watched, sum(generator_cpu))
    first_error = next((r.first_error for r in results if r.first_error), "")
    model = server.model if server is not None else None
    workers = server.workers if server is not None else None
    name = label or (server.label if server is not None else str(target))
    warnings = _warnings(
        spec, throughput, generator_cpu, server, server_cpu, failed, window, foreign_cpu, steal_cpu
    )
    meta = collect_metadata(
        model=model,
        label=name,
        workers=workers,
        payload=spec.size,
        connections=spec.connections,
        pipeline=spec.pipeline,
        mode=spec.mode,
        rate=spec.rate,
        generator_processes=len(results),
        generator_cpus=list(cpus) if cpus else None,
        server_cpus=list(server.cpus) if server is not None and server.cpus else None,
        **metadata,
    )
    return RunResult(
        label=name,
        model=model,
        workers=workers,
        target=str(target),
        mode=spec.mode,
        connections=spec.connections,
        size=spec.size,
        pipeline=spec.pipeline,
        processes=len(results),
        requested_rate=spec.rate,
        throughput=throughput,
        window=window,
        warmup=spec.warmup,
        completed=sum(r.completed for r in results),
        sent=sum(r.sent for r in results),
        timeouts=sum(r.timeouts for r in results),
        errors=errors,
        connect_failed=failed,
        connections_lost=sum(r.lost for r in results),
        latency=summarize(latency),
        service=summarize(service) if service is not None else None,
        histogram=encode_histogram(latency),
        service_histogram=encode_histogram(service) if service is not None else "",
        generator_cpu=generator_cpu,
        server_cpu=server_cpu,
        server_cpu_limit=server.cpu_limit if server is not None else None,
        warnings=warnings,
        first_error=first_error,
        metadata=meta,
        repeat=repeat,
        foreign_cpu=foreign_cpu,
        steal_cpu=steal_cpu,
    )


def _warnings(
    spec: LoadSpec,
    throughput: float,
    generator_cpu: list[float],
    server: BenchServer | None,
    server_cpu: float | None,
    failed: int,
    window: float,
    foreign_cpu: float | None,
    steal_cpu: float | None,
) -> list[str]:
    out = []
    busiest = max(generator_cpu, default=0.0)
    server_busy = (
        server_cpu is not None and server is not None and server_cpu >= 0.9 * server.cpu_limit
    )
    if busiest >= GENERATOR_SATURATED:
        tail = (
            "; the server was saturated too"
            if server_busy
            else ": it, not the server, may be the bottleneck"
        )
        out.append(
            f"the generator is saturated (a generator process used {busiest:.0%} of a core)"
            f"{tail}. Give it more CPUs or processes (--processes), or fewer connections "
            "per process."
        )
    if spec.rate is not None and window > 0 and throughput < 0.95 * spec.rate:
        out.append(
            f"achieved {throughput:,.0f} requests/s of the {spec.rate:,.0f} requested: the "
            "server (or the generator) cannot keep up, and latencies include the queue."
        )
    if failed:
        out.append(f"{failed} of {spec.connections} connects failed")
    if foreign_cpu is not None and foreign_cpu >= FOREIGN_CPU_BUSY:
        out.append(
            f"the machine was busy: other programs used about {foreign_cpu:.2f} cores of the "
            "bench's CPUs during the run, so these figures are low; rerun when it is quiet "
            "(or use --repeat and look at the spread)"
        )
    if steal_cpu is not None and steal_cpu >= STEAL_CPU_WARN:
        out.append(f"the hypervisor took {steal_cpu:.2f} cores of CPU time (steal) during the run")
    if window == 0:
        out.append("nothing was measured: every connection ended before the window began")
    if sys.platform != "linux":  # pragma: no cover - duplex targets Linux
        out.append("CPU pinning and CPU measurements need Linux")
    return out
