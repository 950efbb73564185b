"""``benchmarks/store_commit.py``: the stores' durable writes per second, for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "store_commit.py"


@pytest.mark.parametrize("relay", [False, True], ids=["store", "relay"])
def test_every_sqlite_row_moves_messages(tmp_path: Path, relay: bool) -> None:
    args = ["-c", "8", "-r", "4", "-d", "0.3", "--no-pg", "--dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, *(["--relay"] if relay else [])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert ("store_message + 2 acks" in done.stderr) == relay
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("SQLite")]
    assert len(rows) == 4, done.stdout  # FULL and NORMAL, group commit and per message
    for row in rows:
        rate, per_commit, p50, p99, cpu = map(float, row[-5:])
        assert rate > 0 and per_commit > 0 and 0 < p50 <= p99 and cpu > 0, row
