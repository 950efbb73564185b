"""``duplex lab threads-vs-cpus``: the best number of threads depends on what they do.

The ``pool`` model (N prethreaded workers) serves 64-byte requests from a closed
loop of clients that keeps every worker busy, while N sweeps from half to four times
the CPU count, for three handlers:

- ``echo``: no work, pure network I/O, all of it Python holding the GIL;
- ``cpu``: about ``cost_ms`` of hashing per request, in C code that releases the
  GIL, as a compiled handler would;
- ``wait``: a ``cost_ms`` blocking wait per request (a database or disk call).

Throughput is measured with ``duplex.bench`` (the project's load generator, in its
own process) and each point is the best of ``repeats`` runs, because other programs
on a shared machine only ever make a run slower. The "knee" of a curve is the
smallest pool that reaches 90 % of the best throughput; the verdict compares the
best throughput with more threads than CPUs against the best with at most as many.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from duplex.bench.machine import process_cpu_seconds
from duplex.lab.common import Experiment, Progress, figure, save_figure
from duplex.lab.errors import ExperimentError
from duplex.lab.helpers import RECORD, calibrate_cpu
from duplex.lab.load import closed_loop
from duplex.lab.procs import Children
from duplex.lab.result import Result, Table, Verdict

__all__ = ["EXPERIMENT", "Params", "run"]

CLAIM = "As many network I/O threads as CPUs is best."


@dataclasses.dataclass(frozen=True)
class Params:
    """Parameters of ``duplex lab threads-vs-cpus``."""

    multiples: tuple[float, ...] = (0.5, 1, 1.5, 2, 3, 4)
    """Pool sizes as multiples of the CPU count (rounded, at least 1)."""
    works: tuple[str, ...] = ("echo", "cpu", "wait")
    """Handlers to sweep: echo, cpu, wait."""
    cost_ms: float = 2.0
    """Work per request for cpu and wait, in ms."""
    duration: float = 1.0
    """Seconds measured per point."""
    warmup: float = 0.3
    """Seconds of load before each measurement."""
    repeats: int = 3
    """Runs per point; the best counts."""
    generator: str = "bench"
    """``bench`` (duplex.bench, in its own process) or ``lab`` (a closed loop in this process)."""


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _measure(port: int, connections: int, params: Params, foreign: list[float]) -> float:
    if params.generator == "bench":
        try:
            from duplex.bench import LoadSpec, Target, run_load
        except ImportError as exc:
            raise ExperimentError(f"generator 'bench' is not available: {exc}") from exc
        result = run_load(
            Target("127.0.0.1", port),
            LoadSpec(
                connections=connections,
                size=RECORD,
                duration=params.duration,
                warmup=params.warmup,
                processes=1,
            ),
        )
        if result.error_count or result.timeouts:
            raise ExperimentError(
                f"the load saw {result.error_count} errors, "
                f"{result.timeouts} timeouts: {result.first_error}"
            )
        if result.foreign_cpu is not None:
            foreign.append(float(result.foreign_cpu))
        return float(result.throughput)
    if params.generator == "lab":
        return closed_loop(
            "127.0.0.1",
            port,
            connections=connections,
            size=RECORD,
            duration=params.duration,
            warmup=params.warmup,
        ).rate
    raise ExperimentError(f"unknown generator {params.generator!r}; use bench or lab")


GAIN = 1.5
"""A handler "gains" from more threads than CPUs when its best rate beyond the CPU
count is at least this many times its best rate at or below it. Ideal curves give
1.0 (computing) and threads/CPUs (waiting)."""

Point = tuple[int, float, float]
"""(threads, requests/s, CPU cores the server used)."""


def _threads(n: int) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"


def _beyond(points: list[Point], cpus: int) -> tuple[Point | None, Point | None]:
    """The best point with at most ``cpus`` threads and the best with more."""
    within = [p for p in points if p[0] <= cpus]
    above = [p for p in points if p[0] > cpus]
    return (
        max(within, key=lambda p: p[1]) if within else None,
        max(above, key=lambda p: p[1]) if above else None,
    )


def _gain(points: list[Point], cpus: int) -> float:
    within, above = _beyond(points, cpus)
    if within is None or above is None or within[1] <= 0:
        return 1.0
    return above[1] / within[1]


def _knee(points: list[Point]) -> int:
    best = max(p[1] for p in points)
    return min(p[0] for p in points if p[1] >= 0.9 * best)


def _share_only(points: list[Point], cpus: int) -> tuple[bool, str]:
    """Whether a gain past ``cpus`` threads came only from a bigger share of busy CPUs.

    True when, at the best point with at most ``cpus`` threads, the server used less
    than 90 % of the CPUs (other programs had the rest), and past that each request
    still cost the same CPU time (within 25 %): the extra threads bought CPU time
    from the scheduler, which shares it per thread, not work done per CPU second.
    """
    within, above = _beyond(points, cpus)
    if within is None or above is None or within[2] <= 0 or above[2] <= 0:
        return False, ""
    cost_in = within[2] / within[1]
    cost_above = above[2] / above[1]
    same_cost = abs(cost_above - cost_in) <= 0.25 * cost_in
    starved = within[2] < 0.9 * cpus
    text = (
        f"with {_threads(within[0])} the server got {within[2]:.2f} of {cpus} cores, with "
        f"{above[0]} it got {above[2]:.2f}, and each request cost {cost_in * 1000:.2f} vs "
        f"{cost_above * 1000:.2f} ms of CPU"
    )
    return same_cost and starved, text


def run(params: Params, progress: Progress) -> Result:
    """Sweeps the pool size for each handler and finds where throughput stops growing.

    Args:
        params: sizes, handlers, work per request, measuring time.
        progress: receives progress lines.

    Returns:
        The result; depends (on the handler) when waiting handlers need more threads
        than CPUs and computing ones do not.
    """
    start = time.monotonic()
    for work in params.works:
        if work not in ("echo", "cpu", "wait"):
            raise ExperimentError(f"unknown work {work!r}; use echo, cpu or wait")
    cpus = _cpus()
    sizes = sorted({max(1, round(m * cpus)) for m in params.multiples})
    connections = 4 * max(sizes)
    passes = calibrate_cpu(params.cost_ms)
    curves: dict[str, list[Point]] = {}
    foreign: list[float] = []
    with Children() as children:
        for work in params.works:
            curves[work] = []
            for size in sizes:
                server, info = children.helper(
                    "duplex.lab.helpers",
                    "--max-seconds",
                    "120",
                    "pool",
                    "--workers",
                    str(size),
                    "--work",
                    work,
                    "--cost-ms",
                    str(params.cost_ms),
                    "--passes",
                    str(passes),
                    name=f"pool({size}, {work})",
                    watches_stdin=False,
                )
                runs: list[Point] = []
                try:
                    for _ in range(max(1, params.repeats)):
                        cpu0 = process_cpu_seconds(server.pid)
                        rate = _measure(int(info["port"]), connections, params, foreign)
                        used = (process_cpu_seconds(server.pid) - cpu0) / (
                            params.warmup + params.duration
                        )
                        runs.append((size, rate, round(used, 3)))
                finally:
                    children.stop(server)
                point = max(runs, key=lambda p: p[1])
                curves[work].append(point)
                progress(
                    f"{work:<5} pool of {size}: {point[1]:,.0f} requests/s, "
                    f"server on {point[2]:.2f} cores"
                )
    knees = {work: _knee(points) for work, points in curves.items()}
    best = {work: max(points, key=lambda p: p[1]) for work, points in curves.items()}
    gains = {work: _gain(points, cpus) for work, points in curves.items()}
    detail = "; ".join(
        f"{w}: best {best[w][1]:,.0f}/s at {_threads(best[w][0])}, x{gains[w]:.2f} from more "
        f"threads than CPUs"
        for w in curves
    )
    cpu_gain, wait_gain = gains.get("cpu"), gains.get("wait")
    share_only, share_text = _share_only(curves.get("cpu", []), cpus)
    depends_on = ""
    if cpu_gain is not None and wait_gain is not None and cpu_gain < GAIN <= wait_gain:
        verdict = Verdict.DEPENDS
        depends_on = "whether the handler computes or waits"
        reason = (
            f"on {cpus} CPUs, going past {cpus} threads multiplied the waiting handler's "
            f"throughput by {wait_gain:.2f} (a thread that waits does not use its CPU) but "
            f"the computing handler's only by {cpu_gain:.2f} (under the x{GAIN:g} that would "
            f"count as a gain)"
        )
        if share_only and cpu_gain > 1.1:
            reason += (
                f", and that much only by taking a bigger share of CPUs other programs were "
                f"using ({share_text})"
            )
        reason += f". {detail}"
    elif cpu_gain is not None and wait_gain is not None and wait_gain >= GAIN and share_only:
        verdict = Verdict.DEPENDS
        depends_on = "whether the handler computes or waits, and on who else uses the CPUs"
        reason = (
            f"the waiting handler gained x{wait_gain:.2f} from more threads than the {cpus} "
            f"CPUs; the computing handler gained x{cpu_gain:.2f} too, but only because other "
            f"programs were using the CPUs and the scheduler shares CPU time per thread: "
            f"{share_text}; a server with the CPUs to itself cannot use more than {cpus} of "
            f"them. {detail}"
        )
    elif all(g < GAIN for g in gains.values()):
        verdict = Verdict.HOLDS
        reason = f"no handler gained x{GAIN:g} from more than {cpus} threads. {detail}"
    else:
        verdict = Verdict.FOLKLORE
        reason = f"even the computing handler gained from more threads than CPUs: {detail}"
    rows = []
    for size in sizes:
        row: list[Any] = [size, f"{size / cpus:g}x"]
        for work in curves:
            found = next((p for p in curves[work] if p[0] == size), None)
            row += [found[1] if found else None, found[2] if found else None]
        rows.append(row)
    columns = ["threads", "x CPUs"]
    for w in curves:
        columns += [f"{w} req/s", f"{w} cores"]
    table = Table(
        f"requests/s of the pool model and CPU cores its process used, {connections} "
        f"closed-loop clients, {RECORD} B requests",
        columns,
        rows,
    )
    numbers: dict[str, Any] = {
        "cpus": cpus,
        "connections": connections,
        "cost_ms": params.cost_ms,
        "hash_passes_per_request": passes,
    }
    for work in curves:
        numbers[f"{work}_best_threads"] = best[work][0]
        numbers[f"{work}_best_rate"] = round(best[work][1], 1)
        numbers[f"{work}_knee_threads"] = knees[work]
        numbers[f"{work}_gain_beyond_cpus"] = round(gains[work], 3)
    if foreign:
        numbers["other_programs_cpu_cores"] = round(sum(foreign) / len(foreign), 2)
    notes = []
    if "echo" in curves:
        most = max(p[2] for p in curves["echo"])
        notes.append(
            f"The echo handler's process never used more than {most:.2f} cores, whatever the "
            f"pool size: all its work is Python holding the GIL, so extra threads only add "
            f"hand-offs and contention."
        )
    notes += [
        "The load generator shares the machine's CPUs with the server, and so do other "
        "programs on a shared machine (measured above): absolute rates are low, the shapes "
        "of the curves are what matters.",
    ]
    return Result(
        name="threads-vs-cpus",
        claim=CLAIM,
        method=(
            f"The real pool model (N worker threads, one epoll thread handing them ready "
            f"connections) runs a handler doing {params.cost_ms:g} ms of work per request "
            f"(hashing that releases the GIL, or a blocking wait) or none; N sweeps "
            f"{', '.join(map(str, sizes))} on {cpus} CPUs; {connections} closed-loop clients "
            f"from {'duplex.bench' if params.generator == 'bench' else 'a lab closed loop'}, "
            f"best of {params.repeats} runs of {params.duration:g} s per point; the server's "
            f"CPU time is read from /proc/PID/stat."
        ),
        verdict=verdict,
        reason=reason,
        numbers=numbers,
        tables=[table],
        series={"curves": {w: [list(p) for p in pts] for w, pts in curves.items()}, "cpus": cpus},
        params=dataclasses.asdict(params),
        notes=notes,
        elapsed=time.monotonic() - start,
        depends_on=depends_on,
    )


def plot(result: Result, path: str) -> None:
    """Throughput against pool size, one line per handler, normalised to its best."""
    plt, fig, ax = figure(8, 4)
    cpus = result.series["cpus"]
    for work, points in result.series["curves"].items():
        best = max(p[1] for p in points) or 1
        ax.plot(
            [p[0] for p in points],
            [p[1] / best for p in points],
            "o-",
            label=f"{work} (best {best:,.0f} req/s)",
        )
    ax.axvline(cpus, color="grey", ls=":", label=f"{cpus} CPUs")
    ax.set_xlabel("pool threads")
    ax.set_ylabel("throughput / best throughput of that handler")
    ax.set_ylim(0, 1.1)
    ax.set_title("Pool size against throughput: computing vs waiting handlers")
    ax.legend(fontsize=8)
    save_figure(plt, fig, path)


EXPERIMENT: Experiment[Params] = Experiment(
    name="threads-vs-cpus",
    title="Threads against CPUs",
    claim=CLAIM,
    full=Params(),
    quick=Params(multiples=(0.5, 1, 2), works=("cpu", "wait"), duration=0.5, warmup=0.2, repeats=1),
    run=run,
    plot=plot,
)
