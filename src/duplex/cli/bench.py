"""``duplex bench``: load tests with percentiles, JSON/CSV/.hgrm output and plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from duplex.cli._common import DuplexGroup

__all__ = ["bench"]


def _int_list(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[int]:
    """Parses ``-c 1,10 -c 100`` into ``[1, 10, 100]`` (positive, without repeats)."""
    out: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                number = int(part)
            except ValueError:
                raise click.BadParameter(f"{part!r} is not a whole number") from None
            if number < 1:
                raise click.BadParameter(f"{number} is below 1")
            if number not in out:
                out.append(number)
    return out


def _name_list(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    """Parses ``a,b,c`` into names."""
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise click.BadParameter("give at least one name")
    return names


@click.group(cls=DuplexGroup)
def bench() -> None:
    """Load tests people can trust: percentiles, no coordinated omission, plots.

    \b
    Examples:
      duplex bench echo --model uvloop -c 100              one model, 100 connections
      duplex bench echo --target 127.0.0.1:7007 --rate 20000   any echo server, open loop
      duplex bench matrix --models epoll,uvloop -c 1,10,100 --reference
      duplex bench chat --pairs 100 --window 32               messenger: relayed and direct
    """


def _load_options(func: Any) -> Any:
    options = [
        click.option(
            "--connections",
            "-c",
            "connections",
            multiple=True,
            callback=_int_list,
            metavar="N[,N...]",
            help="Connections; several (1,10,100) give one run each.  [default: 10]",
        ),
        click.option(
            "--size",
            "-s",
            "sizes",
            multiple=True,
            callback=_int_list,
            metavar="BYTES[,...]",
            help="Payload bytes per request; several give one run each.  [default: 64]",
        ),
        click.option(
            "--pipeline",
            "-P",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Requests in flight per connection (the open loop's limit per connection).",
        ),
        click.option(
            "--rate",
            "-r",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Open loop: requests/s in all, on a fixed schedule; latency from the "
            "scheduled time. Without it: closed loop.",
        ),
        click.option(
            "--duration",
            "-d",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Seconds measured after the warm-up.  [default: 5, or none with --requests]",
        ),
        click.option(
            "--requests",
            "-n",
            type=click.IntRange(min=1),
            default=None,
            help="Measured requests in all; the run ends when they are answered.",
        ),
        click.option(
            "--warmup",
            type=click.FloatRange(min=0),
            default=1.0,
            show_default=True,
            help="Seconds of load before measuring (not in the results).",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=5.0,
            show_default=True,
            help="Seconds a request or a connect may take; then it counts as a timeout.",
        ),
        click.option(
            "--processes",
            "-p",
            type=click.IntRange(min=0),
            default=0,
            help="Generator processes.  [default: one per generator CPU]",
        ),
        click.option(
            "--repeat",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Runs of each configuration; reports the median and the spread.",
        ),
        click.option(
            "--reference",
            is_flag=True,
            help="Also run the C epoll reference server (built with cc) and give ratios.",
        ),
        click.option(
            "--pin/--no-pin",
            default=True,
            show_default=True,
            help="Pin the server to CPU 0 and the generator to the others (2+ CPUs).",
        ),
        click.option("--quiet", "-q", is_flag=True, help="No live line and no per-run summaries."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _spec(
    *,
    pipeline: int,
    rate: float | None,
    duration: float | None,
    requests: int | None,
    warmup: float,
    timeout: float,
    processes: int,
    default_duration: float = 5.0,
) -> Any:
    from duplex.bench.spec import LoadSpec

    if duration is None and requests is None:
        duration = default_duration
    return LoadSpec(
        pipeline=pipeline,
        rate=rate,
        duration=duration,
        requests=requests,
        warmup=warmup,
        timeout=timeout,
        processes=processes,
    )


def _finish(
    results: Sequence[Any],
    *,
    repeat: int,
    quiet: bool,
    json_path: str | None,
    csv_path: str | None,
    hgrm_path: str | None,
    plot_path: str | None,
    plot_kind: str,
    title: str,
    extra: dict[str, Any] | None = None,
) -> None:
    from duplex.bench import report
    from duplex.bench.result import summarize_repeats
    from duplex.bench.servers import REFERENCE_LABEL

    if not results:
        raise click.ClickException("no run succeeded")
    ratios = report.reference_ratios(results, REFERENCE_LABEL)
    cpu_ratios = report.reference_ratios(results, REFERENCE_LABEL, "efficiency")
    summaries = []
    if repeat > 1:
        groups: dict[tuple[str, int, int], list[Any]] = {}
        for r in results:
            groups.setdefault((r.label, r.connections, r.size), []).append(r)
        summaries = [summarize_repeats(group) for group in groups.values()]
        for summary in summaries:
            click.echo(report.format_repeat(summary))
            click.echo()
    if len(results) > 1 or quiet:
        click.echo(report.format_table(results, ratios, cpu_ratios))
        click.echo()
    click.echo(report.format_metadata(results[0].metadata))
    if json_path:
        report.write_json(json_path, results, summaries, ratios, **(extra or {}))
    if csv_path:
        report.append_csv(csv_path, results, ratios)
    if hgrm_path:
        report.write_hgrm_files(hgrm_path, results)
    if plot_path:
        from duplex.bench import plot

        if plot_kind == "matrix":
            plot.plot_matrix(results, plot_path, title)
        else:
            plot.plot_runs(results, plot_path, title)
    written = [p for p in (json_path, csv_path, plot_path) if p]
    if hgrm_path:
        written.append(f"{hgrm_path} (.hgrm)")
    if written and not quiet:
        click.echo(f"wrote {', '.join(written)}")


def _on_result(quiet: bool) -> Any:
    from duplex.bench import report

    def show(result: Any) -> None:
        if not quiet:
            click.echo(report.format_summary(result))
            click.echo()

    return show


def _on_error(title: str, exc: Exception) -> None:
    click.echo(f"error: {title}: {exc}", err=True)


def _output_options(func: Any) -> Any:
    func = click.option(
        "--plot", "plot_path", metavar="FILE.png", default=None, help="Draw the results (PNG)."
    )(func)
    func = click.option(
        "--hgrm",
        "hgrm_path",
        metavar="FILE",
        default=None,
        help="HdrHistogram percentile distribution (one file per run).",
    )(func)
    func = click.option(
        "--csv",
        "csv_path",
        metavar="FILE",
        default=None,
        help="Append one row per run (header written once).",
    )(func)
    func = click.option(
        "--json", "json_path", metavar="FILE", default=None, help="Write every result as JSON."
    )(func)
    return func


@bench.command(
    "echo",
    epilog="\b\nExamples:\n"
    "  duplex bench echo --model uvloop -c 100 -d 5\n"
    "  duplex bench echo --model prefork -w 2 -c 1,10,100 --reference --plot echo.png\n"
    "  duplex bench echo --target 127.0.0.1:7007 -c 50 --rate 20000 --hgrm lat.hgrm\n"
    "  duplex bench echo -m thread -c 100 -n 100000 --repeat 5 --csv runs.csv\n"
    "\n\b\nClosed loop (default): each connection sends, waits for the whole echo, checks\n"
    "every byte, sends again. Open loop (--rate): requests leave on a fixed schedule\n"
    "and latency counts from the scheduled time, so a server stall shows in it.",
)
@click.option("--model", "-m", default=None, help="Start this duplex model and load it.")
@click.option(
    "--target", "-t", default=None, metavar="HOST:PORT", help="Load a running echo server."
)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(min=1),
    default=None,
    help="pool threads / prefork processes of --model.",
)
@_load_options
@_output_options
def echo_cmd(
    model: str | None,
    target: str | None,
    workers: int | None,
    connections: list[int],
    sizes: list[int],
    pipeline: int,
    rate: float | None,
    duration: float | None,
    requests: int | None,
    warmup: float,
    timeout: float,
    processes: int,
    repeat: int,
    reference: bool,
    pin: bool,
    quiet: bool,
    json_path: str | None,
    csv_path: str | None,
    hgrm_path: str | None,
    plot_path: str | None,
) -> None:
    """Load an echo server and report throughput and latency percentiles.

    With --model the server is started in its own process (pinned to CPU 0 when
    there are two CPUs or more) and stopped after; with --target any RFC 862 echo
    server is loaded as it is.
    """
    from duplex.bench.live import LiveLine
    from duplex.bench.matrix import ServerChoice, run_series
    from duplex.bench.spec import parse_target

    if (model is None) == (target is None):
        raise click.UsageError("give exactly one of --model or --target")
    spec = _spec(
        pipeline=pipeline,
        rate=rate,
        duration=duration,
        requests=requests,
        warmup=warmup,
        timeout=timeout,
        processes=processes,
    )
    if model is not None:
        choice = ServerChoice.for_model(model, workers)
    else:
        assert target is not None
        choice = ServerChoice.for_target(parse_target(target))
    servers = [ServerChoice.for_reference(), choice] if reference else [choice]
    results = run_series(
        servers,
        spec,
        connections=connections or [10],
        sizes=sizes or [64],
        repeat=repeat,
        pin=pin,
        live=LiveLine(False if quiet else None),
        on_result=_on_result(quiet),
    )
    _finish(
        results,
        repeat=repeat,
        quiet=quiet,
        json_path=json_path,
        csv_path=csv_path,
        hgrm_path=hgrm_path,
        plot_path=plot_path,
        plot_kind="runs",
        title=f"duplex bench echo {choice.label}",
    )


ALL = "all"


@bench.command(
    "matrix",
    epilog="\b\nExamples:\n"
    "  duplex bench matrix                                   every model, 1..1000 conns\n"
    "  duplex bench matrix --models epoll,uvloop,prefork -c 1,10,100 -s 64 --reference\n"
    "  duplex bench matrix -o results/matrix -d 3 --repeat 3\n"
    "\n\b\nWrites PREFIX.csv, PREFIX.json and PREFIX.png (throughput by connections per\n"
    "model, p99 by throughput), one server process per model.",
)
@click.option(
    "--models",
    callback=_name_list,
    default=ALL,
    metavar="M[,M...]",
    show_default=True,
    help="Models to compare, comma-separated, or 'all'.",
)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(min=1),
    default=None,
    help="pool threads / prefork processes.  [default: per model]",
)
@click.option(
    "--output",
    "-o",
    "prefix",
    default="duplex-matrix",
    show_default=True,
    metavar="PREFIX",
    help="Write PREFIX.csv, PREFIX.json and PREFIX.png.",
)
@_load_options
def matrix_cmd(
    models: list[str],
    workers: int | None,
    prefix: str,
    connections: list[int],
    sizes: list[int],
    pipeline: int,
    rate: float | None,
    duration: float | None,
    requests: int | None,
    warmup: float,
    timeout: float,
    processes: int,
    repeat: int,
    reference: bool,
    pin: bool,
    quiet: bool,
) -> None:
    """Compare models: every model × connection count × payload size in one command.

    Each model's server runs in its own process; runs that fail are reported and
    the matrix goes on.
    """
    import sys

    from duplex.bench.live import LiveLine
    from duplex.bench.matrix import ServerChoice, run_series
    from duplex.server.base import model_names

    names = model_names() if models == [ALL] else models
    spec = _spec(
        pipeline=pipeline,
        rate=rate,
        duration=duration,
        requests=requests,
        warmup=warmup,
        timeout=timeout,
        processes=processes,
        default_duration=3.0,
    )
    choices = [ServerChoice.for_model(name, workers) for name in names]
    if reference:
        choices.insert(0, ServerChoice.for_reference())
    out = Path(prefix)
    if out.parent != Path("."):
        out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = out.with_name(out.name + ".csv")
    if csv_path.exists():
        csv_path.unlink()  # one matrix, one CSV: the same runs as the JSON
    results = run_series(
        choices,
        spec,
        connections=connections or [1, 10, 100, 1000],
        sizes=sizes or [64, 1024],
        repeat=repeat,
        pin=pin,
        live=LiveLine(False if quiet else None),
        on_result=_on_result(quiet),
        on_error=_on_error,
    )
    _finish(
        results,
        repeat=repeat,
        quiet=True,  # always print the table
        json_path=str(out.with_name(out.name + ".json")),
        csv_path=str(csv_path),
        hgrm_path=None,
        plot_path=str(out.with_name(out.name + ".png")),
        plot_kind="matrix",
        title="duplex bench matrix",
        extra={"command": " ".join(sys.argv)},
    )
    click.echo(f"wrote {csv_path}, {out.name}.json, {out.name}.png in {out.parent}")


@bench.command(
    "chat",
    epilog="\b\nExamples:\n"
    "  duplex bench chat                          a hub of its own; relayed, then direct\n"
    "  duplex bench chat --pairs 100 --window 32 --path relayed --json chat.json\n"
    "  duplex bench chat --hub 127.0.0.1:7070 --rate 5000 --path relayed",
)
@click.option(
    "--hub", default=None, metavar="HOST:PORT", help="An existing hub (else one is started)."
)
@click.option(
    "--pairs",
    "-k",
    type=click.IntRange(1, 5000),
    default=50,
    show_default=True,
    help="Sender/receiver pairs.",
)
@click.option(
    "--window",
    "-w",
    type=click.IntRange(1, 10000),
    default=8,
    show_default=True,
    help="Messages in flight per pair (closed loop).",
)
@click.option("--rate", type=float, default=None, help="Open loop: messages/s in total (relayed).")
@click.option(
    "--size",
    type=click.IntRange(20, 60000),
    default=64,
    show_default=True,
    help="Bytes per message body.",
)
@click.option("--duration", "-d", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True)
@click.option("--warmup", type=click.FloatRange(0, 600), default=1.0, show_default=True)
@click.option(
    "--path",
    "paths",
    type=click.Choice(["relayed", "direct", "both"]),
    default="both",
    show_default=True,
    help="Through the hub, peer to peer, or one then the other.",
)
@click.option(
    "--synchronous",
    type=click.Choice(["FULL", "NORMAL"]),
    default="FULL",
    show_default=True,
    help="Durability of the hub this command starts.",
)
@click.option(
    "--json", "json_path", default=None, metavar="FILE", help="Write the results as JSON."
)
@click.option("--csv", "csv_path", default=None, metavar="FILE", help="Append one row per run.")
@click.option(
    "--hgrm", "hgrm_path", default=None, metavar="FILE", help="Latency distribution (.hgrm)."
)
@click.option(
    "--plot", "plot_path", default=None, metavar="FILE.png", help="Latency spectrum plot."
)
def chat_cmd(
    hub: str | None,
    pairs: int,
    window: int,
    rate: float | None,
    size: int,
    duration: float,
    warmup: float,
    paths: str,
    synchronous: str,
    json_path: str | None,
    csv_path: str | None,
    hgrm_path: str | None,
    plot_path: str | None,
) -> None:
    """K pairs of messenger clients through a hub: messages/s and end-to-end latency.

    The relayed path uses lean clients that speak the protocol with nothing on disk
    (every message is still stored durably by the hub before the next leaves); the
    direct path uses the full client library with pinned TLS links between peers.
    Without --hub, a hub is started in a temporary directory, pinned to CPU 0.
    """
    import asyncio
    import csv
    import json
    import os
    import tempfile
    from pathlib import Path

    from duplex.bench.chat import plot_chat, register_users, run_direct, run_relay
    from duplex.bench.histogram import decode_histogram, write_hgrm

    if rate is not None and paths == "direct":
        raise click.UsageError("--rate applies to the relayed path (the direct one is closed-loop)")

    async def main(address: tuple[str, int]) -> list[Any]:
        users = [f"{p}{i}" for p in ("br", "bs", "dr", "ds") for i in range(pairs)]
        await register_users(address, users)
        results = []
        if paths in ("relayed", "both"):
            results.append(
                await run_relay(
                    address,
                    pairs=pairs,
                    window=window,
                    payload=size,
                    duration=duration,
                    warmup=warmup,
                    rate=rate,
                )
            )
        if paths in ("direct", "both"):
            results.append(
                await run_direct(
                    address,
                    pairs=pairs,
                    window=window,
                    payload=size,
                    duration=duration,
                    warmup=warmup,
                )
            )
        return results

    def run(address: tuple[str, int]) -> list[Any]:
        try:
            import uvloop

            return uvloop.run(main(address))
        except ImportError:
            return asyncio.run(main(address))

    if hub:
        host, _, port = hub.rpartition(":")
        if not port.isdigit():
            raise click.UsageError(f"--hub must be HOST:PORT, not {hub!r}")
        results = run((host.strip("[]"), int(port)))
    else:
        from duplex.testing.hubs import HubProcess

        cpus = sorted(os.sched_getaffinity(0))
        with tempfile.TemporaryDirectory() as tmp:
            process = HubProcess(
                Path(tmp) / "hub",
                args=["--synchronous", synchronous, "--log-level", "warning"],
                env={
                    "DUPLEX_HUB_IP_LOGIN_BURST": "100000",
                    "DUPLEX_HUB_IP_LOGIN_RATE": "100000",
                    "DUPLEX_HUB_SEND_RATE": "1000000",
                    "DUPLEX_HUB_SEND_BURST": "1000000",
                },
            )
            try:
                if len(cpus) >= 2:
                    os.sched_setaffinity(process.proc.pid, {cpus[0]})
                    os.sched_setaffinity(0, set(cpus[1:]))
                results = run(process.address)
            finally:
                process.kill()
                # Give this process its CPUs back: a caller that runs the command
                # in-process (a test, a notebook) must not stay pinned to one core.
                os.sched_setaffinity(0, set(cpus))
    click.echo(
        f"{'path':<8} {'pairs':>6} {'window':>6} {'msgs/s':>10} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'p99.9':>8} {'max ms':>8} {'errors':>6} {'gen CPU':>7}"
    )
    for r in results:
        lat = r.latency_ms
        mode = f"{r.rate:,.0f}/s" if r.rate else str(r.window)
        click.echo(
            f"{r.path:<8} {r.pairs:>6} {mode:>6} {r.per_second:>10,.0f} {lat['p50']:>8.2f} "
            f"{lat['p90']:>8.2f} {lat['p99']:>8.2f} {lat['p99.9']:>8.2f} {lat['max']:>8.2f} "
            f"{r.errors:>6} {r.generator_cpu:>7.0%}"
        )
        if r.generator_cpu > 0.9:
            click.echo(
                "  ! the generator used a whole core: the figure may be the generator's limit"
            )
    if json_path:
        Path(json_path).write_text(json.dumps([r.as_dict() for r in results], indent=2))
    if csv_path:
        fields = [
            "path",
            "pairs",
            "window",
            "rate",
            "payload",
            "duration",
            "delivered",
            "per_second",
            "errors",
            "p50",
            "p99",
            "max",
        ]
        new = not Path(csv_path).exists()
        with open(csv_path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            if new:
                writer.writeheader()
            for r in results:
                row = {k: v for k, v in r.as_dict().items() if k in fields}
                row.update(
                    p50=r.latency_ms["p50"], p99=r.latency_ms["p99"], max=r.latency_ms["max"]
                )
                writer.writerow(row)
    if hgrm_path:
        for r in results:
            target = (
                hgrm_path
                if len(results) == 1
                else f"{Path(hgrm_path).with_suffix('')}-{r.path}.hgrm"
            )
            write_hgrm(decode_histogram(r.histogram), target, header=f"duplex bench chat, {r.path}")
    if plot_path:
        plot_chat(results, plot_path)
