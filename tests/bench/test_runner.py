"""The generator measures what it claims, against a server whose misbehaviour is known.

No timing targets: every assertion compares what was measured with a delay, stall
or fault that the test server itself injected, with generous slack for a shared,
noisy machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from duplex.bench.runner import plan_workers, run_load
from duplex.bench.spec import BenchError, LoadSpec, Target
from duplex.testing.servers import free_port, scaled

from .controlled import ControlledEchoServer

Make = Callable[..., ControlledEchoServer]

DELAY = 0.020
STALL = 0.300


def quick(**changes: object) -> LoadSpec:
    """A short run: no warm-up, one generator process, half a second."""
    base = LoadSpec(connections=1, duration=0.5, warmup=0.0, timeout=5.0, processes=1)
    return base.replace(**changes)


# ------------------------------------------------------------------ known delay


def test_closed_loop_percentiles_contain_the_injected_delay(controlled: Make) -> None:
    server = controlled(delay=DELAY)
    result = run_load(server.target, quick(connections=2, duration=0.6))
    assert result.completed > 0
    assert result.clean, result.first_error
    # HdrHistogram keeps 3 digits; recorded values are whole microseconds.
    assert result.latency["min"] >= DELAY * 1000 * 0.99
    assert result.latency["p50"] >= DELAY * 1000 * 0.99
    assert result.latency["p50"] < DELAY * 1000 * 10  # generous: a busy machine
    # Two connections each waiting 20 ms per echo cannot exceed 100 echoes/s.
    assert result.throughput <= 2 / DELAY * 1.05
    assert result.mode == "closed"


def test_open_loop_percentiles_contain_the_injected_delay(controlled: Make) -> None:
    server = controlled(delay=DELAY)
    result = run_load(server.target, quick(connections=2, rate=40.0, pipeline=4, duration=0.75))
    assert result.mode == "open"
    assert result.completed > 0
    assert result.latency["p50"] >= DELAY * 1000 * 0.99
    assert result.service is not None
    assert result.service["min"] >= DELAY * 1000 * 0.99


def test_processes_merge_histograms(controlled: Make) -> None:
    server = controlled(delay=DELAY)
    result = run_load(server.target, quick(connections=4, processes=2, duration=0.5))
    assert result.processes == 2
    assert len(result.generator_cpu) == 2
    assert result.latency["min"] >= DELAY * 1000 * 0.99
    assert result.completed > 0


# ------------------------------------------------------------------ coordinated omission


def test_open_loop_shows_a_server_stall_that_closed_loop_hides(controlled: Make) -> None:
    stall_ms = STALL * 1000

    closed_server = controlled(stall_after=100, stall=STALL)
    closed = run_load(closed_server.target, quick(connections=1, duration=1.2))
    assert closed_server.stalled.is_set()
    assert closed.clean, closed.first_error
    # The closed loop saw the stall once: one slow request among many (200 is
    # enough for it to be under 1 %; an idle machine does tens of thousands).
    assert closed.latency["max"] >= stall_ms * 0.9
    assert closed.completed >= 200
    assert closed.latency["p99"] < stall_ms / 2

    open_server = controlled(stall_after=100, stall=STALL)
    opened = run_load(open_server.target, quick(connections=1, rate=400.0, duration=1.2))
    assert open_server.stalled.is_set()
    assert opened.clean, opened.first_error
    # The open loop kept scheduling during the stall: about 120 requests waited,
    # from 0 up to 300 ms; the slowest 1 % of ~480 waited nearly the whole stall.
    assert opened.latency["p99"] >= stall_ms * 0.6
    assert opened.latency["p90"] > closed.latency["p90"]


# ------------------------------------------------------------------ errors


def test_a_corrupted_byte_is_an_error(controlled: Make) -> None:
    server = controlled(corrupt_byte=64 * 30 + 5)
    result = run_load(server.target, quick(connections=2, duration=0.5))
    assert server.corrupted.is_set()
    assert result.errors.get("mismatch") == 1
    assert "differs at byte 5 of 64" in result.first_error
    assert result.connections_lost == 1
    assert not result.clean
    # The other connection went on.
    assert result.completed > 30


def test_a_server_that_closes_is_an_error(controlled: Make) -> None:
    server = controlled(close_after=10)
    result = run_load(server.target, quick(connections=2, duration=0.5))
    assert result.connections_lost == 1
    assert result.errors.get("closed", 0) + result.errors.get("reset", 0) == 1
    assert result.completed > 10


def test_connect_refused_is_reported() -> None:
    target = Target("127.0.0.1", free_port())
    with pytest.raises(BenchError, match="cannot load"):
        run_load(target, quick(timeout=2.0))


# ------------------------------------------------------------------ bounds


def test_requests_bound_stops_the_run(controlled: Make) -> None:
    server = controlled()
    result = run_load(server.target, quick(connections=3, duration=None, requests=300))
    assert result.completed == 300
    assert result.sent == 300
    assert result.clean


def test_requests_bound_in_the_open_loop(controlled: Make) -> None:
    server = controlled()
    spec = quick(connections=2, duration=None, requests=50, rate=500.0)
    result = run_load(server.target, spec)
    assert result.completed == 50
    assert result.sent == 50


def test_duration_bound_stops_the_run(controlled: Make) -> None:
    server = controlled()
    start = time.monotonic()
    result = run_load(server.target, quick(connections=2, duration=0.5, warmup=0.2))
    elapsed = time.monotonic() - start
    # The window closes on a loop timer (1 ms resolution): late, or a hair early.
    assert 0.5 - 0.01 <= result.window < 0.5 + scaled(5)
    assert result.completed > 0
    # Bounded: process start, warm-up, window, drain; nowhere near the timeout's scale.
    assert elapsed < scaled(30)


def test_a_hanging_server_cannot_keep_the_run_alive(controlled: Make) -> None:
    server = controlled(hang=True)
    start = time.monotonic()
    result = run_load(server.target, quick(connections=2, duration=60.0, timeout=0.5))
    elapsed = time.monotonic() - start
    assert result.timeouts == 2
    assert result.completed == 0
    assert result.connections_lost == 2
    # Every connection timed out, so the run ended long before its 60 s.
    assert elapsed < scaled(30)


def test_a_hanging_server_with_only_a_request_bound(controlled: Make) -> None:
    server = controlled(hang=True)
    spec = quick(connections=1, duration=None, requests=1000, timeout=0.5)
    result = run_load(server.target, spec)
    assert result.timeouts == 1
    assert result.completed == 0


def test_warmup_is_excluded(controlled: Make) -> None:
    # Warm-up requests are answered but not counted: with a request bound, exactly
    # the measured ones are in the histogram.
    server = controlled()
    spec = quick(connections=1, duration=None, requests=100, warmup=0.3)
    result = run_load(server.target, spec)
    assert result.completed == 100
    assert server.echoed // 64 > 100


def test_pipeline_keeps_several_requests_in_flight(controlled: Make) -> None:
    server = controlled(delay=DELAY)
    result = run_load(server.target, quick(connections=1, pipeline=4, duration=0.5))
    assert result.clean, result.first_error
    assert result.latency["min"] >= DELAY * 1000 * 0.99
    # One connection, one request at a time, could not beat 1/DELAY per second.
    assert result.throughput > 1 / DELAY


def test_large_payloads_arrive_in_pieces_and_are_checked(controlled: Make) -> None:
    server = controlled(size=256 * 1024, corrupt_byte=256 * 1024 * 3 + 100_000)
    result = run_load(server.target, quick(size=256 * 1024, duration=0.5))
    assert result.errors.get("mismatch") == 1
    assert "differs at byte 100000" in result.first_error


# ------------------------------------------------------------------ planning


def test_plan_workers_shares_connections_rate_and_requests() -> None:
    spec = LoadSpec(connections=10, rate=1000.0, requests=101, processes=3)
    plans = plan_workers(Target("127.0.0.1", 7), spec, cpus=[1, 2])
    assert [p.connections for p in plans] == [4, 3, 3]
    assert sum(p.rate or 0 for p in plans) == pytest.approx(1000.0)
    assert sum(p.requests or 0 for p in plans) == 101
    assert [p.cpus for p in plans] == [(1,), (2,), (1,)]


def test_plan_workers_never_has_an_idle_process() -> None:
    plans = plan_workers(Target("127.0.0.1", 7), LoadSpec(connections=2, processes=8))
    assert len(plans) == 2


def test_progress_is_reported_during_the_run(controlled: Make) -> None:
    server = controlled()
    seen: list[dict[str, object]] = []
    run_load(server.target, quick(duration=1.0, warmup=0.3), progress=seen.append)
    assert seen
    assert any(info["measuring"] for info in seen)
    assert any(not info["measuring"] for info in seen)
    assert max(int(info["in_window"]) for info in seen) > 0  # type: ignore[call-overload]


def test_live_line_runs_a_series(controlled: Make) -> None:
    from duplex.bench.live import LiveLine
    from duplex.bench.matrix import ServerChoice, run_series

    server = controlled()
    results = run_series(
        [ServerChoice.for_target(server.target)], quick(duration=0.6), live=LiveLine(True)
    )
    assert results[0].completed > 0


def test_the_parent_waits_without_spinning(controlled: Make) -> None:
    # The parent only hands out work and collects results; if it polled in a loop it
    # would take a CPU from the generator or the server it measures.
    server = controlled()
    wall, cpu = time.monotonic(), time.thread_time()  # the test server has threads
    run_load(server.target, quick(duration=1.5, warmup=0.2))
    wall, cpu = time.monotonic() - wall, time.thread_time() - cpu
    assert cpu < 0.3 * wall
