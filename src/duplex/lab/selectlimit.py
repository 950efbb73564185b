"""``duplex lab select-limit``: the 1024 is select()'s, not Linux's.

``select()`` takes bitmaps of FD_SETSIZE = 1024 bits, so it cannot watch a descriptor
numbered 1024 or more; this is where "Linux allows at most 1024 connections" comes
from. Three measurements:

1. in this process: ``select()`` on a descriptor below 1024 and on one at or above
   it, and ``epoll`` on the same descriptor;
2. the cost of one ``select()`` call grows with the number of descriptors watched,
   one ``epoll_wait()`` call's does not;
3. the real servers: ``duplex echo serve --model select`` and ``--model epoll`` are
   each given more than 1024 concurrent connections, every one of which then asks
   for an echo; the select server refuses those whose descriptor is >= 1024, the
   epoll server serves them all. The limit that remains is RLIMIT_NOFILE.
"""

from __future__ import annotations

import dataclasses
import resource
import select
import selectors
import socket
import time
from typing import Any

from duplex.inspect.readers import read_fd_links, take_snapshot
from duplex.inspect.views import process_view
from duplex.lab.common import Experiment, Progress, figure, save_figure
from duplex.lab.procs import Children
from duplex.lab.result import Result, Table, Verdict

__all__ = ["EXPERIMENT", "FD_SETSIZE", "Params", "run"]

FD_SETSIZE = 1024
"""glibc's ``FD_SETSIZE`` (``<sys/select.h>``)."""

CLAIM = "Linux allows at most 1024 socket connections."


@dataclasses.dataclass(frozen=True)
class Params:
    """Parameters of ``duplex lab select-limit``."""

    connections: int = 1200
    """Concurrent connections given to each server (must exceed 1024)."""
    sizes: tuple[int, ...] = (16, 64, 256, 512, 1000)
    """Numbers of idle descriptors for the cost-per-call measurement."""
    calls: int = 200
    """Calls timed per size."""


def _cliff() -> dict[str, Any]:
    """select() and epoll on descriptors just below and at FD_SETSIZE."""
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        while True:
            a, b = socket.socketpair()
            pairs.append((a, b))
            if b.fileno() >= FD_SETSIZE:
                break
        low = next(s for p in pairs for s in p if s.fileno() < FD_SETSIZE)
        high = pairs[-1][1]
        low_ok = True
        try:
            select.select([low], [], [], 0)
        except ValueError:
            low_ok = False
        high_error = None
        try:
            select.select([high], [], [], 0)
        except ValueError as exc:
            high_error = str(exc)
        ep = select.epoll()
        try:
            ep.register(high.fileno(), select.EPOLLIN)
            pairs[-1][0].send(b"x")
            epoll_ready = bool(ep.poll(1))
        finally:
            ep.close()
        return {
            "low_fd": low.fileno(),
            "low_select_ok": low_ok,
            "high_fd": high.fileno(),
            "high_select_error": high_error,
            "high_epoll_ready": epoll_ready,
        }
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def _cost(sizes: tuple[int, ...], calls: int) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        pairs = [socket.socketpair() for _ in range(max(1, n // 2))]
        try:
            watched = [s for p in pairs for s in p]
            if max(s.fileno() for s in watched) >= FD_SETSIZE:
                continue  # select() could not take this many here
            pairs[-1][1].send(b"x")  # one ready, the others idle
            t = time.perf_counter()
            for _ in range(calls):
                select.select(watched, [], [], 0)
            sel_us = (time.perf_counter() - t) / calls * 1e6
            ep = select.epoll()
            try:
                for s in watched:
                    ep.register(s.fileno(), select.EPOLLIN)
                t = time.perf_counter()
                for _ in range(calls):
                    ep.poll(0)
                ep_us = (time.perf_counter() - t) / calls * 1e6
            finally:
                ep.close()
            rows.append(
                {"fds": len(watched), "select_us": round(sel_us, 2), "epoll_us": round(ep_us, 2)}
            )
        finally:
            for a, b in pairs:
                a.close()
                b.close()
    return rows


def _server(children: Children, model: str, connections: int, progress: Progress) -> dict[str, Any]:
    server = children.echo_server(model)
    socks: list[socket.socket] = []
    try:
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            socks.append(sock)
        # Each connection asks for one echo; count answers, refusals (EOF/RST), silence.
        sel = selectors.DefaultSelector()
        for sock in socks:
            sock.setblocking(False)
            try:
                sock.send(b"ping")
            except OSError:
                pass
            sel.register(sock, selectors.EVENT_READ, sock)
        served = refused = 0
        pending = len(socks)
        end = time.monotonic() + 10
        while pending and time.monotonic() < end:
            for key, _ in sel.select(min(1.0, end - time.monotonic())):
                sock = key.data
                try:
                    data = sock.recv(16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    served += 1
                else:
                    refused += 1
                sel.unregister(sock)
                pending -= 1
        sel.close()
        view = process_view(
            server.pid, "", read_fd_links([server.pid]), take_snapshot(pids=[server.pid])
        )
        connected = [f.fd for f in view.by_role("connected")]
        refusals_logged = server.stderr_text(1 << 20).count("refusing a connection")
        progress(f"{model}: {served} served, {refused} refused, {pending} silent of {connections}")
        return {
            "model": model,
            "connections": connections,
            "served": served,
            "refused": refused,
            "silent": pending,
            "server_connected_fds": len(connected),
            "server_highest_fd": max(connected) if connected else None,
            "refusals_logged": refusals_logged,
        }
    finally:
        for sock in socks:
            sock.close()
        children.stop(server)


def run(params: Params, progress: Progress) -> Result:
    """Measures the FD_SETSIZE cliff in-process and on the real select/epoll servers.

    Args:
        params: connections per server, sizes and calls for the cost curve.
        progress: receives progress lines.

    Returns:
        The result; folklore when epoll served more than 1024 connections.
    """
    start = time.monotonic()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = params.connections + 64
    if soft < need <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cliff = _cliff()
    progress(
        f"select() on fd {cliff['high_fd']}: {cliff['high_select_error']}; "
        f"epoll ready: {cliff['high_epoll_ready']}"
    )
    cost = _cost(params.sizes, params.calls)
    with Children() as children:
        servers = [_server(children, m, params.connections, progress) for m in ("select", "epoll")]
    sel, ep = servers
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    below = sel["server_highest_fd"] is not None and sel["server_highest_fd"] < FD_SETSIZE
    if (
        ep["served"] > FD_SETSIZE
        and sel["served"] < params.connections
        and below
        and cliff["high_select_error"]
        and cliff["high_epoll_ready"]
    ):
        verdict = Verdict.FOLKLORE
        reason = (
            f"the epoll server served all {ep['served']} concurrent connections (its highest "
            f"descriptor {ep['server_highest_fd']}); the select server served {sel['served']} and "
            f"refused {sel['refused']}, those whose descriptor would have been >= FD_SETSIZE "
            f"(its highest connected descriptor was {sel['server_highest_fd']}): "
            f"select() rejected fd {cliff['high_fd']} ('{cliff['high_select_error']}') while epoll "
            f"watched it. 1024 is select()'s bitmap size, not a Linux limit; the per-process "
            f"limit here is RLIMIT_NOFILE = {nofile[1]} (see one-port for more than 65,535)"
        )
    else:
        verdict = Verdict.HOLDS
        reason = (
            f"epoll served {ep['served']} and select {sel['served']} of {params.connections}: no "
            f"server held more than {FD_SETSIZE} connections"
        )
    servers_table = Table(
        f"{params.connections} concurrent connections, each asking for one echo",
        [
            "model",
            "served",
            "refused (EOF/RST)",
            "silent",
            "server's connected fds",
            "highest server fd",
            "refusals logged",
        ],
        [
            [
                s["model"],
                s["served"],
                s["refused"],
                s["silent"],
                s["server_connected_fds"],
                s["server_highest_fd"],
                s["refusals_logged"],
            ]
            for s in servers
        ],
    )
    cost_table = Table(
        "cost of one call with N watched descriptors (one ready), from Python",
        ["descriptors", "select() µs", "epoll_wait() µs"],
        [[c["fds"], c["select_us"], c["epoll_us"]] for c in cost],
    )
    return Result(
        name="select-limit",
        claim=CLAIM,
        method=(
            f"select() and epoll are tried on descriptors {cliff['low_fd']} and {cliff['high_fd']} "
            f"in one process and timed over {len(params.sizes)} descriptor counts; then the real "
            f"select and epoll echo servers each get {params.connections} concurrent connections "
            f"that all ask for an echo at once."
        ),
        verdict=verdict,
        reason=reason,
        numbers={
            "fd_setsize": FD_SETSIZE,
            "select_served": sel["served"],
            "select_refused": sel["refused"],
            "epoll_served": ep["served"],
            "epoll_highest_fd": ep["server_highest_fd"],
            "select_error_at_fd": cliff["high_fd"],
            "nofile_soft": nofile[0],
            "nofile_hard": nofile[1],
        },
        tables=[servers_table, cost_table],
        series={"servers": servers, "cost": cost, "cliff": cliff},
        params=dataclasses.asdict(params),
        notes=[
            "select() costs grow with the number of descriptors watched (the kernel and the "
            "caller scan whole bitmaps); epoll_wait() costs grow with the number ready.",
        ],
        elapsed=time.monotonic() - start,
    )


def plot(result: Result, path: str) -> None:
    """Served connections per server, and the cost of one call per descriptor count."""
    plt, fig, ax = figure(10, 4)
    fig.delaxes(ax)
    left = fig.add_subplot(1, 2, 1)
    right = fig.add_subplot(1, 2, 2)
    servers = result.series["servers"]
    names = [s["model"] for s in servers]
    left.bar(names, [s["served"] for s in servers], label="served", color="#6aa84f")
    left.bar(
        names,
        [s["refused"] for s in servers],
        bottom=[s["served"] for s in servers],
        label="refused",
        color="#cc0000",
    )
    left.axhline(FD_SETSIZE, color="grey", ls=":", label="FD_SETSIZE = 1024")
    left.set_ylabel("connections")
    left.set_title(f"{servers[0]['connections']} concurrent clients")
    left.legend(fontsize=8)
    cost = result.series["cost"]
    right.plot([c["fds"] for c in cost], [c["select_us"] for c in cost], "o-", label="select()")
    right.plot([c["fds"] for c in cost], [c["epoll_us"] for c in cost], "s-", label="epoll_wait()")
    right.set_xlabel("descriptors watched (one ready)")
    right.set_ylabel("µs per call")
    right.set_title("cost of one call")
    right.legend(fontsize=8)
    save_figure(plt, fig, path)


EXPERIMENT: Experiment[Params] = Experiment(
    name="select-limit",
    title="The 1024 limit is select()'s",
    claim=CLAIM,
    full=Params(),
    quick=Params(connections=1100, sizes=(16, 512), calls=50),
    run=run,
    plot=plot,
)
