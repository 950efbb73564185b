"""Series of runs: several servers, sizes and connection counts; failures reported."""

from __future__ import annotations

from collections.abc import Callable

from duplex.bench.matrix import ServerChoice, run_series
from duplex.bench.spec import BenchError, LoadSpec
from duplex.testing.servers import free_port

from .controlled import ControlledEchoServer

Make = Callable[..., ControlledEchoServer]

SPEC = LoadSpec(duration=0.3, warmup=0.0, processes=1, timeout=1.0)


def test_every_combination_in_order(controlled: Make) -> None:
    server = controlled()
    seen: list[tuple[int, int]] = []
    results = run_series(
        [ServerChoice.for_target(server.target)],
        SPEC,
        connections=[1, 2],
        sizes=[64, 128],
        on_result=lambda r: seen.append((r.size, r.connections)),
    )
    assert seen == [(64, 1), (64, 2), (128, 1), (128, 2)]
    assert [r.label for r in results] == [str(server.target)] * 4
    assert all(r.clean for r in results)


def test_a_failed_run_is_reported_and_the_series_goes_on(controlled: Make) -> None:
    from duplex.bench.spec import Target

    dead = ServerChoice.for_target(Target("127.0.0.1", free_port()))
    alive = ServerChoice.for_target(controlled().target)
    errors: list[tuple[str, BenchError]] = []
    results = run_series(
        [dead, alive], SPEC, on_error=lambda title, exc: errors.append((title, exc))
    )
    assert len(errors) == 1
    assert "cannot load" in str(errors[0][1])
    assert [r.label for r in results] == [alive.label]


def test_a_model_server_is_started_once_for_its_runs() -> None:
    results = run_series([ServerChoice.for_model("uvloop")], SPEC, connections=[1, 3], repeat=2)
    assert [(r.connections, r.repeat) for r in results] == [(1, 1), (1, 2), (3, 1), (3, 2)]
    assert len({r.target for r in results}) == 1  # one server process, one port
    assert all(r.model == "uvloop" and r.clean for r in results)
    assert all(r.server_cpu is not None for r in results)
