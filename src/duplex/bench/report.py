"""Results as text, JSON, CSV and ``.hgrm`` files.

The text summary follows redis-benchmark's layout (a header per test, then the
throughput and a latency line in milliseconds), because people already know how to
read it. The CSV has one row per run and is appended to, with the header written
once, so a file collects runs across invocations; the JSON holds everything,
histograms included, so any figure can be recomputed later.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from duplex.bench.histogram import PERCENTILES, decode_histogram, write_hgrm
from duplex.bench.result import UNSTABLE_SPREAD, RepeatSummary, RunResult

__all__ = [
    "CSV_FIELDS",
    "append_csv",
    "csv_row",
    "format_metadata",
    "format_repeat",
    "format_summary",
    "format_table",
    "hgrm_paths",
    "reference_ratios",
    "write_hgrm_files",
    "write_json",
]

CSV_FIELDS: tuple[str, ...] = (
    "utc",
    "label",
    "model",
    "workers",
    "target",
    "mode",
    "connections",
    "size",
    "pipeline",
    "processes",
    "requested_rate",
    "throughput",
    "window",
    "warmup",
    "completed",
    "sent",
    "errors",
    "timeouts",
    "connect_failed",
    "connections_lost",
    "min_ms",
    "mean_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p99.9_ms",
    "max_ms",
    "generator_cpu",
    "generator_saturated",
    "server_cpu",
    "server_saturated",
    "ratio_to_reference",
    "requests_per_server_cpu_s",
    "repeat",
    "git",
    "python",
    "uvloop",
    "cpus",
    "kernel",
)
"""The CSV columns, in order. Latencies in milliseconds, CPU in cores."""

_LAT_KEYS = ("min", "mean", *(name for name, _ in PERCENTILES), "max")


def _fmt_count(n: float) -> str:
    return f"{n:,.0f}"


def _describe_errors(result: RunResult) -> str:
    parts = []
    if result.errors:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(result.errors.items()))
        parts.append(f"errors {result.error_count} ({kinds})")
    else:
        parts.append("errors 0")
    parts.append(f"timeouts {result.timeouts}")
    parts.append(f"failed connects {result.connect_failed}")
    if result.connections_lost:
        parts.append(f"connections lost {result.connections_lost}")
    return ", ".join(parts)


def _latency_block(latency: Mapping[str, float], indent: str = "        ") -> list[str]:
    heads = ("min", "avg", *(name for name, _ in PERCENTILES), "max")
    keys = ("min", "mean", *(name for name, _ in PERCENTILES), "max")
    return [
        indent + "".join(f"{h:>10}" for h in heads),
        indent + "".join(f"{latency.get(k, 0.0):>10.3f}" for k in keys),
    ]


def format_summary(result: RunResult, ratio: float | None = None) -> str:
    """Returns a short text summary of one run, in the redis-benchmark style.

    Args:
        result: the run.
        ratio: its throughput as a fraction of the C reference's, when measured.
    """
    loop = (
        f"closed loop, pipeline {result.pipeline}"
        if result.mode == "closed"
        else f"open loop at {_fmt_count(result.requested_rate or 0)} requests/s"
    )
    workers = f", {result.workers} workers" if result.workers else ""
    title = f"echo {result.label}{workers}: {result.connections} connections, {result.size} B"
    lines = [
        f"====== {title} ======",
        f"  {_fmt_count(result.completed)} requests completed in {result.window:.2f} seconds "
        f"({loop})",
        f"  {result.connections} parallel connections from {result.processes} generator "
        f"process{'es' if result.processes != 1 else ''} to {result.target}",
        f"  {result.size} bytes payload, every byte checked",
        f"  warm-up {result.warmup:g} s, not counted",
        "",
        "Summary:",
        f"  throughput summary: {result.throughput:,.2f} requests per second",
    ]
    if result.requested_rate is not None:
        lines.append(
            f"  requested rate: {result.requested_rate:,.2f} requests per second "
            f"(achieved {result.throughput / result.requested_rate:.0%})"
        )
    if ratio is not None:
        lines.append(f"  vs the C reference: {ratio:.2f}")
    label = "from the scheduled send" if result.mode == "open" else "send to full echo"
    lines.append(f"  latency summary (msec, {label}):")
    lines += _latency_block(result.latency)
    if result.service is not None:
        lines.append("  service time (msec, from the actual send):")
        lines += _latency_block(result.service)
    lines.append(f"  {_describe_errors(result)}")
    gen = ", ".join(f"{c:.0%}" for c in result.generator_cpu)
    cpu = f"  CPU: generator {gen} of a core per process"
    if result.server_cpu is not None:
        cpu += f"; server {result.server_cpu:.2f} cores"
        if result.server_cpu_limit:
            cpu += f" of {result.server_cpu_limit}"
    lines.append(cpu)
    if result.first_error:
        lines.append(f"  first error: {result.first_error}")
    for warning in result.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def format_metadata(meta: Mapping[str, Any]) -> str:
    """Returns the metadata block: what ran, where, and when (for the text output)."""
    cpus = f"{meta.get('cpus')} CPUs"
    if meta.get("cpu_model"):
        cpus += f" ({meta['cpu_model']})"
    pinning = "not pinned"
    if meta.get("server_cpus") or meta.get("generator_cpus"):
        pinning = (
            f"server on CPU {','.join(map(str, meta.get('server_cpus') or [])) or '-'}, "
            f"generator on CPU {','.join(map(str, meta.get('generator_cpus') or [])) or '-'}"
        )
    return "\n".join(
        [
            "Metadata:",
            f"  duplex {meta.get('duplex')} (git {meta.get('git') or 'unknown'}), "
            f"Python {meta.get('python')}, uvloop {meta.get('uvloop') or 'absent'}",
            f"  {meta.get('system')} {meta.get('kernel')} {meta.get('machine')}, {cpus}",
            f"  {pinning}; {meta.get('utc')}",
        ]
    )


def format_repeat(summary: RepeatSummary) -> str:
    """Returns the text summary of ``--repeat`` runs: median, range and stability."""
    lines = [
        f"====== {summary.label}: {summary.connections} connections, {summary.size} B, "
        f"{summary.runs} runs ======",
        f"  throughput median {summary.throughput:,.2f} requests per second "
        f"(min {summary.throughput_min:,.0f}, max {summary.throughput_max:,.0f}, "
        f"spread {summary.spread:.1%})",
        "  latency medians (msec):",
        *_latency_block(summary.latency),
    ]
    if not summary.stable:
        lines.append(
            f"warning: UNSTABLE: the runs spread {summary.spread:.1%} (over "
            f"{UNSTABLE_SPREAD:.0%}); the machine is busy or the load is at a knee. "
            "Do not quote a single run."
        )
    return "\n".join(lines)


def reference_ratios(
    results: Sequence[RunResult], reference: str, metric: str = "throughput"
) -> dict[int, float | None]:
    """Returns each run's figure as a fraction of the reference run of the same shape.

    Args:
        results: runs, including those of the reference (label ``reference``).
        reference: the reference's label.
        metric: ``throughput`` (requests/s), or ``efficiency`` (requests per server
            CPU-second, fair even when the generator, not the server, was the limit).

    Returns:
        ``id(result)`` -> ratio (None where no reference run has the same
        connections, size, pipeline and mode, or the figure is unknown). With
        ``--repeat``, the reference's median is the denominator.
    """

    def value(r: RunResult) -> float | None:
        return r.throughput if metric == "throughput" else r.efficiency

    by_shape: dict[tuple[int, int, int, str], list[float]] = {}
    for r in results:
        v = value(r)
        if r.label == reference and v is not None:
            by_shape.setdefault((r.connections, r.size, r.pipeline, r.mode), []).append(v)
    out: dict[int, float | None] = {}
    for r in results:
        values = sorted(by_shape.get((r.connections, r.size, r.pipeline, r.mode), []))
        v = value(r)
        if not values or v is None or values[len(values) // 2] <= 0:
            out[id(r)] = None
            continue
        out[id(r)] = v / values[len(values) // 2]
    return out


def format_table(
    results: Sequence[RunResult],
    ratios: Mapping[int, float | None] | None = None,
    cpu_ratios: Mapping[int, float | None] | None = None,
) -> str:
    """Returns one line per run: throughput, p50, p99, failures, CPU, ratios to C.

    Args:
        results: the runs, in the order to show them.
        ratios: throughput ratios from :func:`reference_ratios`.
        cpu_ratios: efficiency ratios (requests per server CPU-second) from
            :func:`reference_ratios`.
    """

    def shown(m: Mapping[int, float | None] | None) -> bool:
        return bool(m) and any(v is not None for v in (m or {}).values())

    show_ratio, show_cpu = shown(ratios), shown(cpu_ratios)
    head = (
        f"{'model':<12}{'conns':>6}{'size':>7}{'requests/s':>13}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'fail':>6}"
    )
    if show_ratio:
        head += f"{'vs C':>7}"
    if show_cpu:
        head += f"{'CPU vs C':>9}"
    head += f"{'gen CPU':>9}{'srv CPU':>9}"
    show_other = any(r.foreign_cpu is not None for r in results)
    if show_other:
        head += f"{'other':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        fails = r.error_count + r.timeouts + r.connect_failed
        line = (
            f"{r.label:<12}{r.connections:>6}{r.size:>7}{r.throughput:>13,.0f}"
            f"{r.latency['p50']:>9.3f}{r.latency['p99']:>9.3f}{r.latency['max']:>9.1f}{fails:>6}"
        )
        for show, m, width in ((show_ratio, ratios, 7), (show_cpu, cpu_ratios, 9)):
            if show:
                ratio = (m or {}).get(id(r))
                line += f"{ratio:>{width}.2f}" if ratio is not None else " " * width
        gen = max(r.generator_cpu, default=0.0)
        line += f"{gen:>8.0%}{'!' if r.generator_saturated else ' '}"
        srv = f"{r.server_cpu:.2f}" if r.server_cpu is not None else "-"
        line += f"{srv:>8}{'!' if r.server_saturated else ' '}"
        if show_other:
            other = f"{r.foreign_cpu:.2f}" if r.foreign_cpu is not None else "-"
            line += f"{other:>7}{'!' if r.machine_busy else ' '}"
        lines.append(line)
    notes = []
    if show_cpu:
        notes.append(
            "CPU vs C: requests per server CPU-second, as a fraction of the C reference's "
            "(fair even where the generator was the limit)."
        )
    if any(r.generator_saturated for r in results):
        notes.append(
            "! gen CPU: a generator process used over 90% of a core; that run measured the "
            "generator at least as much as the server."
        )
    if any(r.server_saturated for r in results):
        notes.append("! srv CPU: the server used (nearly) all the cores it may use.")
    if any(r.machine_busy for r in results):
        notes.append(
            "! other: other programs used this many cores of the bench's CPUs during the "
            "run; its figures are low. Rerun on a quiet machine, or use --repeat."
        )
    return "\n".join(lines + notes)


def csv_row(result: RunResult, ratio: float | None = None) -> dict[str, Any]:
    """Returns the CSV row of one run (keys are :data:`CSV_FIELDS`)."""
    meta = result.metadata
    row: dict[str, Any] = {
        "utc": meta.get("utc", ""),
        "label": result.label,
        "model": result.model or "",
        "workers": result.workers if result.workers is not None else "",
        "target": result.target,
        "mode": result.mode,
        "connections": result.connections,
        "size": result.size,
        "pipeline": result.pipeline,
        "processes": result.processes,
        "requested_rate": result.requested_rate if result.requested_rate is not None else "",
        "throughput": round(result.throughput, 2),
        "window": round(result.window, 4),
        "warmup": result.warmup,
        "completed": result.completed,
        "sent": result.sent,
        "errors": result.error_count,
        "timeouts": result.timeouts,
        "connect_failed": result.connect_failed,
        "connections_lost": result.connections_lost,
        "generator_cpu": round(max(result.generator_cpu, default=0.0), 3),
        "generator_saturated": int(result.generator_saturated),
        "server_cpu": round(result.server_cpu, 3) if result.server_cpu is not None else "",
        "server_saturated": ""
        if result.server_saturated is None
        else int(bool(result.server_saturated)),
        "ratio_to_reference": round(ratio, 4) if ratio is not None else "",
        "requests_per_server_cpu_s": round(result.efficiency, 1)
        if result.efficiency is not None
        else "",
        "repeat": result.repeat,
        "git": meta.get("git") or "",
        "python": meta.get("python", ""),
        "uvloop": meta.get("uvloop") or "",
        "cpus": meta.get("cpus", ""),
        "kernel": meta.get("kernel", ""),
    }
    for key in _LAT_KEYS:
        row[f"{key}_ms"] = round(result.latency.get(key, 0.0), 4)
    return row


def append_csv(
    path: str | Path,
    results: Sequence[RunResult],
    ratios: Mapping[int, float | None] | None = None,
) -> None:
    """Appends one row per run to a CSV file, writing the header if the file is new.

    Args:
        path: the CSV file (created if missing).
        results: the runs.
        ratios: ratios to the C reference, from :func:`reference_ratios`.
    """
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        for r in results:
            writer.writerow(csv_row(r, (ratios or {}).get(id(r))))


def write_json(
    path: str | Path,
    results: Sequence[RunResult],
    summaries: Sequence[RepeatSummary] = (),
    ratios: Mapping[int, float | None] | None = None,
    **extra: Any,
) -> None:
    """Writes every run (histograms included) and the repeat summaries as one JSON file.

    Args:
        path: the file (replaced, atomically).
        results: the runs.
        summaries: ``--repeat`` summaries.
        ratios: ratios to the C reference, from :func:`reference_ratios`.
        extra: further top-level fields (e.g. the command line of a matrix).
    """
    runs = []
    for r in results:
        item = r.to_dict()
        item["ratio_to_reference"] = (ratios or {}).get(id(r))
        runs.append(item)
    doc: dict[str, Any] = {
        "tool": "duplex bench",
        "metadata": results[0].metadata if results else {},
        **extra,
        "runs": runs,
        "summaries": [s.to_dict() for s in summaries],
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def hgrm_paths(path: str | Path, results: Sequence[RunResult]) -> list[Path]:
    """Returns the ``.hgrm`` file of each run: ``path`` itself for a single run, else
    ``path`` with ``-<label>-c<conns>-s<size>[-r<repeat>]`` before the suffix."""
    path = Path(path)
    if len(results) == 1:
        return [path]
    repeats = any(r.repeat > 1 for r in results)
    out = []
    for r in results:
        tag = f"-{r.label}-c{r.connections}-s{r.size}" + (f"-r{r.repeat}" if repeats else "")
        out.append(path.with_name(f"{path.stem}{tag}{path.suffix or '.hgrm'}"))
    return out


def write_hgrm_files(path: str | Path, results: Sequence[RunResult]) -> list[Path]:
    """Writes each run's latency distribution as an ``.hgrm`` file (ms).

    Returns:
        The files written (see :func:`hgrm_paths`).
    """
    paths = hgrm_paths(path, results)
    for r, p in zip(results, paths, strict=True):
        header = (
            f"duplex bench echo {r.label}: {r.connections} connections, {r.size} B, "
            f"{r.mode} loop, {r.throughput:,.0f} requests/s\nvalues in milliseconds"
        )
        write_hgrm(decode_histogram(r.histogram), p, header=header)
    return paths
