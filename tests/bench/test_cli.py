"""``duplex bench`` through click (until the group is registered on ``duplex``)."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from duplex.cli.bench import bench

from .controlled import ControlledEchoServer

Make = Callable[..., ControlledEchoServer]

SHORT = ["--duration", "0.3", "--warmup", "0", "--processes", "1"]


def run(*args: str) -> Result:
    return CliRunner().invoke(bench, list(args), prog_name="duplex bench")


def test_help_has_examples() -> None:
    for args in ([], ["echo"], ["matrix"]):
        result = run(*args, "--help")
        assert result.exit_code == 0, result.output
        assert "Examples:" in result.output


def test_echo_against_a_target_writes_every_output(controlled: Make, tmp_path: Path) -> None:
    server = controlled()
    out = {name: tmp_path / name for name in ("r.json", "r.csv", "r.hgrm", "r.png")}
    args = ["echo", "--target", str(server.target), "-c", "2", *SHORT]
    args += ["--json", str(out["r.json"]), "--csv", str(out["r.csv"])]
    args += ["--hgrm", str(out["r.hgrm"]), "--plot", str(out["r.png"])]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "====== echo 127.0.0.1:" in result.output
    assert "throughput summary:" in result.output
    doc = json.loads(out["r.json"].read_text())
    assert doc["runs"][0]["connections"] == 2
    assert doc["runs"][0]["completed"] > 0
    assert "Percentile" in out["r.hgrm"].read_text()
    assert out["r.png"].read_bytes()[:4] == b"\x89PNG"
    # A second run appends a row, not a second header.
    assert run(*args).exit_code == 0
    with open(out["r.csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2


def test_echo_several_connection_counts_and_repeats(controlled: Make) -> None:
    server = controlled()
    args = ["echo", "-t", str(server.target), "-c", "1,2", "--repeat", "2", *SHORT]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.output.count("2 runs ======") == 2
    assert "spread" in result.output
    assert "requests/s" in result.output  # the table


def test_echo_open_loop(controlled: Make) -> None:
    server = controlled()
    result = run("echo", "-t", str(server.target), "-c", "2", "--rate", "200", *SHORT)
    assert result.exit_code == 0, result.output
    assert "open loop at 200 requests/s" in result.output
    assert "service time" in result.output


def test_echo_starts_and_stops_a_model() -> None:
    result = run("echo", "--model", "epoll", "-c", "2", "--quiet", *SHORT)
    assert result.exit_code == 0, result.output
    assert "epoll" in result.output
    assert "requests/s" in result.output
    assert "======" not in result.output  # --quiet: only the table


@pytest.mark.skipif(not shutil.which("cc") and not shutil.which("gcc"), reason="no C compiler")
def test_echo_with_the_reference(tmp_path: Path) -> None:
    result = run("echo", "-m", "uvloop", "-c", "2", "--reference", "-q", *SHORT)
    assert result.exit_code == 0, result.output
    assert "c-epoll" in result.output
    assert "vs C" in result.output


def test_matrix_writes_csv_json_and_png(tmp_path: Path) -> None:
    prefix = tmp_path / "out" / "m"
    args = ["matrix", "--models", "epoll,thread", "-c", "1,2", "-s", "64", *SHORT]
    result = run(*args, "-o", str(prefix), "-q")
    assert result.exit_code == 0, result.output
    with open(f"{prefix}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["label"], r["connections"]) for r in rows] == [
        ("epoll", "1"), ("epoll", "2"), ("thread", "1"), ("thread", "2"),
    ]  # fmt: skip
    doc = json.loads(Path(f"{prefix}.json").read_text())
    assert len(doc["runs"]) == 4
    assert "matrix" in doc["command"] or doc["command"]
    assert Path(f"{prefix}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["echo"], "exactly one of --model or --target"),
        (["echo", "-m", "epoll", "-t", "127.0.0.1:1"], "exactly one of --model or --target"),
        (["echo", "-t", "nonsense"], "is not HOST:PORT"),
        (["echo", "-m", "nosuch"], "unknown model 'nosuch'"),
        (["echo", "-m", "epoll", "-c", "0"], "0 is below 1"),
        (["echo", "-m", "epoll", "-c", "x"], "'x' is not a whole number"),
        (["echo", "-m", "epoll", "--timeout", "0"], "--timeout"),
        (["matrix", "--models", "epoll,nosuch"], "unknown model 'nosuch'"),
        (["matrix", "--models", ","], "give at least one name"),
    ],
)
def test_bad_input_gets_a_one_line_reason(args: list[str], reason: str) -> None:
    result = run(*args)
    assert result.exit_code != 0
    assert reason in result.output
    assert "Traceback" not in result.output


def test_unreachable_target_is_one_line(tmp_path: Path) -> None:
    from duplex.testing.servers import free_port

    result = run("echo", "-t", f"127.0.0.1:{free_port()}", "-c", "1", "--timeout", "1", *SHORT)
    assert result.exit_code == 1
    assert "cannot load" in result.output
