"""Reports: text, CSV (appended, one header), JSON, .hgrm files, repeats and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from duplex.bench.histogram import LatencyRecorder, summarize
from duplex.bench.plot import plot_matrix, plot_runs
from duplex.bench.report import (
    CSV_FIELDS,
    append_csv,
    format_metadata,
    format_repeat,
    format_summary,
    format_table,
    hgrm_paths,
    reference_ratios,
    write_hgrm_files,
    write_json,
)
from duplex.bench.result import (
    RunResult,
    collect_metadata,
    git_revision,
    summarize_repeats,
)


def make(
    label: str = "epoll",
    connections: int = 10,
    throughput: float = 1000.0,
    size: int = 64,
    latency_ms: float = 1.0,
    **changes: Any,
) -> RunResult:
    rec = LatencyRecorder()
    for i in range(100):
        rec.record(latency_ms / 1000 * (1 + i / 100))
    encoded = rec.encoded()
    fields: dict[str, Any] = {
        "label": label,
        "model": label,
        "workers": None,
        "target": "127.0.0.1:1",
        "mode": "closed",
        "connections": connections,
        "size": size,
        "pipeline": 1,
        "processes": 1,
        "requested_rate": None,
        "throughput": throughput,
        "window": 1.0,
        "warmup": 0.0,
        "completed": 100,
        "sent": 100,
        "timeouts": 0,
        "errors": {},
        "connect_failed": 0,
        "connections_lost": 0,
        "latency": summarize(rec.hist),
        "service": None,
        "histogram": encoded,
        "service_histogram": "",
        "generator_cpu": [0.5],
        "server_cpu": 0.5,
        "server_cpu_limit": 1,
        "warnings": [],
        "first_error": "",
        "metadata": collect_metadata(model=label),
    }
    fields.update(changes)
    return RunResult(**fields)


def test_summary_in_the_redis_benchmark_style() -> None:
    text = format_summary(make(), ratio=0.5)
    assert text.startswith("====== echo epoll: 10 connections, 64 B ======")
    assert "100 requests completed in 1.00 seconds (closed loop, pipeline 1)" in text
    assert "throughput summary: 1,000.00 requests per second" in text
    assert "latency summary (msec" in text
    assert "p99.9" in text
    assert "vs the C reference: 0.50" in text
    assert "errors 0, timeouts 0, failed connects 0" in text


def test_summary_of_an_open_loop_with_errors_and_warnings() -> None:
    result = make(
        mode="open",
        requested_rate=2000.0,
        service={"min": 0.1, "mean": 0.2, "p50": 0.2, "p90": 0.3, "p99": 0.4, "p99.9": 0.5,
                 "max": 0.6},
        errors={"mismatch": 1},
        timeouts=2,
        connections_lost=1,
        first_error="echo differs at byte 3",
        warnings=["something doubtful"],
    )  # fmt: skip
    text = format_summary(result)
    assert "open loop at 2,000 requests/s" in text
    assert "achieved 50%" in text
    assert "service time" in text
    assert "errors 1 (mismatch 1), timeouts 2" in text
    assert "connections lost 1" in text
    assert "first error: echo differs at byte 3" in text
    assert "warning: something doubtful" in text
    assert not result.clean


def test_saturation_flags() -> None:
    busy = make(generator_cpu=[0.95], server_cpu=0.95)
    assert busy.generator_saturated and busy.server_saturated
    idle = make(generator_cpu=[0.2], server_cpu=0.2)
    assert not idle.generator_saturated and not idle.server_saturated
    assert make(server_cpu=None).server_saturated is None
    assert make(server_cpu=0.5).efficiency == pytest.approx(2000.0)
    assert make(server_cpu=None).efficiency is None


def test_ratios_to_the_reference() -> None:
    ref = make("c-epoll", throughput=2000.0, server_cpu=0.5)
    model = make("uvloop", throughput=1000.0, server_cpu=0.5)
    other = make("uvloop", connections=99, throughput=10.0)
    ratios = reference_ratios([ref, model, other], "c-epoll")
    assert ratios[id(ref)] == pytest.approx(1.0)
    assert ratios[id(model)] == pytest.approx(0.5)
    assert ratios[id(other)] is None
    cpu = reference_ratios([ref, model], "c-epoll", "efficiency")
    assert cpu[id(model)] == pytest.approx(0.5)
    table = format_table([ref, model, other], ratios, cpu)
    assert "vs C" in table and "CPU vs C" in table
    assert "0.50" in table


def test_table_marks_saturation() -> None:
    table = format_table([make(generator_cpu=[0.99], server_cpu=0.99)])
    assert "99%!" in table
    assert "! gen CPU" in table
    assert "vs C" not in table
    assert "other" not in table


def test_table_marks_a_busy_machine() -> None:
    quiet, busy = make(foreign_cpu=0.01), make(foreign_cpu=0.5, steal_cpu=0.0)
    assert not quiet.machine_busy and busy.machine_busy
    table = format_table([quiet, busy])
    assert "0.50!" in table
    assert "! other:" in table


def test_csv_is_appended_with_one_header(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    append_csv(path, [make(connections=1)])
    append_csv(path, [make(connections=10), make(connections=100)], {})
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["connections"] for r in rows] == ["1", "10", "100"]
    assert list(rows[0]) == list(CSV_FIELDS)
    assert path.read_text().count("utc,label") == 1
    assert float(rows[0]["p99_ms"]) > 0


def test_json_holds_everything(tmp_path: Path) -> None:
    runs = [make(repeat=1, throughput=1000.0), make(repeat=2, throughput=1200.0)]
    summary = summarize_repeats(runs)
    path = tmp_path / "out.json"
    write_json(path, runs, [summary], command="x")
    doc = json.loads(path.read_text())
    assert doc["command"] == "x"
    assert len(doc["runs"]) == 2
    assert doc["runs"][0]["histogram"].startswith("HIST")
    assert doc["summaries"][0]["runs"] == 2
    for key in ("python", "uvloop", "cpus", "kernel", "git", "utc"):
        assert key in doc["metadata"]
    back = RunResult.from_dict(doc["runs"][1])
    assert back.throughput == 1200.0


def test_repeats_give_median_and_spread() -> None:
    runs = [make(throughput=t) for t in (1000.0, 1050.0, 1100.0)]
    s = summarize_repeats(runs)
    assert s.throughput == 1050.0
    assert s.spread == pytest.approx(100 / 1050)
    assert s.stable
    assert "spread 9.5%" in format_repeat(s)
    shaky = summarize_repeats([make(throughput=t) for t in (1000.0, 1500.0, 800.0)])
    assert not shaky.stable
    assert "UNSTABLE" in format_repeat(shaky)
    with pytest.raises(ValueError, match="no runs"):
        summarize_repeats([])


def test_hgrm_files(tmp_path: Path) -> None:
    one = write_hgrm_files(tmp_path / "lat.hgrm", [make()])
    assert one == [tmp_path / "lat.hgrm"]
    assert "Percentile" in one[0].read_text()
    runs = [make(connections=1), make(connections=10)]
    assert [p.name for p in hgrm_paths(tmp_path / "lat.hgrm", runs)] == [
        "lat-epoll-c1-s64.hgrm",
        "lat-epoll-c10-s64.hgrm",
    ]


def test_plots(tmp_path: Path) -> None:
    runs = [
        make(label, connections=c, throughput=c * 100.0, size=size)
        for label in ("c-epoll", "uvloop")
        for c in (1, 10, 100)
        for size in (64, 1024)
    ]
    single = plot_runs(runs[:1], tmp_path / "one.png", "one")
    several = plot_runs(runs, tmp_path / "several.png")
    matrix = plot_matrix(runs, tmp_path / "matrix.png", "matrix")
    for path in (single, several, matrix):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_git_revision_of_this_checkout() -> None:
    rev = git_revision()
    assert rev is None or len(rev.split("+")[0]) >= 7
    assert git_revision(Path("/")) is None


def test_metadata_block() -> None:
    meta = collect_metadata(server_cpus=[0], generator_cpus=[1])
    text = format_metadata(meta)
    assert text.startswith("Metadata:")
    assert f"Python {meta['python']}" in text
    assert "server on CPU 0, generator on CPU 1" in text
    assert meta["utc"] in text
    assert "not pinned" in format_metadata(collect_metadata())
