"""``duplex serve``: the messenger hub."""

from __future__ import annotations

import json
import sys

import click

from duplex.cli._common import configure_logging, logging_options
from duplex.config import HubConfig, config_file_path, resolve
from duplex.tls import format_fingerprint

__all__ = ["serve"]


@click.command(
    "serve",
    epilog="\b\nExamples:\n"
    "  duplex serve                                  SQLite in the data dir, port 7070\n"
    "  duplex serve --port 0 --json                  any free port, ready line as JSON\n"
    "  duplex serve --tls self-signed                TLS; clients pin the printed fingerprint\n"
    "  duplex serve --admin 127.0.0.1:9107           /healthz and /metrics\n"
    "  duplex serve --store postgresql://u@db/duplex --broker redis://127.0.0.1:6379/0",
)
@click.option("--host", default=None, help="Address to bind.  [default: 127.0.0.1]")
@click.option("--port", "-p", type=int, default=None, help="Port; 0 picks one.  [default: 7070]")
@click.option(
    "--data-dir", default=None, metavar="DIR", help="Store and TLS files.  [default: user data dir]"
)
@click.option("--store", default=None, metavar="URL", help="sqlite:///file.db or postgresql://...")
@click.option("--broker", default=None, metavar="URL", help="local or redis://host:port/db.")
@click.option(
    "--synchronous",
    type=click.Choice(["FULL", "NORMAL", "EXTRA"], case_sensitive=False),
    default=None,
    help="SQLite durability (FULL fsyncs before every ack).",
)
@click.option(
    "--tls",
    type=click.Choice(["off", "self-signed", "files"]),
    default=None,
    help="TLS mode.  [default: off]",
)
@click.option(
    "--tls-cert", default=None, metavar="PEM", help="Certificate chain; with --tls-key, TLS is on."
)
@click.option(
    "--tls-key", default=None, metavar="PEM", help="Private key; with --tls-cert, TLS is on."
)
@click.option("--heartbeat", type=float, default=None, help="Client heartbeat, s.  [default: 5]")
@click.option("--grace", type=float, default=None, help="Silence before offline, s.  [default: 15]")
@click.option("--auth-timeout", type=float, default=None, help="Time to log in, s.  [default: 10]")
@click.option("--max-connections", type=int, default=None, help="Connection limit.")
@click.option("--admin", default=None, metavar="HOST:PORT", help="Admin listener (off by default).")
@click.option(
    "--nodes", type=int, default=None, help="Hub processes sharing the port.  [default: 1]"
)
@click.option("--argon2-memory-kib", type=int, default=None, hidden=True)
@click.option("--argon2-time-cost", type=int, default=None, hidden=True)
@click.option(
    "--config", "config_path", default=None, metavar="FILE", help="TOML file with a [hub] table."
)
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
@logging_options
def serve(
    config_path: str | None, as_json: bool, log_level: str, log_format: str, **flags: object
) -> None:
    """Run the messenger hub: accounts, presence, relay and the offline store.

    Values come from the flags, then DUPLEX_HUB_<OPTION> variables, then the [hub]
    table of the config file. Stop with Ctrl-C or SIGTERM: connections are told to
    reconnect later and pending writes are finished.
    """
    configure_logging(log_level, log_format)
    config = resolve(HubConfig, section="hub", flags=flags, file=config_file_path(config_path))
    from duplex.hub.run import HubInfo, run_hub

    def ready(info: HubInfo) -> None:
        if as_json:
            click.echo(json.dumps(info.as_dict()))
        else:
            click.echo(f"duplex hub: listening on {info.address}, pid {info.pid}")
            click.echo(f"  store      {info.store}")
            click.echo(f"  broker     {info.broker} (node {info.node})")
            if info.tls:
                click.echo("  tls        on; clients pin this fingerprint on first use:")
                click.echo(f"             {format_fingerprint(info.fingerprint)}")
            if info.admin:
                click.echo(f"  admin      http://{info.admin}/metrics")
            click.echo(f"  open files {info.nofile}")
            click.echo("  stop with Ctrl-C or SIGTERM")
        sys.stdout.flush()

    sys.exit(run_hub(config, ready))
