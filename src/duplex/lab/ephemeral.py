"""``duplex lab ephemeral``: the client's port, its range, and why it runs out per destination.

``connect()`` on an unbound socket makes the kernel pick a local port from
``net.ipv4.ip_local_port_range``. The pick must make the 4-tuple (source address,
source port, destination address, destination port) unique, so the range limits the
connections from one source address *to one destination*, not in total. The run:

1. a few connections show which ports the kernel picks;
2. holder processes connect to server A until ``connect()`` fails with
   EADDRNOTAVAIL, counting the connections (several processes, because one may
   hold only 20,000 descriptors here);
3. with every port of the range in use towards A, connections to server B succeed
   anyway, on ports already in use towards A.

``--quick`` narrows the range *for its own sockets only* (IP_LOCAL_PORT_RANGE, Linux
6.3+) to exhaust 64 ports instead of the system's ~28,000; the sysctl is never
touched. Ports bound by listeners on this machine are skipped by ``connect()``,
so the expected count is the range minus the listening ports inside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import struct
import time

from duplex.inspect.readers import read_ephemeral_range, read_tcp
from duplex.lab.common import Experiment, Progress, figure, save_figure
from duplex.lab.errors import ExperimentError
from duplex.lab.fleet import Fleet
from duplex.lab.procs import Children
from duplex.lab.result import Result, Table, Verdict

__all__ = ["EXPERIMENT", "Params", "run"]

CLAIM = (
    "The kernel chooses the client's port (the ephemeral port); one client address can "
    "open only about 28,000 connections to one destination, but the same ports serve "
    "again toward another destination, because the 4-tuple is the key."
)


@dataclasses.dataclass(frozen=True)
class Params:
    """Parameters of ``duplex lab ephemeral``."""

    port_window: int = 0
    """0: the system range. N: a per-socket range of N ports (IP_LOCAL_PORT_RANGE)."""
    per_holder: int = 15000
    """Connections per holder process (below the 20,000 open-files limit)."""
    sample: int = 32
    """Connections opened first, to look at the ports picked."""
    reuse: int = 100
    """Connections to a second destination once the first is exhausted."""
    server_workers: int = 3
    """Prefork workers of server A (each holds its share of the accepted connections)."""
    time_limit: float = 180.0
    """Seconds, at most, for the connecting."""


def _listening_ports() -> set[int]:
    return {e.local.port for e in read_tcp() if e.is_listening}


def _window(lo: int, hi: int, width: int, busy: set[int]) -> tuple[int, int]:
    """The first ``width`` ports of [lo, hi] (from its middle) with no listener in them."""
    start = (lo + hi) // 2
    for base in [*range(start, hi - width + 2, width), *range(lo, start, width)]:
        if not any(base <= p < base + width for p in busy):
            return base, base + width - 1
    raise ExperimentError(f"no {width} free ports in {lo}-{hi}")


def _sample(port: int, count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()


def run(params: Params, progress: Progress) -> Result:
    """Exhausts the ephemeral ports toward one destination, then uses them toward another.

    Args:
        params: the range (system or a narrow window), holder size, sample sizes.
        progress: receives progress lines.

    Returns:
        The result; holds when connect() ran out after about the range's size and the
        ports served again toward the second destination.
    """
    start = time.monotonic()
    lo, hi = read_ephemeral_range()
    with Children() as children:
        server_a = children.echo_server("prefork", "--workers", str(params.server_workers))
        server_b = children.echo_server("epoll")
        sample = _sample(server_a.port, params.sample)
        in_range = sum(lo <= p <= hi for p in sample)
        progress(f"range {lo}-{hi}; the kernel picked {sample[:8]}...")
        busy = _listening_ports()
        if params.port_window:
            wlo, whi = _window(lo, hi, params.port_window, busy)
            port_range: list[int] | None = [wlo, whi]
        else:
            wlo, whi = lo, hi
            port_range = None
        size = whi - wlo + 1
        bound = sorted(p for p in busy if wlo <= p <= whi)
        expected = size - len(bound)
        fleet = Fleet(children, params.time_limit + 60)
        ports_a: list[int] = []
        per_holder: list[int] = []
        error: str | None = None
        deadline = time.monotonic() + params.time_limit
        t0 = time.monotonic()
        for _ in range(size // max(1, params.per_holder) + 3):
            (holder,) = fleet.start(1)
            [answer] = fleet.connect_all(
                [holder],
                [
                    {
                        "host": "127.0.0.1",
                        "port": server_a.port,
                        "count": params.per_holder,
                        "port_range": port_range,
                        "record_ports": True,
                    }
                ],
                max(1.0, deadline - time.monotonic()),
            )
            ports_a += answer["ports"]
            per_holder.append(int(answer["opened"]))
            error = answer["error"]
            progress(
                f"holder {len(per_holder)}: {answer['opened']} connections to A "
                f"({len(ports_a)} in all), then {error or 'its share was done'}"
            )
            if error is not None:
                break
        connect_seconds = time.monotonic() - t0
        (reuser,) = fleet.start(1)
        [reuse] = fleet.connect_all(
            [reuser],
            [
                {
                    "host": "127.0.0.1",
                    "port": server_b.port,
                    "count": params.reuse,
                    "port_range": port_range,
                    "record_ports": True,
                }
            ],
            60,
        )
        used = set(ports_a)
        reused = sum(p in used for p in reuse["ports"])
        progress(f"then {reuse['opened']} connections to B, {reused} of them on ports in use to A")
        fleet.close_all()
    total = len(ports_a)
    distinct = len(used)
    even = sum(p % 2 == 0 for p in ports_a[: max(1, total // 2)]) / max(1, total // 2)
    tolerance = max(2, int(0.01 * size))
    exhausted = error == "EADDRNOTAVAIL"
    near = expected - tolerance <= total <= size
    reuse_ok = reuse["opened"] == params.reuse and reused == reuse["opened"]
    sample_ok = in_range == len(sample)
    scope = "the system range" if not params.port_window else f"a per-socket window of {size}"
    if exhausted and near and reuse_ok and sample_ok:
        verdict = Verdict.HOLDS
        reason = (
            f"every port the kernel picked was in {lo}-{hi}; with {scope} ({size:,} ports, "
            f"{len(bound)} of them taken by listeners) connect() to one destination failed with "
            f"EADDRNOTAVAIL after {total:,} connections ({distinct:,} distinct ports, spread over "
            f"{len(per_holder)} processes); then all {reuse['opened']} connections to a second "
            f"destination succeeded on ports already in use toward the first"
        )
    elif exhausted and near and sample_ok:
        verdict = Verdict.DEPENDS
        reason = (
            f"ran out after {total:,} connections as the range predicts, but only {reused} of "
            f"{params.reuse} connections to another destination reused those ports"
        )
    else:
        verdict = Verdict.FOLKLORE
        reason = (
            f"{total:,} connections before {error or 'no error'} (expected about {expected:,} of "
            f"{size:,}); sample ports in range: {in_range}/{len(sample)}; reused: {reused}"
        )
    depends = "the destination" if verdict is Verdict.DEPENDS else ""
    table = Table(
        "connections from 127.0.0.1 to one destination until the ports ran out",
        ["holder process", "connections"],
        [[i + 1, n] for i, n in enumerate(per_holder)],
    )
    return Result(
        name="ephemeral",
        claim=CLAIM,
        method=(
            f"Holder processes connect from 127.0.0.1 to one server port (a prefork echo server) "
            f"until connect() fails, using {scope}; a fresh holder then connects to a second "
            f"server port. Ports come from getsockname()."
        ),
        verdict=verdict,
        reason=reason,
        numbers={
            "range_low": lo,
            "range_high": hi,
            "range_size": hi - lo + 1,
            "ports_tried": f"{wlo}-{whi}",
            "ports_taken_by_listeners": len(bound),
            "expected_connections": expected,
            "connections_to_one_destination": total,
            "distinct_ports": distinct,
            "error_at_the_end": error,
            "processes": len(per_holder),
            "seconds_to_connect": round(connect_seconds, 2),
            "connections_per_second": round(total / connect_seconds) if connect_seconds else None,
            "sample_ports_in_range": f"{in_range}/{len(sample)}",
            "even_ports_in_first_half": round(even, 3),
            "second_destination_connections": reuse["opened"],
            "second_destination_on_reused_ports": reused,
        },
        tables=[table],
        series={
            "ports_a": ports_a,
            "ports_b": reuse["ports"],
            "range": [lo, hi],
            "window": [wlo, whi],
        },
        params=dataclasses.asdict(params),
        notes=[
            f"Linux's connect() walks the range in steps of two from a start hashed from the "
            f"4-tuple, so it tends to use one parity before the other (leaving the rest for "
            f"bind(port=0)); here {even:.0%} of the first half of the picks were even.",
            "The connections were closed with RST (SO_LINGER 0) so the run leaves no TIME_WAIT.",
        ],
        elapsed=time.monotonic() - start,
        depends_on=depends,
    )


def plot(result: Result, path: str) -> None:
    """The port picked for each connection, in order, toward A and then toward B."""
    plt, fig, ax = figure(9, 4)
    a = result.series["ports_a"]
    b = result.series["ports_b"]
    step = max(1, len(a) // 20000)
    ax.plot(
        range(0, len(a), step),
        a[::step],
        ",",
        color="#3d85c6",
        label=f"to destination A: {len(a):,} connections",
    )
    ax.plot(
        range(len(a), len(a) + len(b)),
        b,
        ".",
        color="#cc0000",
        ms=3,
        label=f"to destination B: {len(b)} (ports already used to A)",
    )
    lo, hi = result.series["window"]
    ax.axhline(lo, color="grey", ls=":")
    ax.axhline(hi, color="grey", ls=":", label=f"range {lo}-{hi}")
    ax.axvline(len(a), color="black", lw=0.8)
    ax.text(len(a), (lo + hi) / 2, " EADDRNOTAVAIL", fontsize=8)
    ax.set_xlabel("connection number")
    ax.set_ylabel("local port the kernel picked")
    ax.set_title("Ephemeral ports: exhausted per destination, reused for another")
    ax.legend(fontsize=8, loc="lower right")
    save_figure(plt, fig, path)


EXPERIMENT: Experiment[Params] = Experiment(
    name="ephemeral",
    title="Ephemeral ports",
    claim=CLAIM,
    full=Params(),
    quick=Params(
        port_window=64, per_holder=40, sample=8, reuse=10, server_workers=2, time_limit=60.0
    ),
    run=run,
    plot=plot,
)
