"""Series of runs: servers × payload sizes × connection counts (× repeats).

This is what ``duplex bench echo`` (one server, maybe several connection counts),
``duplex bench matrix`` (every model) and ``benchmarks/echo_throughput.py`` share.
Each server runs in its own process, started once for all of its runs and stopped
after them, pinned to CPU 0 while the generator has the other CPUs (when there are
at least two). With ``reference``, the C epoll server takes the same runs, so every
run has a physical yardstick measured on the same machine at the same time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from duplex.bench.live import LiveLine
from duplex.bench.reference import build_reference
from duplex.bench.result import RunResult
from duplex.bench.runner import run_load
from duplex.bench.servers import REFERENCE_LABEL, BenchServer, plan_cpus
from duplex.bench.spec import BenchError, LoadSpec, Target
from duplex.server.base import get_driver_class

__all__ = ["ServerChoice", "run_series"]


@dataclasses.dataclass(frozen=True, slots=True)
class ServerChoice:
    """One server to load: a duplex model, the C reference, or an existing target.

    Attributes:
        label: its name in reports.
        model: the duplex model to start, or None.
        workers: pool threads / prefork processes for ``model`` (None: default).
        reference: True for the C reference server.
        target: an already running echo server, when neither of the above.
    """

    label: str
    model: str | None = None
    workers: int | None = None
    reference: bool = False
    target: Target | None = None

    @classmethod
    def for_model(cls, model: str, workers: int | None = None) -> ServerChoice:
        """A duplex model (checked now, so a typo fails before anything runs).

        Raises:
            UnknownModel: no such model.
        """
        get_driver_class(model)
        return cls(label=model, model=model, workers=workers)

    @classmethod
    def for_reference(cls) -> ServerChoice:
        """The C reference server."""
        return cls(label=REFERENCE_LABEL, reference=True)

    @classmethod
    def for_target(cls, target: Target) -> ServerChoice:
        """An echo server that is already running."""
        return cls(label=str(target), target=target)


OnResult = Callable[[RunResult], None]
OnError = Callable[[str, BenchError], None]


def run_series(
    servers: Sequence[ServerChoice],
    spec: LoadSpec,
    *,
    connections: Sequence[int] = (),
    sizes: Sequence[int] = (),
    repeat: int = 1,
    pin: bool = True,
    live: LiveLine | None = None,
    on_result: OnResult | None = None,
    on_error: OnError | None = None,
) -> list[RunResult]:
    """Runs ``spec`` against each server for every size and connection count.

    Args:
        servers: what to load, in order.
        spec: the load; its connections and size are replaced by each of
            ``connections`` and ``sizes`` (when given).
        connections: connection counts (default: the spec's).
        sizes: payload sizes (default: the spec's).
        repeat: runs of each combination.
        pin: pin the server to CPU 0 and the generator to the rest (2+ CPUs).
        live: the live progress line (None: no line).
        on_result: called with each result as soon as it is measured.
        on_error: when given, a run that fails is reported to it (with a title) and
            the series goes on (a server that died is started again); without it,
            the first failure ends the series.

    Returns:
        Every result, in the order run.

    Raises:
        BenchError: a server did not start, or a run failed.
    """
    server_cpus, generator_cpus = plan_cpus(pin)
    conns_list = list(connections) or [spec.connections]
    size_list = list(sizes) or [spec.size]
    live = live or LiveLine(False)
    binary = build_reference() if any(s.reference for s in servers) else None
    results: list[RunResult] = []
    for choice in servers:

        def start(choice: ServerChoice = choice) -> BenchServer | None:
            if choice.model is not None:
                return BenchServer.duplex(choice.model, workers=choice.workers, cpus=server_cpus)
            if choice.reference:
                assert binary is not None
                return BenchServer.reference(binary, cpus=server_cpus)
            return None

        server = start()
        try:
            for size in size_list:
                for conns in conns_list:
                    run_spec = spec.replace(connections=conns, size=size)
                    for k in range(1, repeat + 1):
                        title = f"{choice.label} c={conns} {size} B"
                        if repeat > 1:
                            title += f" run {k}/{repeat}"
                        if server is not None and not server.alive:
                            server.stop()
                            server = None
                            server = start()
                        target = server.target if server is not None else choice.target
                        assert target is not None
                        try:
                            with live.run(title) as progress:
                                result = run_load(
                                    target,
                                    run_spec,
                                    label=choice.label,
                                    server=server,
                                    cpus=generator_cpus,
                                    progress=progress,
                                    repeat=k,
                                )
                        except BenchError as exc:
                            if on_error is None:
                                raise
                            on_error(title, exc)
                            continue
                        results.append(result)
                        if on_result is not None:
                            on_result(result)
        finally:
            if server is not None:
                server.stop()
    return results
