"""CPU times of whole CPUs, from /proc/stat, and of processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from duplex.bench.machine import CpuTimes, busy_between, process_cpu_seconds, read_cpu_times

STAT = """cpu  100 0 50 1000 0 0 10 0 0 0
cpu0 60 0 30 500 0 0 5 2 0 0
cpu1 40 0 20 500 0 0 5 0 0 0
intr 1 2 3
"""


def test_reads_each_cpu(tmp_path: Path) -> None:
    path = tmp_path / "stat"
    path.write_text(STAT)
    times = read_cpu_times(str(path))
    assert set(times) == {0, 1}
    assert times[0].busy > times[1].busy
    assert times[0].steal > 0


def test_missing_file_gives_nothing(tmp_path: Path) -> None:
    assert read_cpu_times(str(tmp_path / "nope")) == {}


def test_busy_between() -> None:
    before = {0: CpuTimes(1.0, 0.0), 1: CpuTimes(2.0, 0.0)}
    after = {0: CpuTimes(1.5, 0.1), 1: CpuTimes(2.25, 0.0)}
    assert busy_between(before, after, [0]) == (0.5, 0.1)
    assert busy_between(before, after) == (0.75, 0.1)
    assert busy_between(before, after, [7]) is None


def test_this_machine() -> None:
    times = read_cpu_times()
    assert times, "Linux has /proc/stat"
    assert all(t.busy >= 0 for t in times.values())


# A child that burns about 0.3 s of CPU, says so, then waits to be told to go.
BURN = """import sys, time
t = time.process_time()
while time.process_time() - t < 0.3:
    pass
print(1, flush=True)
sys.stdin.read()
"""


def test_process_cpu_seconds_counts_descendants_live_and_reaped() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "1\n"
        own = process_cpu_seconds(os.getpid())
        theirs = process_cpu_seconds(child.pid)
        assert theirs >= 0.25
        assert process_cpu_seconds(os.getpid(), descendants=True) >= own + theirs - 0.01
        child.stdin.close()
    # Reaped now: counted through this process's children_* times.
    assert process_cpu_seconds(os.getpid(), descendants=True) >= own + 0.25
    with pytest.raises(psutil.Error):
        process_cpu_seconds(child.pid)
