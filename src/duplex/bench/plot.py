"""Pictures of results (matplotlib, Agg backend: no display needed).

Two kinds:

* the **latency percentile spectrum** of each run: latency (log scale) against the
  percentile, with the x axis spread as 1/(1-p) so that p90, p99, p99.9 get equal
  room. This is HdrHistogram's standard plot; the tail is where models differ.
* for several runs, **throughput against connections** (one line per model and
  payload size), and **p99 against throughput** (the "hockey stick": where latency
  turns up is the knee of the model's capacity).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from duplex.bench.histogram import decode_histogram, percentile_spectrum
from duplex.bench.result import RunResult

__all__ = ["plot_matrix", "plot_runs"]

_TICKS = (0.0, 90.0, 99.0, 99.9, 99.99, 99.999)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _x(percentile: float, cap: float = 1e6) -> float:
    # 1/(1-p); the 100th percentile (1/0) is drawn at ``cap``, the sample count,
    # which is as far as the data can resolve.
    if percentile >= 100.0:
        return cap
    return min(1.0 / (1.0 - percentile / 100.0), cap)


def _spectrum(ax: Any, results: Sequence[RunResult]) -> None:
    for r in results:
        hist = decode_histogram(r.histogram)
        points = percentile_spectrum(hist)
        if not points:
            continue
        cap = max(float(hist.get_total_count()), 10.0)
        tag = f"{r.label} c={r.connections} {r.size} B"
        if r.repeat > 1:
            tag += f" #{r.repeat}"
        ax.plot([_x(p, cap) for p, _ in points], [v for _, v in points], label=tag)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax.yaxis)
    ax.set_xticks([_x(p) for p in _TICKS])
    ax.set_xticklabels([f"{p:g}%" for p in _TICKS])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency by percentile")
    ax.grid(True, which="both", alpha=0.3)
    if results:
        ax.legend(fontsize="small")


def _series(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    sizes = {r.size for r in results}
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        key = r.label if len(sizes) == 1 else f"{r.label} {r.size} B"
        groups.setdefault(key, []).append(r)
    return groups


def _throughput(ax: Any, results: Sequence[RunResult]) -> None:
    for key, runs in _series(results).items():
        by_conns: dict[int, list[float]] = {}
        for r in runs:
            by_conns.setdefault(r.connections, []).append(r.throughput)
        xs = sorted(by_conns)
        ys = [_median(by_conns[x]) for x in xs]
        style = "--" if key.startswith("c-epoll") else "-"
        ax.plot(xs, ys, style, marker="o", label=key)
    ax.set_xscale("log")
    _plain_ticks(ax.xaxis)
    ax.set_xlabel("connections")
    ax.set_ylabel("requests/s")
    ax.set_title("throughput by connections")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def _hockey(ax: Any, results: Sequence[RunResult]) -> None:
    every: list[float] = []
    for key, runs in _series(results).items():
        by_conns: dict[int, list[RunResult]] = {}
        for r in runs:
            by_conns.setdefault(r.connections, []).append(r)
        xs, ys = [], []
        for conns in sorted(by_conns):
            group = by_conns[conns]
            # With --repeat, one point per connection count: the medians.
            xs.append(_median([r.throughput for r in group]))
            ys.append(max(_median([r.latency["p99"] for r in group]), 1e-3))
        style = "--" if key.startswith("c-epoll") else "-"
        ax.plot(xs, ys, style, marker="o", label=key)
        every += ys
    if every and max(every) >= 10 * min(every):  # a log scale only when it is needed
        ax.set_yscale("log")
        _plain_ticks(ax.yaxis)
    ax.set_xlabel("requests/s")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("p99 by throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _plain_ticks(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    def minor(value: float, _pos: int) -> str:
        # Label 2x and 5x between the decades, so a narrow range still has labels.
        return f"{value:g}" if f"{value:e}"[0] in "25" else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def plot_runs(results: Sequence[RunResult], path: str | Path, title: str = "") -> Path:
    """Draws the latency spectrum of the runs, and throughput by connections when
    the runs have more than one connection count.

    Args:
        results: the runs.
        path: the PNG file to write.
        title: the figure's title.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    several = len({r.connections for r in results}) > 1
    fig, axes = plt.subplots(1, 2 if several else 1, figsize=(13 if several else 7.5, 5))
    try:
        ax_list = list(axes) if several else [axes]
        _spectrum(ax_list[0], results)
        if several:
            _throughput(ax_list[1], results)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)


def plot_matrix(results: Sequence[RunResult], path: str | Path, title: str = "") -> Path:
    """Draws a matrix run: throughput by connections per model, and p99 by throughput.

    One pair of panels per payload size.

    Args:
        results: the runs of :func:`duplex.bench.matrix.run_matrix`.
        path: the PNG file to write.
        title: the figure's title.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    sizes = sorted({r.size for r in results}) or [0]
    rows = len(sizes)
    fig, axes = plt.subplots(rows, 2, figsize=(14, 5 * rows), squeeze=False)
    try:
        for row, size in enumerate(sizes):
            runs = [r for r in results if r.size == size]
            _throughput(axes[row][0], runs)
            _hockey(axes[row][1], runs)
            axes[row][0].set_title(f"throughput by connections, {size} B")
            axes[row][1].set_title(f"p99 by throughput, {size} B")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)
