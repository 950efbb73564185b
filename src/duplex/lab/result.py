"""What an experiment returns: the claim, the method, the numbers and a verdict.

A verdict is never a constant in the code: each experiment derives it from what it
measured, and says why in :attr:`Result.reason`, so the same code can print "holds"
on one kernel and "depends" on another.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

__all__ = ["Result", "Table", "Verdict", "format_text"]


class Verdict(enum.Enum):
    """How a claim fared against the measurement."""

    HOLDS = "holds"
    """The measurement agrees with the claim."""
    FOLKLORE = "folklore"
    """The measurement contradicts the claim as usually stated."""
    DEPENDS = "depends"
    """True under some conditions and false under others; :attr:`Result.depends_on` says which."""


@dataclasses.dataclass(slots=True)
class Table:
    """A small table of measurements (one row per trial, model, size...)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]

    def as_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict."""
        return {"title": self.title, "columns": self.columns, "rows": self.rows}

    def markdown(self) -> str:
        """Renders the table as GitHub Markdown."""
        head = "| " + " | ".join(self.columns) + " |"
        rule = "|" + "|".join("---" for _ in self.columns) + "|"
        body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join([f"**{self.title}**", "", head, rule, *body])

    def text(self) -> str:
        """Renders the table as aligned plain text."""
        cells = [self.columns] + [[_cell(v) for v in row] for row in self.rows]
        widths = [max(len(str(r[i])) for r in cells) for i in range(len(self.columns))]
        lines = [f"  {self.title}"]
        for n, row in enumerate(cells):
            lines.append(
                "    " + "  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True))
            )
            if n == 0:
                lines.append("    " + "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if value is None:
        return "-"
    return str(value)


@dataclasses.dataclass(slots=True)
class Result:
    """The outcome of one experiment.

    Attributes:
        name: the experiment's name (``backlog``).
        claim: the claim as the texts state it.
        method: how it was measured, in a sentence or three.
        verdict: holds, folklore or depends.
        reason: why, with the numbers that decided it.
        numbers: the key figures, flat, for summaries and tests.
        tables: detailed measurements.
        series: data for the plot.
        params: the parameters it ran with.
        notes: caveats and side observations.
        elapsed: seconds the experiment took.
        depends_on: for DEPENDS, on what.
    """

    name: str
    claim: str
    method: str
    verdict: Verdict
    reason: str
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    tables: list[Table] = dataclasses.field(default_factory=list)
    series: dict[str, Any] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    elapsed: float = 0.0
    depends_on: str = ""

    @property
    def verdict_text(self) -> str:
        """``holds``, ``folklore``, or ``depends on <what>``."""
        if self.verdict is Verdict.DEPENDS and self.depends_on:
            return f"depends on {self.depends_on}"
        return self.verdict.value

    def as_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict (``--json``)."""
        return {
            "name": self.name,
            "claim": self.claim,
            "method": self.method,
            "verdict": self.verdict.value,
            "depends_on": self.depends_on,
            "reason": self.reason,
            "numbers": self.numbers,
            "tables": [t.as_dict() for t in self.tables],
            "series": self.series,
            "params": self.params,
            "notes": self.notes,
            "elapsed": round(self.elapsed, 3),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """Rebuilds a result saved with :meth:`as_dict` (for ``lab all --update``).

        Raises:
            KeyError: a required field is missing.
            ValueError: an unknown verdict.
        """
        return cls(
            name=data["name"],
            claim=data["claim"],
            method=data["method"],
            verdict=Verdict(data["verdict"]),
            reason=data["reason"],
            numbers=dict(data.get("numbers", {})),
            tables=[
                Table(t["title"], list(t["columns"]), [list(r) for r in t["rows"]])
                for t in data.get("tables", [])
            ],
            series=dict(data.get("series", {})),
            params=dict(data.get("params", {})),
            notes=list(data.get("notes", [])),
            elapsed=float(data.get("elapsed", 0.0)),
            depends_on=str(data.get("depends_on", "")),
        )

    def to_json(self) -> str:
        """Returns :meth:`as_dict` as JSON text."""
        return json.dumps(self.as_dict(), default=str)


def format_text(result: Result) -> str:
    """Renders a result for the terminal: claim, method, numbers, verdict."""
    lines = [
        f"claim    {result.claim}",
        f"method   {result.method}",
        "measured",
    ]
    for key, value in result.numbers.items():
        lines.append(f"  {key:<34} {_cell(value)}")
    for table in result.tables:
        lines.append(table.text())
    for note in result.notes:
        lines.append(f"note     {note}")
    lines.append(f"verdict  {result.verdict_text.upper()}: {result.reason}")
    lines.append(f"         ({result.elapsed:.1f} s)")
    return "\n".join(lines)
