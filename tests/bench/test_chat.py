"""duplex bench chat: both paths measured end to end against a hub of its own."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from duplex.cli.bench import bench


def test_bench_chat_measures_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "chat.json"
    plot = tmp_path / "chat.png"
    cpus = os.sched_getaffinity(0)
    result = CliRunner().invoke(
        bench,
        [
            "chat",
            "--pairs",
            "2",
            "--window",
            "2",
            "-d",
            "0.6",
            "--warmup",
            "0.4",
            "--synchronous",
            "NORMAL",
            "--json",
            str(out),
            "--plot",
            str(plot),
            "--csv",
            str(tmp_path / "chat.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    # The command pins itself beside the hub while it runs, then lets go: run in-process
    # it once left the whole test session on one core.
    assert os.sched_getaffinity(0) == cpus
    runs = {r["path"]: r for r in json.loads(out.read_text())}
    assert set(runs) == {"relayed", "direct"}
    for run in runs.values():
        assert run["delivered"] > 0
        assert run["errors"] == 0  # every "direct" message really went direct
        assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["max"]
    assert plot.stat().st_size > 10_000
    lines = (tmp_path / "chat.csv").read_text().splitlines()
    assert lines[0].startswith("path,") and len(lines) == 3
    assert "relayed" in result.output and "direct" in result.output


def test_rate_needs_the_relayed_path() -> None:
    result = CliRunner().invoke(bench, ["chat", "--path", "direct", "--rate", "100"])
    assert result.exit_code == 2
    assert "--rate applies to the relayed path" in result.output
