"""What a run measured, the summary of repeated runs, and the metadata of the machine.

A :class:`RunResult` is everything one run reports (and everything the JSON, CSV and
plots are made from). :class:`RepeatSummary` is the median and spread of ``--repeat``
runs of the same configuration: on a shared machine one run is an anecdote, and the
spread says how far any single figure can be trusted.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duplex

__all__ = [
    "FOREIGN_CPU_BUSY",
    "GENERATOR_SATURATED",
    "SERVER_SATURATED",
    "UNSTABLE_SPREAD",
    "RepeatSummary",
    "RunResult",
    "collect_metadata",
    "git_revision",
    "summarize_repeats",
]

GENERATOR_SATURATED = 0.90
"""A generator process using this share of a core or more is the bottleneck."""

SERVER_SATURATED = 0.90
"""A server using this many cores per core it may use is saturated."""

FOREIGN_CPU_BUSY = 0.15
"""Cores of the bench's CPUs used by other programs (or stolen) that make a run doubtful."""

UNSTABLE_SPREAD = 0.10
"""Repeated runs whose throughput spread ((max - min) / median) exceeds this are
flagged unstable."""


@dataclasses.dataclass(frozen=True, slots=True)
class RunResult:
    """What one load run measured. Latencies are in milliseconds.

    Attributes:
        label: what was loaded: a model name, ``c-epoll`` or a target address.
        model: the server model when the bench started it, else None.
        workers: the server's worker count when known.
        target: ``host:port``.
        mode: ``closed`` or ``open``.
        connections: connections asked for.
        size: bytes per request.
        pipeline: requests in flight per connection (its limit in the open loop).
        processes: generator processes.
        requested_rate: the open loop's rate (None: as fast as it goes).
        throughput: checked echoes per second during the measured window.
        window: seconds measured.
        warmup: seconds of warm-up, not measured.
        completed: measured requests answered and checked.
        sent: measured requests sent (scheduled, in the open loop).
        timeouts: requests with no echo in time.
        errors: failed requests by kind (``mismatch``, ``closed``, ``reset``, ...).
        connect_failed: connects that failed or timed out.
        connections_lost: connections that ended early.
        latency: min, mean, p50, p90, p99, p99.9, max; from the scheduled time in the
            open loop.
        service: the same from the actual send (open loop only), else None.
        histogram: the latency histogram, encoded (µs).
        service_histogram: the service-time histogram, encoded (µs), or "".
        generator_cpu: CPU share of a core used by each generator process.
        server_cpu: cores the server used, when the bench started it.
        server_cpu_limit: cores the server may use (its affinity), when known.
        warnings: what makes these figures doubtful.
        first_error: the first error seen, in words.
        metadata: machine, versions, revision, time.
        repeat: the run's number in a ``--repeat`` series, from 1.
        foreign_cpu: cores of the bench's CPUs that other programs used meanwhile.
        steal_cpu: cores the hypervisor took (steal) from the bench's CPUs meanwhile.
    """

    label: str
    model: str | None
    workers: int | None
    target: str
    mode: str
    connections: int
    size: int
    pipeline: int
    processes: int
    requested_rate: float | None
    throughput: float
    window: float
    warmup: float
    completed: int
    sent: int
    timeouts: int
    errors: dict[str, int]
    connect_failed: int
    connections_lost: int
    latency: dict[str, float]
    service: dict[str, float] | None
    histogram: str
    service_histogram: str
    generator_cpu: list[float]
    server_cpu: float | None
    server_cpu_limit: int | None
    warnings: list[str]
    first_error: str
    metadata: dict[str, Any]
    repeat: int = 1
    foreign_cpu: float | None = None
    steal_cpu: float | None = None

    @property
    def error_count(self) -> int:
        """Failed requests of every kind (timeouts and failed connects apart)."""
        return sum(self.errors.values())

    @property
    def efficiency(self) -> float | None:
        """Requests per second of server CPU time; None when the server's CPU is unknown.

        Unlike the throughput, this does not depend on whether the generator kept the
        server busy, so it compares models fairly when the generator is the bottleneck.
        """
        if not self.server_cpu or self.server_cpu <= 0:
            return None
        return self.throughput / self.server_cpu

    @property
    def generator_saturated(self) -> bool:
        """True when a generator process used :data:`GENERATOR_SATURATED` of a core."""
        return any(c >= GENERATOR_SATURATED for c in self.generator_cpu)

    @property
    def server_saturated(self) -> bool | None:
        """True when the server used nearly all the cores it may use; None if unknown."""
        if self.server_cpu is None or not self.server_cpu_limit:
            return None
        return self.server_cpu >= SERVER_SATURATED * self.server_cpu_limit

    @property
    def machine_busy(self) -> bool:
        """True when other programs used :data:`FOREIGN_CPU_BUSY` cores or more of the
        bench's CPUs during the run (or the hypervisor stole as much)."""
        return (self.foreign_cpu or 0.0) + (self.steal_cpu or 0.0) >= FOREIGN_CPU_BUSY

    @property
    def clean(self) -> bool:
        """True when nothing failed: no error, timeout, failed connect or lost connection."""
        return not (
            self.error_count or self.timeouts or self.connect_failed or self.connections_lost
        )

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict (histograms included, encoded)."""
        out = dataclasses.asdict(self)
        out["error_count"] = self.error_count
        out["efficiency"] = self.efficiency
        out["machine_busy"] = self.machine_busy
        out["generator_saturated"] = self.generator_saturated
        out["server_saturated"] = self.server_saturated
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """Rebuilds a result from :meth:`to_dict` output (e.g. a JSON file)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass(frozen=True, slots=True)
class RepeatSummary:
    """The median and spread of repeated runs of one configuration.

    Attributes:
        label: what was loaded.
        connections: connections per run.
        size: bytes per request.
        runs: how many runs.
        throughput: median throughput (requests/s).
        throughput_min: the lowest run's throughput.
        throughput_max: the highest run's throughput.
        spread: (max - min) / median of the throughput.
        latency: the median of each latency statistic over the runs (ms).
        stable: False when ``spread`` exceeds :data:`UNSTABLE_SPREAD`.
    """

    label: str
    connections: int
    size: int
    runs: int
    throughput: float
    throughput_min: float
    throughput_max: float
    spread: float
    latency: dict[str, float]
    stable: bool

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict."""
        return dataclasses.asdict(self)


def summarize_repeats(results: Sequence[RunResult]) -> RepeatSummary:
    """Returns the median and spread of runs of one configuration.

    Args:
        results: one or more runs with the same label, connections and size.

    Raises:
        ValueError: ``results`` is empty.
    """
    if not results:
        raise ValueError("no runs to summarize")
    rates = [r.throughput for r in results]
    median = statistics.median(rates)
    spread = (max(rates) - min(rates)) / median if median > 0 else 0.0
    keys = results[0].latency.keys()
    latency = {k: statistics.median(r.latency.get(k, 0.0) for r in results) for k in keys}
    first = results[0]
    return RepeatSummary(
        label=first.label,
        connections=first.connections,
        size=first.size,
        runs=len(results),
        throughput=median,
        throughput_min=min(rates),
        throughput_max=max(rates),
        spread=spread,
        latency=latency,
        stable=spread <= UNSTABLE_SPREAD,
    )


def git_revision(path: Path | None = None) -> str | None:
    """Returns the short git revision of the duplex checkout (``+dirty`` if modified).

    Args:
        path: a directory inside the repository; by default the one holding duplex.

    Returns:
        The revision, or None outside a git checkout or without git.
    """
    where = path or Path(duplex.__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}+dirty" if dirty else rev or None


def _uvloop_version() -> str | None:
    try:
        return importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        return None


def collect_metadata(**extra: Any) -> dict[str, Any]:
    """Returns what a report needs to be reproduced and compared.

    Args:
        extra: fields to add (model, workers, payload, connections, CPU pinning, ...).

    Returns:
        Python, uvloop, CPU count and model, kernel, git revision, UTC time, and
        ``extra``.
    """
    meta: dict[str, Any] = {
        "duplex": duplex.__version__,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "uvloop": _uvloop_version(),
        "cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "system": platform.system(),
        "machine": platform.machine(),
        "git": git_revision(),
        "utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "argv": list(sys.argv),
    }
    meta.update(extra)
    return meta


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
