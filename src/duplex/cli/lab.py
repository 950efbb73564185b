"""``duplex lab``: settle the classic claims about sockets by experiment.

Thin: each subcommand runs one experiment of :mod:`duplex.lab` and prints its
result as text or JSON; ``all`` runs them in turn and writes the report.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

import click

from duplex.cli._common import DuplexGroup
from duplex.lab.common import Experiment
from duplex.lab.registry import get_experiment, names
from duplex.lab.report import load_results, machine_facts, merge_results, run_all, write_report
from duplex.lab.result import format_text

__all__ = ["lab"]


@click.group(cls=DuplexGroup)
def lab() -> None:
    """Experiments that settle the classic claims about sockets, on this machine's kernel.

    Each runs a bounded experiment on loopback and prints the claim, the method, the
    numbers and a verdict derived from them: holds, folklore, or depends (on what).

    \b
    Examples:
      duplex lab backlog                     one experiment
      duplex lab one-port --json             its result as JSON
      duplex lab backlog --plot backlog.png  and a plot
      duplex lab all --report docs           all of them, a Markdown report with plots
    """


def _overrides(pairs: tuple[str, ...]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        result[key.strip()] = value.strip()
    return result


def _check_plot_path(path: str | None) -> None:
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise click.BadParameter(f"directory {directory} does not exist", param_hint="--plot")
    if not path.lower().endswith(".png"):
        raise click.BadParameter(f"{path} should end in .png", param_hint="--plot")


def _progress(quiet: bool) -> Any:
    def show(line: str) -> None:
        if not quiet:
            click.echo(line, err=True)

    return show


def _params_help(experiment: Experiment[Any]) -> str:
    lines = []
    for field in dataclasses.fields(experiment.full):
        full = getattr(experiment.full, field.name)
        quick = getattr(experiment.quick, field.name)
        shown = f"{full}" if full == quick else f"{full} (--quick: {quick})"
        lines.append(f"  {field.name.replace('_', '-'):<16} {shown}")
    return "\n".join(lines)


def _make_command(name: str) -> click.Command:
    experiment = get_experiment(name)

    @click.command(
        name,
        help=f"Claim: {experiment.claim}\n\n{experiment.title}: run the experiment and print "
        "the claim, the method, the measurements and the verdict.",
        epilog="\b\nParameters (--set KEY=VALUE):\n" + _params_help(experiment) + "\n\n"
        "\b\nExamples:\n"
        f"  duplex lab {name}\n"
        f"  duplex lab {name} --quick --json\n"
        f"  duplex lab {name} --plot {name}.png",
    )
    @click.option("--quick", is_flag=True, help="Run at the small scale the tests use.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @click.option("--plot", metavar="FILE.png", default=None, help="Draw the result into a PNG.")
    @click.option(
        "--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override a parameter."
    )
    @click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
    def command(
        quick: bool, as_json: bool, plot: str | None, settings: tuple[str, ...], quiet: bool
    ) -> None:
        _check_plot_path(plot)
        params = experiment.params(quick, _overrides(settings))
        result = experiment.run(params, _progress(quiet))
        if plot is not None:
            experiment.plot(result, plot)
        if as_json:
            click.echo(result.to_json())
        else:
            click.echo(format_text(result))
            if plot is not None:
                click.echo(f"plot     {plot}")

    return command


for _name in names():
    lab.add_command(_make_command(_name))


@lab.command(
    "all",
    epilog="\b\nExamples:\n"
    "  duplex lab all --report docs            docs/lab-report.md and docs/lab/*.png\n"
    "  duplex lab all --quick --report /tmp/r  every experiment at small scale\n"
    "  duplex lab all --only backlog,lifecycle --json\n"
    "  duplex lab all --report docs --update --only fork-refcount",
)
@click.option(
    "--report",
    "report_dir",
    metavar="DIR",
    default=None,
    help="Write DIR/lab-report.md, with plots and results.json in DIR/lab/.",
)
@click.option("--quick", is_flag=True, help="Run every experiment at its small scale.")
@click.option("--only", default=None, metavar="A,B", help="Run only these experiments.")
@click.option(
    "--update",
    is_flag=True,
    help="With --report: keep the report's other results, replace those run now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON lines.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def all_cmd(
    report_dir: str | None,
    quick: bool,
    only: str | None,
    update: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Run every experiment in turn; with --report, write a Markdown report with plots.

    One experiment failing does not stop the others; the exit status is 1 if any failed.
    The full run includes one-port, which opens more than 65,535 connections and takes
    a few minutes.
    """
    selected = None
    if only:
        selected = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in selected if n not in names()]
        if unknown:
            raise click.BadParameter(
                f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(names())}",
                param_hint="--only",
            )
    if update and report_dir is None:
        raise click.BadParameter("--update needs --report DIR", param_hint="--update")
    earlier: list[Any] = []
    if update:
        assert report_dir is not None
        earlier, _ = load_results(report_dir)
    plot_dir = None
    if report_dir is not None:
        plot_dir = os.path.join(report_dir, "lab")
        try:
            os.makedirs(plot_dir, exist_ok=True)
        except OSError as exc:
            raise click.ClickException(f"cannot create {plot_dir}: {exc.strerror}") from exc

    def show(result: Any) -> None:
        if as_json:
            click.echo(result.to_json())
        else:
            click.echo(format_text(result) + "\n")
        sys.stdout.flush()

    start = time.monotonic()
    facts = machine_facts()
    results, failures = run_all(
        selected, quick=quick, plot_dir=plot_dir, progress=_progress(quiet), on_result=show
    )
    if report_dir is not None:
        elapsed = time.monotonic() - start
        if update:
            results = merge_results(earlier, results)
            elapsed = sum(r.elapsed for r in results)
        path = write_report(report_dir, results, failures, facts, quick=quick, elapsed=elapsed)
        click.echo(f"report: {path}", err=True)
    if failures:
        raise click.ClickException(
            f"{len(failures)} experiment(s) failed: "
            + "; ".join(f"{k}: {v}" for k, v in failures.items())
        )
