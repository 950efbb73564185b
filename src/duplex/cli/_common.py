"""What every command shares: logging setup, error reporting, config lookup."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from duplex.errors import DuplexError

__all__ = ["DuplexGroup", "LazyGroup", "configure_logging", "logging_options"]

F = TypeVar("F", bound=Callable[..., Any])


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Sends duplex's logs to stderr in the chosen format and level."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s[%(process)d]: %(message)s", "%H:%M:%S"
        )
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger("duplex")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def logging_options(func: F) -> F:
    """Adds ``--log-level`` and ``--log-format`` to a long-running command."""
    func = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Log lines as text or as one JSON object per line.",
    )(func)
    func = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
        help="debug logs every connection's socket pair.",
    )(func)
    return func


class DuplexGroup(click.Group):
    """A click group that turns duplex's own errors into a one-line reason and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DuplexError as exc:
            raise click.ClickException(str(exc)) from exc


class LazyGroup(DuplexGroup):
    """A group whose subcommands are imported on first use.

    ``duplex echo serve`` should not pay for importing Textual, matplotlib or the lab,
    nor fail because an optional extra (the TUI) is not installed.

    Args:
        lazy: command name -> ``"module:attribute"``.
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            import importlib

            module_name, _, attr = self.lazy[cmd_name].partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                missing = exc.name or module_name

                @click.command(cmd_name, help=f"(unavailable: {missing} is not installed)")
                def unavailable() -> None:
                    raise click.ClickException(
                        f"'duplex {cmd_name}' needs {missing}: pip install 'duplex[all]'"
                    )

                return unavailable
            command: click.Command = getattr(module, attr)
            return command
        return super().get_command(ctx, cmd_name)
