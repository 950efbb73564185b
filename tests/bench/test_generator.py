"""One generator process's logic, run in this process (no spawn) against the test server."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable

import pytest

from duplex.bench import generator
from duplex.bench.generator import WorkerPlan, WorkerResult, _PreciseTimer, _Worker
from duplex.bench.histogram import decode_histogram

from .controlled import ControlledEchoServer

Make = Callable[..., ControlledEchoServer]


def run_worker(server: ControlledEchoServer, **changes: object) -> tuple[WorkerResult, list[str]]:
    """Runs one worker to its end; returns its result and the kinds of messages it sent."""
    fields: dict[str, object] = {
        "index": 0,
        "host": "127.0.0.1",
        "port": server.port,
        "connections": 2,
        "size": 64,
        "pipeline": 1,
        "rate": None,
        "requests": None,
        "duration": 0.5,
        "warmup": 0.0,
        "timeout": 2.0,
        "time_limit": 30.0,
    }
    fields.update(changes)
    plan = WorkerPlan(**fields)  # type: ignore[arg-type]
    parent, child = multiprocessing.Pipe()
    try:
        parent.send(("go", time.monotonic()))  # buffered until the worker asks
        loop = asyncio.new_event_loop()
        try:
            result = loop.run_until_complete(_Worker(plan, child).run())
        finally:
            loop.close()
        kinds = []
        while parent.poll():
            kinds.append(parent.recv()[0])
    finally:
        parent.close()
        child.close()
    return result, kinds


def test_closed_loop_worker(controlled: Make) -> None:
    result, kinds = run_worker(controlled())
    assert kinds[0] == "ready"
    assert result.connected == 2
    assert result.completed == result.sent > 0
    assert result.in_window > 0
    assert decode_histogram(result.latency).get_total_count() == result.completed
    assert result.service == ""  # closed loop: latency is the service time


def test_open_loop_worker_on_timerfd(controlled: Make) -> None:
    result, _ = run_worker(controlled(), rate=400.0, duration=0.5)
    assert result.sent == pytest.approx(200, abs=2)
    assert result.completed == result.sent
    assert decode_histogram(result.service).get_total_count() == result.completed


def test_open_loop_worker_without_timerfd(
    controlled: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_PreciseTimer, "create", classmethod(lambda cls, loop, cb: None))
    result, _ = run_worker(controlled(), rate=400.0, duration=0.5)
    assert result.sent == pytest.approx(200, abs=2)
    assert result.completed == result.sent


def test_precise_timer_fires_at_the_time_asked() -> None:
    loop = asyncio.new_event_loop()
    fired: list[float] = []

    def on_fire() -> None:
        fired.append(time.monotonic())
        loop.stop()

    try:
        timer = _PreciseTimer.create(loop, on_fire)
        assert timer is not None
        when = time.monotonic() + 0.05
        timer.arm(when)
        loop.call_later(5.0, loop.stop)  # a bound, should the timer never fire
        loop.run_forever()
        timer.close()
    finally:
        loop.close()
    assert fired
    assert fired[0] >= when  # never early


def test_a_worker_that_gets_no_go_gives_up(
    controlled: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generator, "GO_TIMEOUT", 0.1)
    server = controlled()
    plan = WorkerPlan(0, "127.0.0.1", server.port, 1, 64, 1, None, None, 1.0, 0.0, 1.0, 5.0)
    parent, child = multiprocessing.Pipe()
    try:
        loop = asyncio.new_event_loop()
        try:
            result = loop.run_until_complete(_Worker(plan, child).run())
        finally:
            loop.close()
    finally:
        parent.close()
        child.close()
    assert result.connected == 1
    assert result.sent == 0
