"""``benchmarks/echo_throughput.py`` (issue #2's benchmark) through a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from duplex.server.base import model_names

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "echo_throughput.py"
SHORT = ["--duration", "0.3", "--warmup", "0", "--timeout", "0.5"]


def script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_one_model() -> None:
    done = script("--model", "epoll", "-c", "4", "--size", "128", *SHORT)
    assert done.returncode == 0, done.stderr
    assert "epoll      c=4    128 B" in done.stdout
    assert "requests/s" in done.stdout
    assert "p50" in done.stdout and "p99" in done.stdout


def test_bad_model_is_one_line() -> None:
    done = script("--model", "nosuch")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "echo_throughput: unknown model 'nosuch'; choose one of: " + ", ".join(model_names())
    ]


@pytest.mark.slow
def test_all_models(tmp_path: Path) -> None:
    csv_path = tmp_path / "all.csv"
    done = script("--all-models", *SHORT, "--csv", str(csv_path), timeout=600)
    assert done.returncode == 0, done.stderr
    table = done.stdout.split("\n\n", 1)[1]
    for model in model_names():
        for conns in (1, 10, 100):
            assert any(
                line.split()[:3] == [model, str(conns), "64"] for line in table.splitlines()
            ), (model, conns, done.stdout)
    assert len(csv_path.read_text().splitlines()) == 1 + 3 * len(model_names())
