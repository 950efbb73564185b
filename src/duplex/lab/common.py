"""What every experiment shares: its description, parameters, and small socket helpers."""

from __future__ import annotations

import dataclasses
import socket
import struct
import time
import typing
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from duplex.inspect.procnet import TcpState
from duplex.lab.errors import ExperimentError
from duplex.lab.result import Result

__all__ = [
    "Experiment",
    "Progress",
    "apply_overrides",
    "figure",
    "no_progress",
    "save_figure",
    "tcp_state",
    "wait_until",
]

Progress = Callable[[str], None]
"""Receives one line of progress (the CLI prints it on stderr)."""

P = TypeVar("P")


def no_progress(line: str) -> None:
    """A :data:`Progress` that prints nothing."""


@dataclasses.dataclass(frozen=True)
class Experiment(Generic[P]):
    """One experiment: a claim, how to test it at two scales, and how to draw it.

    Attributes:
        name: the command name (``duplex lab NAME``).
        title: a short title for the report.
        claim: the claim as the texts state it.
        full: parameters of the real run (``duplex lab NAME``, ``lab all``).
        quick: parameters of a small run (``--quick``; the tests).
        run: runs it and returns the result.
        plot: draws a result into a PNG file.
    """

    name: str
    title: str
    claim: str
    full: P
    quick: P
    run: Callable[[P, Progress], Result]
    plot: Callable[[Result, str], None]

    def params(self, quick: bool, overrides: Mapping[str, str] | None = None) -> P:
        """Returns the parameters for a run, with ``KEY=VALUE`` overrides applied."""
        return apply_overrides(self.quick if quick else self.full, overrides or {})


def apply_overrides(params: P, overrides: Mapping[str, str]) -> P:
    """Returns a copy of a parameters dataclass with fields parsed from text.

    Args:
        params: a frozen dataclass instance.
        overrides: field name to text; ints, floats, bools and tuples of ints or
            strings (comma-separated) are parsed by the field's annotation.

    Raises:
        ExperimentError: an unknown field or a value of the wrong type.
    """
    assert dataclasses.is_dataclass(params) and not isinstance(params, type)
    hints = typing.get_type_hints(type(params))
    changes: dict[str, Any] = {}
    for key, text in overrides.items():
        name = key.replace("-", "_")
        if name not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(params))
            raise ExperimentError(f"unknown parameter {key!r}; this experiment has: {known}")
        kind = hints[name]
        try:
            changes[name] = _parse(kind, text)
        except ValueError:
            kind_name = getattr(kind, "__name__", str(kind))
            raise ExperimentError(f"parameter {key}: cannot read {text!r} as {kind_name}") from None
    return dataclasses.replace(params, **changes)


def _parse(kind: Any, text: str) -> Any:
    origin = typing.get_origin(kind)
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is str:
        return text
    if origin is tuple:
        (item, *_) = typing.get_args(kind)
        return tuple(_parse(item, part.strip()) for part in text.split(",") if part.strip())
    raise ValueError(text)


def tcp_state(sock: socket.socket) -> TcpState | None:
    """Returns the TCP state of ``sock`` from TCP_INFO (``tcpi_state``), or None."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return None
    try:
        return TcpState(struct.unpack_from("B", info)[0])
    except ValueError:
        return None


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Polls ``predicate`` until true or ``timeout`` seconds pass; returns its last value."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


def figure(width: float = 7.0, height: float = 4.0) -> tuple[Any, Any, Any]:
    """Returns ``(pyplot, figure, axes)`` on the Agg backend (no display needed).

    Raises:
        ExperimentError: matplotlib is not installed (``pip install 'duplex[plots]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ExperimentError(
            "--plot needs matplotlib, which is not installed (pip install 'duplex[plots]')"
        ) from exc
    fig, ax = plt.subplots(figsize=(width, height))
    return plt, fig, ax


def save_figure(plt: Any, fig: Any, path: str) -> None:
    """Writes ``fig`` to ``path`` as PNG and releases it."""
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
    except OSError as exc:
        raise ExperimentError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
