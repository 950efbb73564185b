"""Latency histograms: HdrHistogram, recorded cheaply, moved between processes, merged.

Values are recorded in **microseconds** from 1 µs to one hour with three significant
digits, so every percentile is exact to 0.1 %. ``hdrh``'s ``record_value`` is pure
Python and costs about 0.7 µs, which is as much as an echo round trip's own work in
the generator; :class:`LatencyRecorder` therefore counts values in a dict (about
50 ns) and folds the dict into the histogram in batches. A histogram crosses a process
boundary as its standard compressed base64 encoding (the ``HISTFAAA...`` form that
every HdrHistogram implementation reads), and merging adds the counts: percentiles of
a merged histogram are the percentiles of all samples, not an average of percentiles.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hdrh.histogram import HdrHistogram

__all__ = [
    "HIGHEST_US",
    "PERCENTILES",
    "LatencyRecorder",
    "decode_histogram",
    "encode_histogram",
    "merge_histograms",
    "new_histogram",
    "percentile_spectrum",
    "summarize",
    "write_hgrm",
]

HIGHEST_US = 3_600_000_000
"""The largest value a histogram holds: one hour, in microseconds. Larger values clamp."""

SIGNIFICANT_DIGITS = 3
"""Value precision: 3 digits, i.e. within 0.1 % at any magnitude."""

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
)
"""The percentiles every report shows, by name (plus min, mean and max)."""

FLUSH_ENTRIES = 50_000
"""Distinct values a :class:`LatencyRecorder` holds before it folds them in."""


def new_histogram() -> HdrHistogram:
    """Returns an empty histogram for microsecond values from 1 µs to one hour."""
    return HdrHistogram(1, HIGHEST_US, SIGNIFICANT_DIGITS)


def encode_histogram(hist: HdrHistogram) -> str:
    """Returns the compressed base64 encoding of ``hist`` (to send it to another process)."""
    encoded: bytes = hist.encode()
    return encoded.decode("ascii")


def decode_histogram(encoded: str) -> HdrHistogram:
    """Returns the histogram that :func:`encode_histogram` encoded."""
    hist = new_histogram()
    if encoded:
        hist.decode_and_add(encoded.encode("ascii"))
    return hist


def merge_histograms(encoded: Iterable[str]) -> HdrHistogram:
    """Adds encoded histograms together (e.g. one per generator process).

    Args:
        encoded: histograms as :func:`encode_histogram` returns them.

    Returns:
        One histogram holding every sample of all of them.
    """
    total = new_histogram()
    for item in encoded:
        if item:
            total.decode_and_add(item.encode("ascii"))
    return total


class LatencyRecorder:
    """Counts latencies in a dict and folds them into an HdrHistogram in batches.

    A hot loop may count into :attr:`counts` itself (``counts[us] = counts.get(us, 0)
    + 1``, values in whole microseconds) and call :meth:`maybe_flush` now and then:
    the dict then holds at most about :data:`FLUSH_ENTRIES` distinct values, so
    memory does not grow with the run's length.

    Attributes:
        hist: the histogram the counts are folded into.
        counts: microseconds -> how many times, not yet folded in.
    """

    __slots__ = ("counts", "hist")

    def __init__(self) -> None:
        self.hist = new_histogram()
        self.counts: dict[int, int] = {}

    def record(self, seconds: float) -> None:
        """Records one latency given in seconds (negative values count as 0)."""
        us = int(seconds * 1_000_000)
        counts = self.counts
        counts[us] = counts.get(us, 0) + 1
        if len(counts) > FLUSH_ENTRIES:
            self.flush()

    def maybe_flush(self) -> None:
        """Folds the counts in when there are more than :data:`FLUSH_ENTRIES` of them."""
        if len(self.counts) > FLUSH_ENTRIES:
            self.flush()

    def flush(self) -> None:
        """Folds the counted values into :attr:`hist`."""
        record = self.hist.record_value
        for us, count in self.counts.items():
            record(min(max(us, 1), HIGHEST_US), count)
        self.counts.clear()  # in place: hot loops hold a reference to this dict

    def encoded(self) -> str:
        """Flushes and returns the histogram's encoding."""
        self.flush()
        return encode_histogram(self.hist)


def summarize(hist: HdrHistogram) -> dict[str, float]:
    """Returns min, mean, the :data:`PERCENTILES` and max of ``hist``, in milliseconds.

    An empty histogram gives zeros.
    """
    out: dict[str, float] = {}
    if hist.get_total_count() == 0:
        out["min"] = out["mean"] = out["max"] = 0.0
        for name, _ in PERCENTILES:
            out[name] = 0.0
        return out
    out["min"] = hist.get_min_value() / 1000
    out["mean"] = hist.get_mean_value() / 1000
    for name, q in PERCENTILES:
        out[name] = hist.get_value_at_percentile(q) / 1000
    out["max"] = hist.get_max_value() / 1000
    return out


def percentile_spectrum(hist: HdrHistogram, ticks: int = 5) -> list[tuple[float, float]]:
    """Returns ``(percentile, milliseconds)`` points of the latency spectrum.

    This is the curve of an ``.hgrm`` file (HdrHistogram's percentile iterator with
    ``ticks`` per halving distance), the one plotted with 1/(1-p) on a log axis.
    """
    points: list[tuple[float, float]] = []
    if hist.get_total_count() == 0:
        return points
    for item in hist.get_percentile_iterator(ticks):
        points.append((float(item.percentile_level_iterated_to), item.value_iterated_to / 1000))
    return points


def write_hgrm(hist: HdrHistogram, path: str | Path, *, header: str = "") -> None:
    """Writes the percentile distribution of ``hist`` in HdrHistogram's ``.hgrm`` text form.

    Values are in milliseconds, as HdrHistogram's plotter
    (hdrhistogram.github.io/HdrHistogram/plotFiles.html) expects.

    Args:
        hist: the histogram.
        path: the file to write (replaced).
        header: optional comment lines written first, each prefixed with ``#``.
    """
    with open(path, "wb") as fh:
        for line in header.splitlines():
            fh.write(f"# {line}\n".encode())
        if hist.get_total_count() == 0:
            fh.write(b"# no samples\n")
            return
        hist.output_percentile_distribution(fh, 1000)
