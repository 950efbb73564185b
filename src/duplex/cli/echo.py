"""``duplex echo``: the RFC 862 echo service on any model, and its client."""

from __future__ import annotations

import json
import statistics
import sys

import click

from duplex.cli._common import DuplexGroup, configure_logging, logging_options
from duplex.config import EchoConfig, config_file_path, resolve
from duplex.errors import DuplexError
from duplex.server.base import MODELS
from duplex.server.runner import ServerInfo

__all__ = ["echo"]


def _models_help() -> str:
    return "\n".join(f"  {name:<10} {info.summary}" for name, info in MODELS.items())


@click.group(
    cls=DuplexGroup,
    epilog="\b\nExamples:\n  duplex echo serve --model thread\n  duplex echo client -n 100 -s 64",
)
def echo() -> None:
    """The RFC 862 echo service (TCP and UDP) on any concurrency model."""


def _banner(info: ServerInfo, as_json: bool) -> None:
    if info.effective_backlog < info.backlog:
        click.echo(
            f"notice: the kernel clamps the backlog {info.backlog} to "
            f"net.core.somaxconn={info.somaxconn}; raise it with "
            f"'sysctl net.core.somaxconn={info.backlog}' for a deeper accept queue",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(info.as_dict()), nl=True)
        sys.stdout.flush()
        return
    proto = "tcp+udp" if info.udp else ("unix" if info.address.is_unix else "tcp")
    lines = [
        f"duplex echo: model {info.model}, listening on {info.address} ({proto}), pid {info.pid}"
    ]
    somax = f"net.core.somaxconn {info.somaxconn}" if info.somaxconn else "somaxconn unknown"
    lines.append(f"  backlog    {info.backlog} asked, {info.effective_backlog} effective ({somax})")
    if info.workers is not None:
        detail = f" ({info.detail})" if info.detail else ""
        lines.append(f"  workers    {info.workers}{detail}")
    lines.append(f"  open files {info.nofile}")
    lines.append(f"  stop with Ctrl-C or SIGTERM; connections in flight get {info.grace:g} s")
    click.echo("\n".join(lines))
    sys.stdout.flush()


@echo.command(
    "serve",
    epilog="\b\nModels:\n" + _models_help() + "\n\n\b\nExamples:\n"
    "  duplex echo serve --model thread --port 7007\n"
    "  duplex echo serve --model prefork --workers 2 --udp\n"
    "  duplex echo serve --model epoll --unix /tmp/echo.sock\n"
    "  DUPLEX_ECHO_MODEL=uvloop duplex echo serve --port 0 --json",
)
@click.option(
    "--model", "-m", default=None, help="Concurrency model (listed below).  [default: epoll]"
)
@click.option(
    "--host", default=None, help="Address to bind; '::' is IPv6 and IPv4.  [default: 127.0.0.1]"
)
@click.option(
    "--port", "-p", type=int, default=None, help="Port; 0 picks a free one.  [default: 7007]"
)
@click.option(
    "--unix", default=None, metavar="PATH", help="Listen on a Unix domain socket instead."
)
@click.option(
    "--backlog",
    type=int,
    default=None,
    help="listen() backlog, clamped to somaxconn.  [default: 4096]",
)
@click.option(
    "--workers",
    "-w",
    type=int,
    default=None,
    help="pool threads / prefork processes.  [default: per model]",
)
@click.option("--udp/--no-udp", default=None, help="Also echo UDP datagrams on the same port.")
@click.option(
    "--grace",
    type=float,
    default=None,
    help="Seconds for connections in flight at shutdown.  [default: 5]",
)
@click.option(
    "--config", "config_path", default=None, metavar="FILE", help="TOML file with an [echo] table."
)
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
@logging_options
def serve_cmd(
    model: str | None,
    host: str | None,
    port: int | None,
    unix: str | None,
    backlog: int | None,
    workers: int | None,
    udp: bool | None,
    grace: float | None,
    config_path: str | None,
    as_json: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run the echo service: every byte a client sends comes back (RFC 862).

    Every model runs the same sans-I/O handler. Values come from the flags, then
    DUPLEX_ECHO_<FIELD> variables, then the [echo] table of the config file.
    """
    configure_logging(log_level, log_format)
    config = resolve(
        EchoConfig,
        section="echo",
        flags={
            "model": model,
            "host": host,
            "port": port,
            "unix": unix,
            "backlog": backlog,
            "workers": workers,
            "udp": udp,
            "grace": grace,
        },
        file=config_file_path(config_path),
    )
    from duplex.services.echo import serve_echo

    sys.exit(serve_echo(config, on_ready=lambda info: _banner(info, as_json)))


@echo.command(
    "client",
    epilog="\b\nExamples:\n"
    "  duplex echo client                      type lines, see them echoed\n"
    "  duplex echo client 127.0.0.1 7007 --count 1000 --size 64\n"
    "  duplex echo client --unix /tmp/echo.sock\n"
    "  duplex echo client --udp --count 10",
)
@click.argument("host", default="127.0.0.1")
@click.argument("port", type=int, default=7007)
@click.option("--unix", default=None, metavar="PATH", help="Connect to a Unix domain socket.")
@click.option(
    "--count",
    "-n",
    type=click.IntRange(min=1),
    default=None,
    help="Round trips to measure (no prompt).",
)
@click.option(
    "--size",
    "-s",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Bytes per round trip.",
)
@click.option("--udp", is_flag=True, help="Use UDP datagrams instead of TCP.")
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for an echo."
)
@click.option("--json", "as_json", is_flag=True, help="Print the measurement as JSON.")
def client_cmd(
    host: str,
    port: int,
    unix: str | None,
    count: int | None,
    size: int,
    udp: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Talk to an echo server: interactively, or measure checked round trips.

    Without --count, each line you type is sent and its echo printed, as CSAPP's
    echoclient does; end with Ctrl-D. With --count N, N round trips of --size random
    bytes are made, every byte checked, and the round-trip times printed.
    """
    import os
    import time

    from duplex.services.echo import EchoClient, RoundTrips, echo_datagram

    if udp:
        times = []
        payload = os.urandom(min(size, 65507))
        for _ in range(count or 1):
            start = time.perf_counter()
            back = echo_datagram(host, port, payload, timeout=timeout)
            times.append(time.perf_counter() - start)
            if back != payload:
                raise click.ClickException("the UDP echo differs from the datagram sent")
        _report(RoundTrips(len(payload), times), f"udp {host}:{port}", "", as_json)
        return
    with EchoClient(host, port, unix=unix, timeout=timeout) as client:
        pair = f"{client.local} -> {client.remote}"
        if count is None:
            click.echo(f"connected: {pair} (type lines; Ctrl-D to end)", err=True)
            for line in sys.stdin.buffer:
                try:
                    back = client.echo(line)
                except DuplexError as exc:
                    raise click.ClickException(str(exc)) from exc
                sys.stdout.buffer.write(back)
                sys.stdout.flush()
            return
        result = client.measure(count, size)
        _report(result, str(client.remote), str(client.local), as_json)


def _report(result: object, server: str, local: str, as_json: bool) -> None:
    from duplex.services.echo import RoundTrips

    assert isinstance(result, RoundTrips)
    ms = [t * 1000 for t in result.times]
    summary = {
        "server": server,
        "client": local,
        "count": len(ms),
        "size": result.size,
        "bytes_checked": len(ms) * result.size,
        "rtt_ms": {
            "min": min(ms),
            "p50": result.percentile(50) * 1000,
            "p99": result.percentile(99) * 1000,
            "max": max(ms),
            "mean": statistics.fmean(ms),
        },
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    r = summary["rtt_ms"]
    assert isinstance(r, dict)
    click.echo(
        f"{len(ms)} round trips of {result.size} B to {server}"
        + (f" from {local}" if local else "")
        + ", every byte checked"
    )
    click.echo(
        f"rtt ms: min {r['min']:.3f}  p50 {r['p50']:.3f}  p99 {r['p99']:.3f}  "
        f"max {r['max']:.3f}  mean {r['mean']:.3f}"
    )
