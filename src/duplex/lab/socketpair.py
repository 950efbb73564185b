"""``duplex lab socket-pair``: one connection, seen from both ends and from /proc.

A server in another process accepts a few connections from this one and reports
what ``getsockname()`` and ``getpeername()`` return on its side; this side asks the
same of its sockets; ``duplex inspect pairs`` reads /proc. A connection is
identified by its socket pair if the three views agree on one 4-tuple per
connection, mirrored between the ends, and if connections to the same server
address differ only by the client's port.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from typing import Any

from duplex.inspect.readers import take_snapshot
from duplex.inspect.views import filter_pairs, join_pairs
from duplex.lab.common import Experiment, Progress, figure, save_figure
from duplex.lab.procs import Children
from duplex.lab.result import Result, Table, Verdict

__all__ = ["EXPERIMENT", "Params", "run"]

CLAIM = (
    "A connection is identified by its socket pair (client ip:port, server ip:port); "
    "the kernel chooses the client's port."
)


@dataclasses.dataclass(frozen=True)
class Params:
    """Parameters of ``duplex lab socket-pair``."""

    connections: int = 3
    """Connections opened to the one server address."""


def _ep(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}"


def run(params: Params, progress: Progress) -> Result:
    """Opens connections to a server process and compares the three views of each.

    Args:
        params: how many connections.
        progress: receives progress lines.

    Returns:
        The result; holds when every view agrees on every 4-tuple.
    """
    start = time.monotonic()
    rows: list[dict[str, Any]] = []
    with Children() as children:
        server, info = children.helper(
            "duplex.lab.helpers", "--max-seconds", "60", "pairs", name="pair server"
        )
        port = int(info["port"])
        socks: list[socket.socket] = []
        try:
            for _ in range(params.connections):
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            reports = [server.read(10) for _ in socks]
            snap = take_snapshot(pids=[server.pid, *_self_pid()])
            pairs = {str(p): p for p in filter_pairs(join_pairs(snap), port=port)}
            for sock in socks:
                local, peer = sock.getsockname(), sock.getpeername()
                report = next(r for r in reports if tuple(r["peer"]) == local)
                key = f"{_ep(local)} <-> {_ep(peer)}"
                pair = pairs.get(key)
                client_owner = pair.client.owners[0] if pair and pair.client.owners else None
                server_owner = pair.server.owners[0] if pair and pair.server.owners else None
                rows.append(
                    {
                        "client_sockname": _ep(local),
                        "client_peername": _ep(peer),
                        "server_sockname": _ep(report["local"]),
                        "server_peername": _ep(report["peer"]),
                        "server_fd": report["fd"],
                        "client_fd": sock.fileno(),
                        "proc_pair": str(pair) if pair else None,
                        "proc_state": pair.state if pair else None,
                        "proc_client_owner": str(client_owner) if client_owner else None,
                        "proc_server_owner": str(server_owner) if server_owner else None,
                        "mirrored": tuple(report["local"]) == peer
                        and tuple(report["peer"]) == local,
                        "owners_match": bool(
                            client_owner
                            and server_owner
                            and (client_owner.pid, client_owner.fd)
                            == (_self_pid()[0], sock.fileno())
                            and (server_owner.pid, server_owner.fd) == (server.pid, report["fd"])
                        ),
                    }
                )
                progress(f"{key}: server fd {report['fd']}, client fd {sock.fileno()}")
        finally:
            for sock in socks:
                sock.close()
    mirrored = all(r["mirrored"] for r in rows)
    owners = all(r["owners_match"] for r in rows)
    servers = {r["client_peername"] for r in rows}
    clients = {r["client_sockname"] for r in rows}
    tuples = {(r["client_sockname"], r["client_peername"]) for r in rows}
    distinct = len(tuples) == len(rows) and len(servers) == 1
    ports = [int(c.rsplit(":", 1)[1]) for c in clients]
    if mirrored and owners and distinct:
        verdict = Verdict.HOLDS
        reason = (
            f"for each of {len(rows)} connections to {servers.pop()}, the client's "
            f"getsockname/getpeername were the server's getpeername/getsockname, and "
            f"/proc/net/tcp joined the same two ends to the two processes' descriptors; "
            f"the connections shared the server address and differed only by the client "
            f"port the kernel chose ({', '.join(map(str, sorted(ports)))})"
        )
    else:
        verdict = Verdict.FOLKLORE
        reason = (
            f"views disagreed: mirrored={mirrored}, /proc owners matched={owners}, "
            f"distinct 4-tuples={distinct}"
        )
    table = Table(
        "one connection, three views",
        [
            "client getsockname",
            "client getpeername",
            "server getsockname",
            "server getpeername",
            "/proc: client owner",
            "/proc: server owner",
            "state",
        ],
        [
            [
                r["client_sockname"],
                r["client_peername"],
                r["server_sockname"],
                r["server_peername"],
                r["proc_client_owner"],
                r["proc_server_owner"],
                r["proc_state"],
            ]
            for r in rows
        ],
    )
    return Result(
        name="socket-pair",
        claim=CLAIM,
        method=(
            "A helper server process on 127.0.0.1 accepts connections from the lab and reports "
            "getsockname()/getpeername() of each accepted socket; the lab compares them with its "
            "own ends and with the pairs /proc/net/tcp and /proc/PID/fd give "
            "(duplex inspect pairs)."
        ),
        verdict=verdict,
        reason=reason,
        numbers={
            "connections": len(rows),
            "views_mirrored": mirrored,
            "proc_owners_match": owners,
            "distinct_4_tuples": len(tuples),
            "server_addresses": len({r["client_peername"] for r in rows}),
        },
        tables=[table],
        series={"rows": rows},
        params=dataclasses.asdict(params),
        elapsed=time.monotonic() - start,
    )


def _self_pid() -> list[int]:
    return [os.getpid()]


def plot(result: Result, path: str) -> None:
    """The connections as two columns of endpoints joined by their socket pairs."""
    rows = result.series["rows"]
    plt, fig, ax = figure(8, 1.2 + 0.9 * len(rows))
    ax.axis("off")
    n = len(rows)
    server = rows[0]["server_sockname"] if rows else ""
    ax.text(
        0.82,
        0.5,
        f"server\n{server}\n(one address)",
        ha="center",
        va="center",
        fontsize=10,
        bbox={"boxstyle": "round", "fc": "#cfe2f3"},
    )
    for i, r in enumerate(rows):
        y = 1 - (i + 0.5) / n
        ax.text(
            0.12,
            y,
            f"client {r['client_sockname']}\n{r['proc_client_owner']}",
            ha="center",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round", "fc": "#d9ead3"},
        )
        ax.annotate(
            "",
            xy=(0.68, 0.5),
            xytext=(0.26, y),
            arrowprops={"arrowstyle": "<->", "color": "#555555"},
        )
        ax.text(
            0.47,
            (y + 0.5) / 2 + 0.03,
            f"server fd {r['server_fd']}",
            fontsize=7,
            ha="center",
            color="#333333",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(
        "Each connection is its 4-tuple: same server address, different client ports", fontsize=9
    )
    save_figure(plt, fig, path)


EXPERIMENT: Experiment[Params] = Experiment(
    name="socket-pair",
    title="One connection, seen from both ends",
    claim=CLAIM,
    full=Params(),
    quick=Params(connections=2),
    run=run,
    plot=plot,
)
