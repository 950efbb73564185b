"""``duplex lab iterative``: the second client's wait, iterative against concurrent models.

For each model a real ``duplex echo serve`` is started. Client A connects and gets
one echo, so the server is busy with it; client B connects, sends one byte and times
how long its echo takes, while A stays connected for ``hold`` seconds and then
closes. An iterative server answers B only after A closes; a concurrent one answers
at once. B's ``connect()`` is timed too: it completes at once even under the
iterative server, because the kernel finishes the handshake and queues the
connection for a later ``accept()`` (see ``duplex lab backlog``): "one client at a
time" is about being *served*, not about being connected.
"""

from __future__ import annotations

import dataclasses
import selectors
import socket
import time
from typing import Any

from duplex.lab.common import Experiment, Progress, figure, save_figure
from duplex.lab.procs import Children
from duplex.lab.result import Result, Table, Verdict

__all__ = ["EXPERIMENT", "Params", "run"]

CLAIM = "An iterative server serves one client at a time: the second client waits for the first."


@dataclasses.dataclass(frozen=True)
class Params:
    """Parameters of ``duplex lab iterative``."""

    models: tuple[str, ...] = (
        "iterative",
        "fork",
        "thread",
        "pool",
        "select",
        "epoll",
        "asyncio",
        "uvloop",
        "prefork",
    )
    """Models to compare; ``iterative`` must be one of them."""
    hold: float = 0.5
    """Seconds client A stays connected while B waits."""


def _readable(sock: socket.socket, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        return bool(sel.select(timeout))


def _measure(port: int, hold: float) -> dict[str, Any]:
    a = socket.create_connection(("127.0.0.1", port), timeout=10)
    b: socket.socket | None = None
    try:
        a.sendall(b"a")
        if a.recv(1) != b"a":
            raise OSError("client A got no echo")
        t0 = time.perf_counter()
        b = socket.create_connection(("127.0.0.1", port), timeout=10)
        connect_ms = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        b.sendall(b"b")
        a_closed_at: float | None = None
        if not _readable(b, hold):
            a.close()
            a_closed_at = time.perf_counter() - t1
        if not _readable(b, 10):
            raise OSError("client B got no echo within 10 s")
        waited = time.perf_counter() - t1
        if b.recv(1) != b"b":
            raise OSError("client B got a wrong echo")
        return {
            "connect_ms": round(connect_ms, 3),
            "wait_ms": round(waited * 1000, 3),
            "served_after_a_closed": a_closed_at is not None and waited >= a_closed_at,
        }
    finally:
        a.close()
        if b is not None:
            b.close()


def run(params: Params, progress: Progress) -> Result:
    """Times the second client's echo under each model.

    Args:
        params: the models and how long client A holds the server.
        progress: receives progress lines.

    Returns:
        The result; holds when only the iterative server made B wait for A.
    """
    start = time.monotonic()
    rows: list[dict[str, Any]] = []
    with Children() as children:
        for model in params.models:
            server = children.echo_server(model, "--workers", "2")
            try:
                row = {"model": model, **_measure(server.port, params.hold)}
            finally:
                children.stop(server)
            progress(
                f"{model:<10} B connected in {row['connect_ms']:.2f} ms, "
                f"echoed after {row['wait_ms']:.2f} ms"
            )
            rows.append(row)
    hold_ms = params.hold * 1000
    it = next((r for r in rows if r["model"] == "iterative"), None)
    others = [r for r in rows if r["model"] != "iterative"]
    slowest = max(others, key=lambda r: r["wait_ms"]) if others else None
    if (
        it is not None
        and it["served_after_a_closed"]
        and it["wait_ms"] >= 0.9 * hold_ms
        and slowest is not None
        and slowest["wait_ms"] < 0.5 * hold_ms
    ):
        verdict = Verdict.HOLDS
        reason = (
            f"under the iterative server B's echo came {it['wait_ms']:.0f} ms after it was sent, "
            f"only once A closed (A held the server {hold_ms:.0f} ms); under the "
            f"{len(others)} concurrent models it came within {slowest['wait_ms']:.2f} ms "
            f"(slowest: {slowest['model']}). B's connect() took {it['connect_ms']:.2f} ms even "
            f"under the iterative server: the kernel queues it until accept()"
        )
    elif it is None:
        verdict = Verdict.DEPENDS
        reason = "the iterative model was not among the models measured"
    else:
        verdict = Verdict.FOLKLORE
        reason = (
            f"iterative: B waited {it['wait_ms']:.1f} ms (served after A closed: "
            f"{it['served_after_a_closed']}); slowest concurrent model: "
            f"{slowest['wait_ms'] if slowest else '-'} ms"
        )
    table = Table(
        f"client B while client A holds the server for {hold_ms:.0f} ms",
        ["model", "B connect() (ms)", "B echo after (ms)", "served only after A closed"],
        [[r["model"], r["connect_ms"], r["wait_ms"], r["served_after_a_closed"]] for r in rows],
    )
    numbers: dict[str, Any] = {"hold_ms": hold_ms}
    if it is not None:
        numbers["iterative_wait_ms"] = it["wait_ms"]
        numbers["iterative_connect_ms"] = it["connect_ms"]
    if slowest is not None:
        numbers["slowest_concurrent_wait_ms"] = slowest["wait_ms"]
        numbers["slowest_concurrent_model"] = slowest["model"]
    return Result(
        name="iterative",
        claim=CLAIM,
        method=(
            "For each model a real `duplex echo serve` runs on 127.0.0.1. Client A connects "
            "and gets one echo, then holds the connection; client B connects and sends one "
            f"byte; A closes after {params.hold:g} s unless B's echo came first."
        ),
        verdict=verdict,
        reason=reason,
        numbers=numbers,
        tables=[table],
        series={"rows": rows, "hold_ms": hold_ms},
        params=dataclasses.asdict(params),
        elapsed=time.monotonic() - start,
    )


def plot(result: Result, path: str) -> None:
    """B's wait per model (log scale), with A's hold time."""
    rows = result.series["rows"]
    plt, fig, ax = figure(8, 3.8)
    names = [r["model"] for r in rows]
    waits = [max(r["wait_ms"], 0.001) for r in rows]
    colors = ["#cc0000" if r["served_after_a_closed"] else "#3d85c6" for r in rows]
    ax.bar(names, waits, color=colors)
    ax.axhline(result.series["hold_ms"], color="grey", ls=":", label="A holds the server")
    ax.set_yscale("log")
    ax.set_ylabel("ms until client B's echo (log)")
    ax.set_title("The second client's wait: iterative vs concurrent models")
    ax.legend(fontsize=8)
    for label in ax.get_xticklabels():
        label.set_rotation(30)
    save_figure(plt, fig, path)


EXPERIMENT: Experiment[Params] = Experiment(
    name="iterative",
    title="Iterative servers serve one client at a time",
    claim=CLAIM,
    full=Params(),
    quick=Params(models=("iterative", "thread", "epoll"), hold=0.3),
    run=run,
    plot=plot,
)
