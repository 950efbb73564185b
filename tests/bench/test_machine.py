"""CPU times of whole CPUs, from /proc/stat."""

from __future__ import annotations

from pathlib import Path

from duplex.bench.machine import CpuTimes, busy_between, read_cpu_times

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
