"""Histograms: recorded in microseconds, encoded across processes, merged exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from duplex.bench.histogram import (
    FLUSH_ENTRIES,
    LatencyRecorder,
    decode_histogram,
    encode_histogram,
    merge_histograms,
    new_histogram,
    percentile_spectrum,
    summarize,
    write_hgrm,
)


def recorder_of(values_ms: list[float]) -> LatencyRecorder:
    rec = LatencyRecorder()
    for v in values_ms:
        rec.record(v / 1000)
    return rec


def test_summary_is_in_milliseconds() -> None:
    rec = recorder_of([float(i) for i in range(1, 101)])  # 1..100 ms
    rec.flush()
    s = summarize(rec.hist)
    assert s["min"] == pytest.approx(1.0, rel=1e-3)
    assert s["p50"] == pytest.approx(50.0, rel=1e-3)
    assert s["p90"] == pytest.approx(90.0, rel=1e-3)
    assert s["p99"] == pytest.approx(99.0, rel=1e-3)
    assert s["max"] == pytest.approx(100.0, rel=1e-3)
    assert s["mean"] == pytest.approx(50.5, rel=1e-2)


def test_empty_summary_is_zeros() -> None:
    s = summarize(new_histogram())
    assert set(s) == {"min", "mean", "p50", "p90", "p99", "p99.9", "max"}
    assert all(v == 0.0 for v in s.values())
    assert percentile_spectrum(new_histogram()) == []


def test_encode_decode_round_trip() -> None:
    rec = recorder_of([0.5, 1.0, 2.0, 400.0])
    back = decode_histogram(rec.encoded())
    assert back.get_total_count() == 4
    assert summarize(back) == summarize(rec.hist)
    assert decode_histogram("").get_total_count() == 0
    assert encode_histogram(back) == encode_histogram(rec.hist)


def test_merge_is_the_histogram_of_all_samples() -> None:
    fast = recorder_of([1.0] * 99)
    slow = recorder_of([100.0])
    merged = merge_histograms([fast.encoded(), slow.encoded(), ""])
    assert merged.get_total_count() == 100
    s = summarize(merged)
    # Not an average of percentiles: the one slow sample is the max, p99 is fast.
    assert s["p99"] == pytest.approx(1.0, rel=1e-3)
    assert s["max"] == pytest.approx(100.0, rel=1e-3)


def test_recorder_folds_in_batches_without_losing_counts() -> None:
    rec = LatencyRecorder()
    counts = rec.counts
    for us in range(FLUSH_ENTRIES + 10):
        rec.record(us / 1_000_000)
    assert rec.counts is counts  # hot loops keep their reference
    assert len(rec.counts) < FLUSH_ENTRIES
    rec.flush()
    assert rec.hist.get_total_count() == FLUSH_ENTRIES + 10


def test_values_out_of_range_are_clamped() -> None:
    rec = LatencyRecorder()
    rec.record(-1.0)
    rec.record(10 * 3600.0)
    assert decode_histogram(rec.encoded()).get_total_count() == 2


def test_hgrm_file(tmp_path: Path) -> None:
    rec = recorder_of([1.0, 2.0, 3.0])
    rec.flush()
    path = tmp_path / "x.hgrm"
    write_hgrm(rec.hist, path, header="first\nsecond")
    text = path.read_text()
    assert text.startswith("# first\n# second\n")
    assert "Percentile" in text
    assert "#[Max     =" in text
    empty = tmp_path / "empty.hgrm"
    write_hgrm(new_histogram(), empty)
    assert "no samples" in empty.read_text()


def test_spectrum_reaches_the_max() -> None:
    rec = recorder_of([1.0] * 50 + [10.0] * 50)
    rec.flush()
    points = percentile_spectrum(rec.hist)
    assert points[-1][0] == pytest.approx(100.0)
    assert points[-1][1] == pytest.approx(10.0, rel=1e-3)
