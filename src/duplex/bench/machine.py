"""Is the machine quiet? CPU time of whole CPUs, from ``/proc/stat``; and of processes.

A bench pins the server and the generator to CPUs, and measures the CPU time its
own processes use. ``/proc/stat`` says how busy those CPUs were *in all* over the
same window; the difference is what other programs took from the run (on a shared
machine, someone's test suite), and ``steal`` is what the hypervisor took. Either
makes the run's figures smaller than the machine's, and the report says so.

Soft-interrupt time (the kernel's TCP processing of loopback traffic) is accounted
apart in ``/proc/stat`` when the kernel has IRQ time accounting, and is not counted
as anyone's here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

__all__ = [
    "CpuTimes",
    "busy_between",
    "process_cpu_seconds",
    "read_cpu_times",
    "thread_cpu_seconds",
]

_TICK = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


@dataclasses.dataclass(frozen=True, slots=True)
class CpuTimes:
    """Seconds one CPU spent, cumulative since boot."""

    busy: float
    """user + nice + system: time some task ran (ours or someone else's)."""
    steal: float
    """Time the hypervisor gave this virtual CPU's slot to another guest."""


def process_cpu_seconds(pid: int, *, descendants: bool = False) -> float:
    """User + system CPU seconds of process ``pid``, all its threads.

    With ``descendants``, also those of the processes it made: the live ones, and
    through ``pid``'s ``children_*`` times the ones it already reaped (the fork model
    reaps each connection's child). A descendant that ends meanwhile is skipped.

    Raises:
        psutil.Error: ``pid`` is gone or cannot be read.
    """
    import psutil

    root = psutil.Process(pid)
    times = root.cpu_times()
    total = times.user + times.system
    if descendants:
        total += times.children_user + times.children_system
        for child in root.children(recursive=True):
            try:
                t = child.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
    return float(total)


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU seconds of each thread of ``pid`` and of its live
    descendants, summed by the threads' names (their ``comm``, which the hub's store
    sets: ``duplex-journal``, ``duplex-tables``, ``duplex-read``, ``duplex-applier``);
    ``pid``'s main thread is ``"main"``. Threads that end meanwhile are skipped.

    Raises:
        psutil.Error: ``pid`` is gone or cannot be read.
    """
    import psutil

    pids = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    out: dict[str, float] = {}
    for owner in pids:
        try:
            tasks = os.listdir(f"/proc/{owner}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{owner}/task/{task}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(task) == pid:
                name = "main"
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return out


def read_cpu_times(path: str = "/proc/stat") -> dict[int, CpuTimes]:
    """Returns the cumulative times of each CPU, or an empty dict where unreadable."""
    out: dict[int, CpuTimes] = {}
    try:
        with open(path) as fh:
            lines = fh.readlines()
    except OSError:
        return out
    for line in lines:
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        fields = line.split()
        try:
            cpu = int(fields[0][3:])
            values = [int(v) for v in fields[1:]]
        except ValueError:
            continue
        user, nice, system = values[0], values[1], values[2]
        steal = values[7] if len(values) > 7 else 0
        out[cpu] = CpuTimes((user + nice + system) / _TICK, steal / _TICK)
    return out


def busy_between(
    before: dict[int, CpuTimes], after: dict[int, CpuTimes], cpus: Iterable[int] | None = None
) -> tuple[float, float] | None:
    """Returns the CPU seconds (busy, stolen) of ``cpus`` between two samples.

    Args:
        before: an earlier :func:`read_cpu_times`.
        after: a later one.
        cpus: the CPUs to add up (None: all).

    Returns:
        ``(busy, steal)`` seconds, or None when a sample lacks one of the CPUs.
    """
    wanted = list(cpus) if cpus is not None else list(after)
    busy = steal = 0.0
    for cpu in wanted:
        if cpu not in before or cpu not in after:
            return None
        busy += after[cpu].busy - before[cpu].busy
        steal += after[cpu].steal - before[cpu].steal
    return busy, steal
