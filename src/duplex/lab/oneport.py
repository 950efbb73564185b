"""``duplex lab one-port``: more than 65,535 concurrent connections to ONE server port.

A server's port is not used up by its connections: each connection is its own
4-tuple, and the server's side of every one of them has the same local address and
port. What runs out is elsewhere, and the experiment works around each limit in turn:

- *client ports*: one source address has ~28,000 ephemeral ports toward one
  destination, so the clients use several source addresses, 127.0.0.2, 127.0.0.3...
  (all of 127.0.0.0/8 is local) — binding the address with IP_BIND_ADDRESS_NO_PORT so
  the port is still picked at ``connect()``, per 4-tuple;
- *descriptors*: 20,000 per process here, hard, so the clients are several holder
  processes and the server is the ``prefork`` model, several worker processes each
  with its own SO_REUSEPORT socket on the one port, the kernel spreading connections
  over them by a hash of the 4-tuple;
- *memory*: measured. The server's resident memory (user space: its event loops'
  transports and protocol objects), the kernel's socket buffer memory
  (``TCP: mem`` in /proc/net/sockstat, in pages), and the kernel's socket
  structures (slab caches in /proc/slabinfo and ``Slab`` in /proc/meminfo), before
  and after, divided by the connections.

Every connection is then counted from the kernel's side: the ESTABLISHED rows of
/proc/net/tcp whose local port is the server's port and that a server descriptor
owns. A sample of connections per client process does an echo round trip, so the
connections are live, not just counted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import time
from typing import Any

from duplex.inspect.fds import socket_inode
from duplex.inspect.procnet import TcpState
from duplex.inspect.readers import (
    read_fd_links,
    read_meminfo,
    read_slabinfo,
    read_sockstat,
    read_tcp,
)
from duplex.lab.common import Experiment, Progress, figure, save_figure, wait_until
from duplex.lab.errors import ExperimentError
from duplex.lab.fleet import Fleet
from duplex.lab.holder import FD_RESERVE
from duplex.lab.procs import Children, EchoServer
from duplex.lab.result import Result, Table, Verdict

__all__ = ["EXPERIMENT", "Params", "run"]

CLAIM = (
    "A server port can hold at most 65,535 concurrent connections (some say: only one at a time)."
)

PORT_SPACE = 65535
NOFILE = 20000
_SLABS = ("TCP", "TCPv6", "sock_inode_cache", "dentry", "filp", "eventpoll_epi", "eventpoll_pwq")


@dataclasses.dataclass(frozen=True)
class Params:
    """Parameters of ``duplex lab one-port``."""

    connections: int = 70000
    """Concurrent connections to open to the one server port."""
    clients: int = 5
    """Client (holder) processes, each with its own source address."""
    workers: int = 6
    """Prefork server worker processes sharing the port."""
    first_source: str = "127.0.0.2"
    """The first client's source address; the next clients count up from it."""
    echo_sample: int = 20
    """Connections per client that do an echo round trip."""
    queued_bytes: int = 1024
    """Bytes then sent on every connection and left unread (0: skip), to price buffers."""
    time_limit: float = 300.0
    """Seconds, at most, for connecting and for the server to accept."""


def _worker_sockets(server: EchoServer) -> dict[int, int]:
    """Socket descriptors per server process (supervisor and workers)."""
    counts: dict[int, int] = {}
    for link in read_fd_links(server.all_pids()):
        if socket_inode(link.target) is not None:
            counts[link.pid] = counts.get(link.pid, 0) + 1
    return counts


def _memory(server: EchoServer, fleet: Fleet) -> dict[str, Any]:
    slabs = read_slabinfo()
    sockstat = read_sockstat()
    meminfo = read_meminfo()
    return {
        "server_rss": server.rss(),
        "clients_rss": sum(int(a["rss"]) for a in fleet.ask_all({"op": "stats"})),
        "slab": meminfo.get("Slab", 0),
        "mem_available": meminfo.get("MemAvailable", 0),
        "slabs": {n: (slabs[n].active_objs, slabs[n].objsize) for n in _SLABS if n in slabs},
        "tcp_inuse": sockstat.get("TCP", {}).get("inuse", 0),
        "tcp_mem_pages": sockstat.get("TCP", {}).get("mem", 0),
    }


def _count_established(port: int) -> dict[str, Any]:
    rows = read_tcp()
    server_side = [r for r in rows if r.local.port == port and r.state is TcpState.ESTABLISHED]
    owned = [r for r in server_side if r.inode]
    sources = {r.remote.host for r in server_side}
    return {
        "server_established": len(server_side),
        "server_established_accepted": len(owned),
        "client_established": sum(
            1 for r in rows if r.remote.port == port and r.state is TcpState.ESTABLISHED
        ),
        "server_addresses": sorted({str(r.local) for r in server_side}),
        "source_addresses": len(sources),
    }


def run(params: Params, progress: Progress) -> Result:
    """Opens ``connections`` concurrent connections to one port and prices them.

    Args:
        params: how many connections, spread over how many processes on each side.
        progress: receives progress lines.

    Returns:
        The result; folklore once one port held more than one connection, and the
        reason says whether the run crossed 65,535.

    Raises:
        ExperimentError: the parameters would exceed a process's open-files limit.
    """
    start = time.monotonic()
    per_client = math.ceil(params.connections / params.clients)
    if per_client > NOFILE - FD_RESERVE:
        raise ExperimentError(
            f"{per_client} connections per client process is above the {NOFILE:,} open-files "
            f"limit; use more --set clients=N"
        )
    per_worker = params.connections / params.workers
    if per_worker * 1.1 > NOFILE - 100:
        raise ExperimentError(
            f"about {per_worker:,.0f} connections per server worker is too close to the "
            f"{NOFILE:,} open-files limit; use more --set workers=N"
        )
    first = ipaddress.IPv4Address(params.first_source)
    sources = [str(first + i) for i in range(params.clients)]
    if not all(ipaddress.IPv4Address(s).is_loopback for s in sources):
        raise ExperimentError("the client source addresses must stay inside 127.0.0.0/8")
    counts = [per_client] * params.clients
    counts[-1] = params.connections - per_client * (params.clients - 1)
    with Children() as children:
        server = children.echo_server("prefork", "--workers", str(params.workers))
        port = server.port
        progress(f"server: prefork, {params.workers} workers on 127.0.0.1:{port}, pid {server.pid}")
        fleet = Fleet(children, params.time_limit + 120)
        fleet.start(params.clients)
        before_sockets = _worker_sockets(server)
        before = _memory(server, fleet)
        t0 = time.monotonic()
        answers = fleet.connect_all(
            fleet.holders,
            [
                {"host": "127.0.0.1", "port": port, "count": n, "source": src}
                for n, src in zip(counts, sources, strict=True)
            ],
            params.time_limit,
        )
        connect_seconds = time.monotonic() - t0
        opened = sum(int(a["opened"]) for a in answers)
        errors = sorted({a["error"] for a in answers if a["error"]})
        progress(
            f"clients opened {opened:,} connections in {connect_seconds:.1f} s"
            + (f" (errors: {', '.join(errors)})" if errors else "")
        )

        def accepted() -> int:
            now = _worker_sockets(server)
            return sum(now.get(pid, 0) - before_sockets.get(pid, 0) for pid in now)

        wait_until(lambda: accepted() >= opened, params.time_limit, 0.5)
        accept_seconds = time.monotonic() - t0
        per_worker_now = _worker_sockets(server)
        spread = sorted(
            per_worker_now[pid] - before_sockets.get(pid, 0)
            for pid in per_worker_now
            if pid != server.pid
        )
        counted = _count_established(port)
        progress(
            f"kernel: {counted['server_established']:,} ESTABLISHED on port {port} "
            f"({counted['server_established_accepted']:,} accepted); per worker {spread}"
        )
        echoes = fleet.ask_all({"op": "echo", "sample": params.echo_sample}, 60)
        echo_ok = sum(int(a["ok"]) for a in echoes)
        echo_tried = sum(int(a["tried"]) for a in echoes)
        after = _memory(server, fleet)
        filled = after
        if params.queued_bytes > 0:
            sent = sum(
                int(a["sent"])
                for a in fleet.ask_all({"op": "fill", "size": params.queued_bytes}, 120)
            )
            last = [-1]

            def stable() -> bool:
                now = read_sockstat().get("TCP", {}).get("mem", 0)
                same = now == last[0]
                last[0] = now
                return same

            wait_until(stable, 20, 0.5)
            filled = _memory(server, fleet)
            progress(
                f"{sent:,} bytes sent and left unread: sockstat TCP mem "
                f"{after['tcp_mem_pages']} -> {filled['tcp_mem_pages']} pages"
            )
        fleet.close_all()
    n = max(1, counted["server_established_accepted"])
    tcp_objs = {
        name: after["slabs"].get(name, (0, 0))[0] - before["slabs"].get(name, (0, 0))[0]
        for name in _SLABS
    }
    slab_bytes = {name: tcp_objs[name] * after["slabs"].get(name, (0, 0))[1] for name in _SLABS}
    numbers: dict[str, Any] = {
        "server_port": port,
        "connections_asked": params.connections,
        "connections_opened": opened,
        "established_on_the_port": counted["server_established"],
        "accepted_by_the_server": counted["server_established_accepted"],
        "client_source_addresses": counted["source_addresses"],
        "server_addresses": ", ".join(counted["server_addresses"]),
        "client_processes": params.clients,
        "server_worker_processes": params.workers,
        "connections_per_worker_min": spread[0] if spread else None,
        "connections_per_worker_max": spread[-1] if spread else None,
        "echo_round_trips_ok": f"{echo_ok}/{echo_tried}",
        "seconds_to_connect": round(connect_seconds, 1),
        "seconds_until_all_accepted": round(accept_seconds, 1),
        "server_rss_per_connection_bytes": round((after["server_rss"] - before["server_rss"]) / n),
        "client_rss_per_connection_bytes": round(
            (after["clients_rss"] - before["clients_rss"]) / n
        ),
        "kernel_slab_per_connection_bytes": round((after["slab"] - before["slab"]) / n),
        "kernel_tcp_slab_per_connection_bytes": round(
            (slab_bytes["TCP"] + slab_bytes["sock_inode_cache"]) / n
        ),
        "tcp_socket_objects_per_connection": round(tcp_objs["TCP"] / n, 3),
        "sockstat_tcp_inuse_delta": after["tcp_inuse"] - before["tcp_inuse"],
        "sockstat_tcp_mem_pages_delta": after["tcp_mem_pages"] - before["tcp_mem_pages"],
        "sockstat_buffer_bytes_per_connection": round(
            (after["tcp_mem_pages"] - before["tcp_mem_pages"]) * 4096 / n
        ),
        "mem_available_drop_per_connection_bytes": round(
            (before["mem_available"] - after["mem_available"]) / n
        ),
    }
    if params.queued_bytes > 0:
        numbers["queued_bytes_per_connection"] = params.queued_bytes
        numbers["sockstat_buffer_bytes_per_connection_with_queued_data"] = round(
            (filled["tcp_mem_pages"] - after["tcp_mem_pages"]) * 4096 / n
        )
    established = counted["server_established_accepted"]
    if established > PORT_SPACE:
        verdict = Verdict.FOLKLORE
        reason = (
            f"one server port ({', '.join(counted['server_addresses'])}) held {established:,} "
            f"concurrent ESTABLISHED connections, accepted by {params.workers} SO_REUSEPORT "
            f"worker processes, from {counted['source_addresses']} client addresses in "
            f"{params.clients} processes; {echo_ok}/{echo_tried} sampled connections echoed. "
            f"A connection is its 4-tuple; the server's port is shared by all of them. The "
            f"limits met were per client address (ephemeral ports to one destination) and "
            f"per process (open files), and the cost was memory: about "
            f"{numbers['kernel_slab_per_connection_bytes']:,} bytes of kernel slab and "
            f"{numbers['server_rss_per_connection_bytes']:,} bytes of server RSS per connection"
        )
    elif established > 1:
        verdict = Verdict.FOLKLORE
        reason = (
            f"one server port held {established:,} concurrent connections from "
            f"{counted['source_addresses']} client addresses, so 'one connection per port' is "
            f"wrong; this run did not try to cross 65,535 (run `duplex lab one-port` at full "
            f"scale for that)"
        )
    else:
        verdict = Verdict.HOLDS
        reason = f"only {established} connection(s) were established on the port"
    table = Table(
        "memory, before and after",
        ["measure", "before", "after", "per connection"],
        [
            [
                "server RSS (supervisor + workers), bytes",
                before["server_rss"],
                after["server_rss"],
                numbers["server_rss_per_connection_bytes"],
            ],
            [
                "client processes RSS, bytes",
                before["clients_rss"],
                after["clients_rss"],
                numbers["client_rss_per_connection_bytes"],
            ],
            [
                "kernel Slab (/proc/meminfo), bytes",
                before["slab"],
                after["slab"],
                numbers["kernel_slab_per_connection_bytes"],
            ],
            [
                "TCP socket objects (slab 'TCP')",
                before["slabs"].get("TCP", (0, 0))[0],
                after["slabs"].get("TCP", (0, 0))[0],
                numbers["tcp_socket_objects_per_connection"],
            ],
            [
                "sockstat TCP inuse",
                before["tcp_inuse"],
                after["tcp_inuse"],
                round((after["tcp_inuse"] - before["tcp_inuse"]) / n, 3),
            ],
            [
                "sockstat TCP mem, pages",
                before["tcp_mem_pages"],
                after["tcp_mem_pages"],
                numbers["sockstat_buffer_bytes_per_connection"],
            ],
            [
                "MemAvailable, bytes",
                before["mem_available"],
                after["mem_available"],
                numbers["mem_available_drop_per_connection_bytes"],
            ],
        ],
    )
    if params.queued_bytes > 0:
        table.rows.append(
            [
                f"sockstat TCP mem, pages, with {params.queued_bytes} B unread per connection",
                after["tcp_mem_pages"],
                filled["tcp_mem_pages"],
                numbers["sockstat_buffer_bytes_per_connection_with_queued_data"],
            ]
        )
    slab_table = Table(
        "kernel slab objects added, by cache",
        ["cache", "objects added", "bytes each", "bytes per connection"],
        [
            [name, tcp_objs[name], after["slabs"].get(name, (0, 0))[1], round(slab_bytes[name] / n)]
            for name in _SLABS
            if name in after["slabs"]
        ],
    )
    clients_table = Table(
        "client processes",
        ["process", "source address", "connections", "error"],
        [
            [i + 1, src, a["opened"], a["error"] or ""]
            for i, (src, a) in enumerate(zip(sources, answers, strict=True))
        ],
    )
    return Result(
        name="one-port",
        claim=CLAIM,
        method=(
            f"A prefork echo server ({params.workers} worker processes, each with its own "
            f"SO_REUSEPORT socket) listens on one port of 127.0.0.1; {params.clients} client "
            f"processes bound to {sources[0]}..{sources[-1]} open {params.connections:,} "
            f"connections to it and hold them; the kernel's ESTABLISHED rows for the port are "
            f"counted in /proc/net/tcp, {params.echo_sample} connections per client echo, and "
            f"memory is read before and after."
        ),
        verdict=verdict,
        reason=reason,
        numbers=numbers,
        tables=[table, slab_table, clients_table],
        series={"spread": spread, "numbers": numbers, "slab_bytes": slab_bytes, "n": n},
        params=dataclasses.asdict(params),
        notes=[
            "Both ends of every connection are on this machine, so the kernel figures cover "
            "two sockets per connection (the TCP objects per connection show it).",
            "sockstat's 'TCP: mem' counts socket buffer pages (queued data), which idle "
            "connections do not use; the socket structures themselves are slab memory. The "
            "last row of the memory table shows the buffers once data waits unread in every "
            "connection (the kernel charges the buffers' true size, more than the payload).",
            "The connections were closed with RST (SO_LINGER 0), leaving no TIME_WAIT.",
        ],
        elapsed=time.monotonic() - start,
    )


def plot(result: Result, path: str) -> None:
    """Connections per worker, and memory per connection by kind."""
    plt, fig, ax = figure(10, 4)
    fig.delaxes(ax)
    left = fig.add_subplot(1, 2, 1)
    right = fig.add_subplot(1, 2, 2)
    spread = result.series["spread"]
    nums = result.series["numbers"]
    left.bar([f"w{i + 1}" for i in range(len(spread))], spread, color="#3d85c6")
    left.set_title(
        f"{nums['accepted_by_the_server']:,} connections on port {nums['server_port']}", fontsize=9
    )
    left.set_ylabel("connections per SO_REUSEPORT worker")
    left.axhline(20000, color="grey", ls=":", label="open-files limit per process")
    left.legend(fontsize=8)
    labels = [
        "server RSS",
        "kernel slab\n(both ends)",
        "TCP + inode\nslab",
        "sockstat\nbuffers",
        "MemAvailable\ndrop (all)",
    ]
    values = [
        nums["server_rss_per_connection_bytes"],
        nums["kernel_slab_per_connection_bytes"],
        nums["kernel_tcp_slab_per_connection_bytes"],
        nums["sockstat_buffer_bytes_per_connection"],
        nums["mem_available_drop_per_connection_bytes"],
    ]
    if "sockstat_buffer_bytes_per_connection_with_queued_data" in nums:
        labels.insert(4, f"sockstat, {nums['queued_bytes_per_connection']} B\nunread each")
        values.insert(4, nums["sockstat_buffer_bytes_per_connection_with_queued_data"])
    bars = right.bar(labels, [max(v, 0) / 1024 for v in values], color="#6aa84f")
    for bar, v in zip(bars, values, strict=True):
        right.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            f"{v / 1024:.1f}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    right.set_ylabel("KiB per connection")
    right.set_title("memory per connection", fontsize=9)
    right.tick_params(axis="x", labelsize=7)
    save_figure(plt, fig, path)


EXPERIMENT: Experiment[Params] = Experiment(
    name="one-port",
    title="One port, many connections",
    claim=CLAIM,
    full=Params(),
    quick=Params(connections=400, clients=2, workers=2, echo_sample=5, time_limit=60.0),
    run=run,
    plot=plot,
)
