"""``duplex lab`` through click: JSON, plots, the report, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from duplex.cli.lab import lab
from duplex.lab.registry import names


def test_one_experiment_as_json_with_a_plot(tmp_path: Path) -> None:
    plot = tmp_path / "pair.png"
    result = CliRunner().invoke(
        lab,
        ["socket-pair", "--quick", "--json", "--quiet", "--plot", str(plot)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["name"] == "socket-pair" and data["verdict"] == "holds"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_output_names_claim_method_and_verdict() -> None:
    result = CliRunner().invoke(lab, ["lifecycle", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith("claim ") and lines[1].startswith("method ")
    assert any(line.startswith("verdict  HOLDS") for line in lines)


def test_all_writes_a_report_with_plots(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        lab,
        [
            "all",
            "--quick",
            "--only",
            "lifecycle,socket-pair",
            "--report",
            str(tmp_path),
            "--quiet",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    verdicts = [json.loads(line)["verdict"] for line in result.stdout.splitlines()]
    assert verdicts == ["holds", "holds"]
    report = (tmp_path / "lab-report.md").read_text()
    assert "| [lifecycle](#lifecycle) |" in report
    assert "![socket-pair](lab/socket-pair.png)" in report
    assert (tmp_path / "lab" / "lifecycle.png").exists()
    saved = json.loads((tmp_path / "lab" / "results.json").read_text())
    assert [r["name"] for r in saved["results"]] == ["lifecycle", "socket-pair"]
    assert saved["machine"]["somaxconn"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backlog", "--set", "nope=1"], "unknown parameter 'nope'"),
        (["backlog", "--set", "extra=many"], "cannot read 'many' as int"),
        (["backlog", "--set", "extra"], "expected KEY=VALUE"),
        (["backlog", "--plot", "/no/such/dir/x.png"], "does not exist"),
        (["backlog", "--plot", "x.svg"], "should end in .png"),
        (["all", "--only", "nope"], "unknown experiment(s) nope"),
        (["threads-vs-cpus", "--set", "works=juggle"], "unknown work 'juggle'"),
        (["one-port", "--set", "connections=100000", "--set", "clients=2"], "open-files limit"),
        (["one-port", "--set", "first_source=10.0.0.1"], "127.0.0.0/8"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args: list[str], message: str) -> None:
    result = CliRunner().invoke(lab, [*args, "--quiet"] if args[0] != "all" else args)
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0], result.output


@pytest.mark.parametrize("command", [*names(), "all"])
def test_help_has_an_example(command: str) -> None:
    result = CliRunner().invoke(lab, [command, "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output
    assert f"duplex lab {command}" in result.output


def test_update_reruns_one_experiment_into_an_existing_report(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(
        lab, ["all", "--quick", "--only", "lifecycle", "--report", str(tmp_path), "-q"]
    )
    assert first.exit_code == 0, first.output
    second = runner.invoke(
        lab,
        ["all", "--quick", "--only", "socket-pair", "--report", str(tmp_path), "--update", "-q"],
    )
    assert second.exit_code == 0, second.output
    report = (tmp_path / "lab-report.md").read_text()
    assert "## lifecycle" in report and "## socket-pair" in report
    assert report.index("## socket-pair") < report.index("## lifecycle")  # report order kept
    alone = runner.invoke(lab, ["all", "--update", "--only", "lifecycle"])
    assert alone.exit_code != 0 and "--update needs --report" in alone.output
