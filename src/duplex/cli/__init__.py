"""The ``duplex`` command line (click). Thin: no protocol logic lives here."""

from __future__ import annotations

import click

from duplex import __version__
from duplex.cli._common import LazyGroup
from duplex.cli.client import COMMANDS as CLIENT_COMMANDS
from duplex.cli.echo import echo
from duplex.cli.hub import serve

__all__ = ["cli", "main"]


@click.group(
    cls=LazyGroup,
    lazy={
        "bench": "duplex.cli.bench:bench",
        "chat": "duplex.cli.chat:chat",
        "inspect": "duplex.cli.inspect:inspect",
        "lab": "duplex.cli.lab:lab",
    },
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="duplex")
def cli() -> None:
    """duplex: a socket-server toolkit and a QQ-style messenger.

    \b
    The messenger:
      duplex serve                          the hub (SQLite in your data dir)
      duplex register --user alice          an account (password prompted)
      duplex send bob 'hi' --user alice     stored, relayed or sent direct
      duplex inbox --user bob               print what came, ack it
      duplex chat                           the terminal UI
    \b
    The socket toolkit:
      duplex echo serve --model thread      an RFC 862 echo server on any model
      duplex echo client --count 100        measure it, every byte checked
      duplex bench echo --model uvloop      load test with percentiles and plots
      duplex lab backlog                    settle a socket claim by experiment
      duplex inspect pairs                  every connection's socket pair

    Each command has --help with examples.
    """


cli.add_command(serve)
for _command in CLIENT_COMMANDS:
    cli.add_command(_command)
cli.add_command(echo)


def main() -> None:
    """Entry point of the ``duplex`` console script and ``python -m duplex``."""
    cli(prog_name="duplex")
