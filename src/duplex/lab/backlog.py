"""``duplex lab backlog``: what listen()'s backlog really bounds.

A listener that never calls ``accept()`` is offered more connections than its
backlog. On Linux the backlog bounds the *accept queue*, the connections whose
three-way handshake is complete and that wait for ``accept()``; half-open
connections (SYN received) live in a separate SYN queue (``tcp_max_syn_backlog``,
with SYN cookies beyond it). ``listen()`` silently truncates its argument to
``net.core.somaxconn``, and the queue is full only when it holds *more* than the
backlog (``sk_acceptq_is_full`` compares with ``>``), hence one extra connection.
Once full, a new SYN is dropped (``ListenOverflows``, ``ListenDrops``): the client
stays in SYN_SENT and retransmits after 1 s, 3 s, 7 s..., and gets in when a slot
frees. We measure all of it rather than assume it: the effective backlog through
sock_diag (what ``ss`` shows as Send-Q), the queue through the listener's Recv-Q,
each client's state through TCP_INFO.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import socket
import struct
import time
from typing import Any

from duplex.inspect import diag
from duplex.inspect.errors import InspectError
from duplex.inspect.procnet import TcpState
from duplex.inspect.readers import read_netstat, read_tcp
from duplex.lab.common import Experiment, Progress, figure, save_figure, tcp_state, wait_until
from duplex.lab.result import Result, Table, Verdict
from duplex.server.listener import read_somaxconn

__all__ = ["EXPERIMENT", "Params", "run"]

CLAIM = "listen()'s backlog is the queue of pending connections, about 5."


@dataclasses.dataclass(frozen=True)
class Params:
    """Parameters of ``duplex lab backlog``."""

    backlogs: tuple[int, ...] = (0, 1, 5, 16, 128, 1024, 8192)
    """Backlogs to try; one above somaxconn shows the clamp."""
    extra: int = 8
    """Clients offered beyond the effective backlog."""
    settle: float = 0.5
    """Seconds, at most, for the handshakes to settle."""
    retry_wait: float = 3.5
    """Seconds to watch a refused client get in after one accept() (0 skips it)."""


def _queue(lsock: socket.socket, inode: int, port: int) -> tuple[int, int | None]:
    """(accept queue now, backlog enforced) from sock_diag, else from /proc/net/tcp."""
    try:
        for entry in diag.query():
            if entry.inode == inode:
                return entry.rqueue, entry.wqueue
    except InspectError:
        pass
    for row in read_tcp():
        if row.inode == inode:
            return row.rx_queue, None
    return 0, None


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _overflows() -> tuple[int, int]:
    ext = read_netstat().get("TcpExt", {})
    return ext.get("ListenOverflows", 0), ext.get("ListenDrops", 0)


def _trial(backlog: int, params: Params, somaxconn: int | None, retry: bool) -> dict[str, Any]:
    import os

    lsock = socket.socket()
    clients: list[socket.socket] = []
    try:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(backlog)
        port = lsock.getsockname()[1]
        inode = os.fstat(lsock.fileno()).st_ino
        _, enforced = _queue(lsock, inode, port)
        clamp = backlog if somaxconn is None else min(backlog, somaxconn)
        effective = enforced if enforced is not None else clamp
        before = _overflows()
        for _ in range(effective + params.extra):
            sock = socket.socket()
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                raise OSError(code, os.strerror(code))
            clients.append(sock)
        last = [-1]

        def settled() -> bool:
            now = _queue(lsock, inode, port)[0]
            same = now == last[0]
            last[0] = now
            return same

        wait_until(settled, params.settle, 0.05)
        queued = _queue(lsock, inode, port)[0]
        states = [tcp_state(s) for s in clients]
        established = sum(s is TcpState.ESTABLISHED for s in states)
        syn_sent = sum(s is TcpState.SYN_SENT for s in states)
        after = _overflows()
        row: dict[str, Any] = {
            "backlog": backlog,
            "clamped_to": clamp,
            "enforced": enforced,
            "offered": len(clients),
            "completed": queued,
            "extra": queued - effective,
            "client_established": established,
            "client_syn_sent": syn_sent,
            "overflows": after[0] - before[0],
            "drops": after[1] - before[1],
        }
        if retry:
            waiting = [s for s, st in zip(clients, states, strict=True) if st is TcpState.SYN_SENT]
            conn, _ = lsock.accept()  # one slot frees up
            _abort(conn)
            start = time.monotonic()
            got_in = wait_until(
                lambda: any(tcp_state(s) is TcpState.ESTABLISHED for s in waiting),
                params.retry_wait,
                0.02,
            )
            row["retry_got_in"] = got_in
            row["retry_after_s"] = round(time.monotonic() - start, 3) if got_in else None
        return row
    finally:
        for sock in clients:
            _abort(sock)
        lsock.close()


def run(params: Params, progress: Progress) -> Result:
    """Offers each backlog more clients than it can queue; counts what completes.

    Args:
        params: the backlogs to try and how many extra clients.
        progress: receives progress lines.

    Returns:
        The result, its verdict derived from the completed handshakes measured.
    """
    start = time.monotonic()
    somaxconn = read_somaxconn()
    rows = []
    retry_done = False
    for backlog in params.backlogs:
        retry = params.retry_wait > 0 and not retry_done and backlog >= 1
        progress(f"backlog {backlog}: offering it more clients than it can queue")
        rows.append(_trial(backlog, params, somaxconn, retry))
        retry_done = retry_done or retry
    extras = sorted({r["extra"] for r in rows})
    consistent = len(extras) == 1
    k = extras[0] if consistent else None
    biggest = max(rows, key=lambda r: r["completed"])
    refused = sum(r["client_syn_sent"] for r in rows)
    if consistent and biggest["completed"] > 6:
        verdict = Verdict.FOLKLORE
        reason = (
            f"for every backlog tried, the completed handshakes waiting for accept() were "
            f"min(backlog, somaxconn={somaxconn}) + {k} (the kernel's extra one, measured), "
            f"up to {biggest['completed']} for backlog {biggest['backlog']}: the backlog is "
            f"what the program asks (capped by somaxconn), not 'about 5', and it bounds "
            f"completed connections, not half-open ones. The {refused} clients beyond it "
            f"stayed in SYN_SENT: their SYNs were dropped, not refused."
        )
    elif consistent:
        verdict = Verdict.HOLDS
        reason = f"no backlog tried queued more than {biggest['completed']} connections"
    else:
        verdict = Verdict.DEPENDS
        reason = (
            f"the completed handshakes differed from min(backlog, somaxconn) by {extras} "
            f"across trials; the accept queue did not follow one rule here"
        )
    numbers: dict[str, Any] = {
        "somaxconn": somaxconn,
        "extra_measured": k,
        "largest_queue": biggest["completed"],
        "largest_queue_backlog": biggest["backlog"],
        "clients_left_in_syn_sent": refused,
        "listen_overflows_delta": sum(r["overflows"] for r in rows),
        "listen_drops_delta": sum(r["drops"] for r in rows),
    }
    notes = [
        "ListenOverflows/ListenDrops (/proc/net/netstat) are system-wide counters: other "
        "programs' listeners add to the deltas.",
    ]
    retry_row = next((r for r in rows if "retry_got_in" in r), None)
    if retry_row is not None:
        numbers["refused_client_got_in_after_s"] = retry_row["retry_after_s"]
        if retry_row["retry_got_in"]:
            notes.append(
                f"after one accept() freed a slot, a client left in SYN_SENT got in "
                f"{retry_row['retry_after_s']} s later: its SYN retransmission (initial RTO "
                f"1 s), not an immediate retry"
            )
    table = Table(
        "accept queue against the backlog asked",
        [
            "backlog",
            "clamped",
            "enforced (sock_diag)",
            "offered",
            "completed",
            "extra",
            "client ESTABLISHED",
            "client SYN_SENT",
            "ListenOverflows +",
        ],
        [
            [
                r["backlog"],
                r["clamped_to"],
                r["enforced"],
                r["offered"],
                r["completed"],
                r["extra"],
                r["client_established"],
                r["client_syn_sent"],
                r["overflows"],
            ]
            for r in rows
        ],
    )
    return Result(
        name="backlog",
        claim=CLAIM,
        method=(
            "For each backlog, a listener on 127.0.0.1 that never accepts is offered "
            "min(backlog, somaxconn) + extra non-blocking connects; the accept queue (Recv-Q) "
            "and the backlog the kernel enforces (Send-Q) are read with sock_diag, each "
            "client's state with TCP_INFO, drops from /proc/net/netstat."
        ),
        verdict=verdict,
        reason=reason,
        numbers=numbers,
        tables=[table],
        series={"rows": rows, "somaxconn": somaxconn},
        params=dataclasses.asdict(params),
        notes=notes,
        elapsed=time.monotonic() - start,
    )


def plot(result: Result, path: str) -> None:
    """Completed handshakes against the backlog asked (log scales)."""
    plt, fig, ax = figure()
    rows = result.series["rows"]
    somax = result.series["somaxconn"] or max(r["backlog"] for r in rows)
    xs = [max(r["backlog"], 0.5) for r in rows]
    ax.plot(xs, [r["completed"] for r in rows], "o", ms=8, label="completed handshakes (measured)")
    k = result.numbers.get("extra_measured") or 0
    top = max(max(xs) * 2, somax * 2)
    grid = sorted({1.0, *(x for x in xs if x >= 1), somax, top})
    ax.plot(
        [0.5, *grid],
        [k, *(min(x, somax) + k for x in grid)],
        "-",
        alpha=0.6,
        label=f"min(backlog, somaxconn={somax}) + {k}",
    )
    ax.axhline(5, color="grey", ls=":", label="'about 5'")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("backlog asked of listen() (0 drawn at 0.5)")
    ax.set_ylabel("connections in the accept queue")
    ax.set_title("listen() backlog: the accept queue, clamped by somaxconn")
    ax.legend(fontsize=8)
    save_figure(plt, fig, path)


EXPERIMENT: Experiment[Params] = Experiment(
    name="backlog",
    title="The listen() backlog",
    claim=CLAIM,
    full=Params(),
    quick=Params(backlogs=(0, 1, 3, 8), extra=4, settle=0.3, retry_wait=0.0),
    run=run,
    plot=plot,
)
