"""Load generation and latency reports: ``duplex bench``.

The generator (:mod:`duplex.bench.generator`) runs in several processes on uvloop,
closed loop or open loop, checks every echoed byte and records latencies in
HdrHistograms; :func:`run_load` runs it against an echo server and merges the
results; :mod:`duplex.bench.report` and :mod:`duplex.bench.plot` turn results into
text, JSON, CSV, ``.hgrm`` files and pictures; :func:`run_matrix` compares models.
"""

from __future__ import annotations

from duplex.bench.matrix import ServerChoice, run_series
from duplex.bench.reference import build_reference
from duplex.bench.result import RepeatSummary, RunResult, summarize_repeats
from duplex.bench.runner import run_load
from duplex.bench.servers import BenchServer, plan_cpus
from duplex.bench.spec import BenchError, LoadSpec, Target, parse_target

__all__ = [
    "BenchError",
    "BenchServer",
    "LoadSpec",
    "RepeatSummary",
    "RunResult",
    "ServerChoice",
    "Target",
    "build_reference",
    "parse_target",
    "plan_cpus",
    "run_load",
    "run_series",
    "summarize_repeats",
]
