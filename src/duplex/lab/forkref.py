"""``duplex lab fork-refcount``: a socket is shared by reference across fork().

Two forking servers run side by side, the same code but for one line: the correct
one closes the connected descriptor in the parent after ``fork()`` (CSAPP's
``echoserverp``), the broken one forgets. In both, the child echoes one message,
closes its descriptor and exits. The client then waits for EOF. ``close()`` only
drops one reference; the kernel sends FIN when the *last* descriptor for the socket
is closed, so with the parent still holding one the client waits forever (here:
until the time limit), and /proc shows the parent owning the connection, in
CLOSE_WAIT once the client gives up and closes, for as long as the parent lives.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from typing import Any

from duplex.inspect.readers import read_comm, read_fd_links, take_snapshot
from duplex.inspect.views import Pair, join_pairs, process_view
from duplex.lab.common import Experiment, Progress, figure, save_figure, wait_until
from duplex.lab.procs import Children
from duplex.lab.result import Result, Table, Verdict

__all__ = ["EXPERIMENT", "Params", "run"]

CLAIM = (
    "A socket is a kernel object shared by reference: if a forking server's parent does not "
    "close the connected descriptor, the client gets no EOF when the child closes it."
)


@dataclasses.dataclass(frozen=True)
class Params:
    """Parameters of ``duplex lab fork-refcount``."""

    eof_wait: float = 2.0
    """Seconds the client waits for EOF before it calls it "never"."""
    connections: int = 5
    """Connections served, to count what the broken parent accumulates."""


def _one_client(port: int, eof_wait: float) -> tuple[socket.socket, float | None]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    start = time.monotonic()
    sock.sendall(b"hello")
    got = b""
    while len(got) < 5:
        chunk = sock.recv(5 - len(got))
        if not chunk:
            break
        got += chunk
    sock.settimeout(eof_wait)
    try:
        eof = sock.recv(1) == b""
    except TimeoutError:
        eof = False
    return sock, (time.monotonic() - start) if eof else None


def _variant(children: Children, leak: bool, params: Params, progress: Progress) -> dict[str, Any]:
    args = ["--max-seconds", str(int(params.eof_wait * 2 + 60)), "fork"]
    server, info = children.helper(
        "duplex.lab.helpers",
        *args,
        *(["--leak"] if leak else []),
        name="forking server",
        watches_stdin=False,
    )
    port = int(info["port"])
    name = "broken (parent keeps connfd)" if leak else "correct (parent closes connfd)"
    sock, eof_after = _one_client(port, params.eof_wait)
    server.read(10)  # "forked"
    local, peer = sock.getsockname(), sock.getpeername()
    key = f"{local[0]}:{local[1]} <-> {peer[0]}:{peer[1]}"

    def find() -> Pair | None:
        # The exact 4-tuple: a bare client port may also name an older TIME_WAIT row.
        pairs = join_pairs(take_snapshot(pids=[server.pid, os.getpid()]))
        return next((p for p in pairs if str(p) == key), None)

    pair = find()
    holders = [str(o) for o in pair.server.owners] if pair else []
    state_open = pair.server.state.name if pair and pair.server.state else "gone"
    eof_text = f"after {eof_after * 1000:.3g} ms" if eof_after is not None else "never"
    progress(f"{name}: EOF {eof_text}; server end {state_open}, held by {holders or 'nobody'}")
    sock.close()  # the client gives up: its FIN reaches a socket nobody will close

    def server_state() -> str:
        found = find()
        return found.server.state.name if found and found.server.state else "gone"

    wait_until(lambda: server_state() in ("CLOSE_WAIT", "TIME_WAIT", "gone"), 2.0)
    after_close = server_state()
    extra = []
    for _ in range(params.connections - 1):
        more, _eof = _one_client(port, 0.05 if leak else params.eof_wait)
        server.read(10)
        extra.append(more)
    wait_until(
        lambda: (
            not leak
            or sum(
                f.role == "connected"
                for f in process_view(
                    server.pid, "", read_fd_links([server.pid]), take_snapshot(pids=[server.pid])
                ).fds
            )
            >= params.connections
        ),
        2.0,
    )
    view = process_view(
        server.pid,
        read_comm(server.pid),
        read_fd_links([server.pid]),
        take_snapshot(pids=[server.pid]),
    )
    parent_connected = len(view.by_role("connected"))
    for more in extra:
        more.close()
    children.stop(server)
    return {
        "variant": name,
        "leak": leak,
        "eof_after_ms": None if eof_after is None else round(eof_after * 1000, 4),
        "server_end_owners": holders,
        "state_while_open": state_open,
        "server_end_after_client_close": after_close,
        "parent_connected_fds": parent_connected,
        "served": params.connections,
    }


def run(params: Params, progress: Progress) -> Result:
    """Runs both forking servers and measures when (if) the client sees EOF.

    Args:
        params: how long to wait for EOF, how many connections to serve.
        progress: receives progress lines.

    Returns:
        The result; holds when the correct server's client got EOF and the broken
        one's did not, with the broken parent holding the connection.
    """
    start = time.monotonic()
    with Children() as children:
        rows = [_variant(children, leak, params, progress) for leak in (False, True)]
    good, bad = rows
    if (
        good["eof_after_ms"] is not None
        and bad["eof_after_ms"] is None
        and bad["parent_connected_fds"] >= 1
        and bad["server_end_owners"]
    ):
        verdict = Verdict.HOLDS
        reason = (
            f"with the parent closing connfd the client saw EOF {good['eof_after_ms']:.3g} ms "
            f"after sending its message; with the parent keeping it, no EOF in "
            f"{params.eof_wait:g} s: the child's close() dropped one of two references, "
            f"the socket stayed open "
            f"({bad['state_while_open']}, held by {', '.join(bad['server_end_owners'])}), went "
            f"to {bad['server_end_after_client_close']} when the client closed, and the broken "
            f"parent held {bad['parent_connected_fds']} connected descriptors after "
            f"{bad['served']} connections (the correct one {good['parent_connected_fds']})"
        )
    else:
        verdict = Verdict.FOLKLORE
        reason = (
            f"EOF after {good['eof_after_ms']} ms (correct) vs {bad['eof_after_ms']} ms (broken); "
            f"the broken parent held {bad['parent_connected_fds']} descriptors"
        )
    table = Table(
        "the same forking server, with and without close(connfd) in the parent",
        [
            "server",
            "client EOF after (ms)",
            "server end held by",
            "server end once client closed",
            "parent's connected fds",
        ],
        [
            [
                r["variant"],
                r["eof_after_ms"]
                if r["eof_after_ms"] is not None
                else f"never (> {params.eof_wait:g} s)",
                ", ".join(r["server_end_owners"]) or "nobody",
                r["server_end_after_client_close"],
                r["parent_connected_fds"],
            ]
            for r in rows
        ],
    )
    return Result(
        name="fork-refcount",
        claim=CLAIM,
        method=(
            "Two helper forking servers (identical but for close(connfd) in the parent) each "
            "echo one message in a child that then closes and exits; the client times how long "
            "from its send until recv() returns EOF, and /proc shows which processes own the "
            "server end."
        ),
        verdict=verdict,
        reason=reason,
        numbers={
            "eof_after_ms_correct": good["eof_after_ms"],
            "eof_after_ms_broken": bad["eof_after_ms"],
            "eof_wait_s": params.eof_wait,
            "broken_parent_connected_fds": bad["parent_connected_fds"],
            "correct_parent_connected_fds": good["parent_connected_fds"],
            "broken_server_end_after_client_close": bad["server_end_after_client_close"],
        },
        tables=[table],
        series={"rows": rows, "eof_wait": params.eof_wait},
        params=dataclasses.asdict(params),
        notes=["The broken server's CLOSE_WAIT sockets last as long as its parent process."],
        elapsed=time.monotonic() - start,
    )


def plot(result: Result, path: str) -> None:
    """Time to EOF (or the wait limit) and the parent's descriptors, both servers."""
    rows = result.series["rows"]
    limit = result.series["eof_wait"] * 1000
    plt, fig, ax = figure(8, 3.5)
    names = [r["variant"] for r in rows]
    values = [
        max(r["eof_after_ms"], 0.002) if r["eof_after_ms"] is not None else limit for r in rows
    ]
    bars = ax.barh(
        names,
        values,
        color=["#6aa84f" if r["eof_after_ms"] is not None else "#cc0000" for r in rows],
    )
    for bar, r in zip(bars, rows, strict=True):
        text = (
            f"EOF after {r['eof_after_ms']:.3g} ms"
            if r["eof_after_ms"] is not None
            else f"no EOF in {limit / 1000:g} s"
        )
        text += f"; parent holds {r['parent_connected_fds']} connected fd(s)"
        ax.text(
            bar.get_width() * 1.05 + 0.01,
            bar.get_y() + bar.get_height() / 2,
            text,
            va="center",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlim(0.001, limit * 300)
    ax.set_xlabel("ms from the client's send until its recv() returns EOF (log)")
    ax.set_title("fork(): the parent's forgotten close(connfd) keeps the connection open")
    save_figure(plt, fig, path)


EXPERIMENT: Experiment[Params] = Experiment(
    name="fork-refcount",
    title="fork() and the socket's reference count",
    claim=CLAIM,
    full=Params(),
    quick=Params(eof_wait=0.5, connections=3),
    run=run,
    plot=plot,
)
