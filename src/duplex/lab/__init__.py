"""Socket experiments: each classic claim tested against the real kernel, on loopback.

An experiment (:class:`~duplex.lab.common.Experiment`) states a claim, runs a bounded
measurement at full or quick scale, and returns a :class:`~duplex.lab.result.Result`
whose verdict (holds, folklore, depends) is derived from the numbers. Helpers that
must live in their own processes (client holders, deliberately broken servers, the
pool model with a working handler) are in :mod:`duplex.lab.holder` and
:mod:`duplex.lab.helpers`, started and always ended through :mod:`duplex.lab.procs`.
:mod:`duplex.lab.report` runs them all and writes the Markdown report.
"""

from __future__ import annotations

from duplex.lab.common import Experiment
from duplex.lab.errors import ExperimentError
from duplex.lab.registry import EXPERIMENTS, get_experiment, names
from duplex.lab.result import Result, Table, Verdict, format_text

__all__ = [
    "EXPERIMENTS",
    "Experiment",
    "ExperimentError",
    "Result",
    "Table",
    "Verdict",
    "format_text",
    "get_experiment",
    "names",
]
