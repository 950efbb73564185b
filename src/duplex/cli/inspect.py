"""``duplex inspect``: connections with both ends, listeners, one process, a sockaddr.

Thin: the tables are read and joined by :mod:`duplex.inspect`; this module only
chooses what to show and prints it as text or JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from duplex.cli._common import DuplexGroup
from duplex.inspect import readers
from duplex.inspect.fds import Owner
from duplex.inspect.procnet import TcpState
from duplex.inspect.sockaddr import describe
from duplex.inspect.views import End, Pair, filter_pairs, join_pairs, listeners, process_view
from duplex.inspect.watch import diff

__all__ = ["inspect"]

_STATES = [s.name for s in TcpState]


@click.group(cls=DuplexGroup)
def inspect() -> None:
    """Socket pairs, listeners, descriptors and TCP states, read from /proc.

    \b
    Examples:
      duplex inspect pairs --port 7007          each connection once, both ends
      duplex inspect listen                     listening sockets and their queues
      duplex inspect proc 1234                  a process's descriptors
      duplex inspect sockaddr 127.0.0.1:7007    the sockaddr_in, byte by byte
    """


def _owners(end: End) -> str:
    if end.owners:
        return ", ".join(str(o) for o in end.owners)
    if not end.visible:
        return "(not a socket on this host, or already gone)"
    return "(no descriptor)"


def _print_pair(pair: Pair) -> None:
    first = pair.closed_first
    closed = f"   ({first} closed first)" if first else ""
    click.echo(f"{pair}   {pair.state}{closed}")
    for role, end in (("client", pair.client), ("server", pair.server)):
        queues = ""
        if end.entry is not None:
            queues = f"   send-q {end.entry.tx_queue} recv-q {end.entry.rx_queue}"
        state = end.state.name if end.state else "-"
        click.echo(f"    {role:<6} {state:<12} {_owners(end)}{queues}")
        if end.note:
            click.echo(f"           {end.note}")


def _pairs(port: int | None, pid: int | None, state: str | None) -> list[Pair]:
    snap = readers.take_snapshot()
    return filter_pairs(join_pairs(snap), port=port, pid=pid, state=state)


@inspect.command(
    "pairs",
    epilog="\b\nExamples:\n"
    "  duplex inspect pairs                       every TCP connection on this host\n"
    "  duplex inspect pairs --port 7007 --json    those of one server port, as JSON\n"
    "  duplex inspect pairs --port 7007 --watch   print state changes as they happen\n"
    "  duplex inspect pairs --state TIME_WAIT     who closed first",
)
@click.option("--port", "-p", type=click.IntRange(1, 65535), help="A port of either end.")
@click.option("--pid", type=click.IntRange(min=1), help="A process owning either end.")
@click.option(
    "--state", type=click.Choice(_STATES, case_sensitive=False), help="A TCP state of either end."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (one object per line with --watch)."
)
@click.option("--watch", "-w", is_flag=True, help="Keep polling and print state changes.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="Seconds between polls with --watch.",
)
@click.option(
    "--count", type=click.IntRange(min=1), default=None, help="Stop --watch after N polls."
)
def pairs_cmd(
    port: int | None,
    pid: int | None,
    state: str | None,
    as_json: bool,
    watch: bool,
    interval: float,
    count: int | None,
) -> None:
    """Each TCP connection once, both ends joined: client ip:port <-> server ip:port.

    For each end: its state, the process and descriptor that own it (none when it
    waits in an accept queue, is in TIME_WAIT or was closed), and its queued bytes
    (send-q: sent, not yet acknowledged; recv-q: received, not yet read).
    With --watch, every state change is printed, and who closed first is named:
    the end that enters FIN_WAIT/TIME_WAIT closed first, the end in CLOSE_WAIT did not.
    """
    if pid is not None and not os.path.exists(f"/proc/{pid}"):
        raise click.ClickException(f"no process {pid}")
    if not watch:
        found = _pairs(port, pid, state)
        if as_json:
            click.echo(json.dumps([p.as_dict() for p in found], indent=2))
            return
        if not found:
            click.echo("no connections match")
            return
        for pair in found:
            _print_pair(pair)
        click.echo(f"{len(found)} connection(s)")
        return
    _watch(port, pid, state, as_json, interval, count)


def _watch(
    port: int | None,
    pid: int | None,
    state: str | None,
    as_json: bool,
    interval: float,
    count: int | None,
) -> None:
    before = readers.take_snapshot()
    shown = filter_pairs(join_pairs(before), port=port, pid=pid, state=state)
    if as_json:
        click.echo(json.dumps({"event": "watching", "connections": len(shown)}))
    else:
        click.echo(f"watching {len(shown)} connection(s); Ctrl-C to stop")
    sys.stdout.flush()
    polls = 0
    remembered: dict[tuple[str, int, str, int], tuple[Owner, ...]] = {}
    diff(before, before, remembered)
    try:
        while count is None or polls < count:
            time.sleep(interval)
            polls += 1
            after = readers.take_snapshot()
            for change in diff(before, after, remembered):
                if port is not None and port not in change.ports:
                    continue
                if pid is not None and all(o.pid != pid for o in change.owners):
                    continue
                if state is not None and state.upper() not in (change.old, change.new):
                    continue
                stamp = time.strftime("%H:%M:%S", time.localtime(after.taken))
                if as_json:
                    click.echo(
                        json.dumps({"event": "change", "time": after.taken, **change.as_dict()})
                    )
                else:
                    click.echo(f"{stamp} {change}")
                sys.stdout.flush()
            before = after
    except KeyboardInterrupt:
        pass


@inspect.command(
    "listen",
    epilog="\b\nExamples:\n"
    "  duplex inspect listen                  every listening socket\n"
    "  duplex inspect listen --port 7007 --json",
)
@click.option("--port", "-p", type=click.IntRange(1, 65535), help="Only listeners on this port.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def listen_cmd(port: int | None, as_json: bool) -> None:
    """Listening sockets, with what their two queue numbers mean.

    For a LISTEN socket Recv-Q is the accept queue now: connections whose handshake
    completed and that wait for accept(). Send-Q is the accept queue's limit: the
    backlog given to listen(), clamped to net.core.somaxconn (read with sock_diag,
    as ss does; /proc/net/tcp does not show it). Several owners of one socket mean
    it was inherited across fork(); SO_REUSEPORT workers each show their own socket.
    """
    snap = readers.take_snapshot(unix=port is None, backlogs=True)
    views = listeners(snap, port=port)
    if as_json:
        click.echo(json.dumps([v.as_dict() for v in views], indent=2))
        return
    if not views:
        click.echo("no listening sockets match")
        return
    click.echo(f"{'proto':<6} {'address':<28} {'Recv-Q':>7} {'Send-Q':>7}  owners")
    for v in views:
        rq = "-" if v.accept_queue is None else str(v.accept_queue)
        sq = "-" if v.backlog is None else str(v.backlog)
        owners = ", ".join(str(o) for o in v.owners) or "(no descriptor found)"
        click.echo(f"{v.proto:<6} {v.address:<28} {rq:>7} {sq:>7}  {owners}")
    click.echo(
        "\nRecv-Q (LISTEN): connections waiting in the accept queue now (handshake done, "
        "not yet accept()ed)\nSend-Q (LISTEN): the accept queue's limit, the listen() backlog "
        "clamped to net.core.somaxconn"
    )


@inspect.command(
    "proc",
    epilog="\b\nExamples:\n"
    "  duplex inspect proc 1234\n"
    "  duplex inspect proc $(pgrep -n -f 'duplex echo') --json",
)
@click.argument("pid", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def proc_cmd(pid: int, as_json: bool) -> None:
    """The descriptors of process PID: listening sockets, connected ones, the rest.

    A descriptor is the process's number for a kernel object; 'shared with' lists the
    other processes holding the same socket (inherited across fork()).
    """
    links = readers.read_fd_links([pid], strict_pid=pid)
    snap = readers.take_snapshot(udp=True, unix=True)
    view = process_view(pid, readers.read_comm(pid), links, snap)
    if as_json:
        click.echo(json.dumps(view.as_dict(), indent=2))
        return
    click.echo(f"process {pid} ({view.comm}): {len(view.fds)} descriptor(s)")
    sections = [
        ("listening", ("listening", "unix-listening")),
        ("connected", ("connected", "unix-connected")),
        ("other sockets", ("udp", "unix", "socket")),
    ]
    for title, roles in sections:
        fds = [f for f in view.fds if f.role in roles]
        if not fds:
            continue
        click.echo(f"{title}:")
        for f in fds:
            where = f.local + (f" -> {f.remote}" if f.remote else "")
            shared = ""
            if f.shared_with:
                shared = "  shared with " + ", ".join(
                    f"pid {o.pid} fd {o.fd}" for o in f.shared_with
                )
            queues = "" if f.send_q is None else f"  send-q {f.send_q} recv-q {f.recv_q}"
            click.echo(f"  fd {f.fd:<5} {f.proto:<5} {where:<48} {f.state}{queues}{shared}")
    rest = [f for f in view.fds if not f.role]
    if rest:
        kinds: dict[str, int] = {}
        for f in rest:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        click.echo("other descriptors: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))


@inspect.command(
    "sockaddr",
    epilog="\b\nExamples:\n"
    "  duplex inspect sockaddr 127.0.0.1:7007\n"
    "  duplex inspect sockaddr '[::1]:http' --json\n"
    "  duplex inspect sockaddr localhost:ssh",
)
@click.argument("address", metavar="HOST:PORT")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sockaddr_cmd(address: str, as_json: bool) -> None:
    """The sockaddr_in (16 bytes) or sockaddr_in6 (28 bytes) of HOST:PORT, field by field.

    Shows the bytes bind() and connect() hand the kernel, which field is in network
    byte order (big-endian: port and address) and which in host order (the family),
    and the port's service name from /etc/services. PORT may be a service name.
    """
    view = describe(address)
    if as_json:
        click.echo(json.dumps(view.as_dict(), indent=2))
        return
    click.echo(
        f"struct {view.struct_name} for {view.host} port {view.port} ({len(view.raw)} bytes)"
    )
    click.echo(f"  {view.raw.hex(' ')}")
    for f in view.fields:
        click.echo(f"  +{f.offset:<2} {f.name:<14} {f.ctype:<17} {f.raw.hex(' '):<48} {f.value}")
        click.echo(f"       {f.note}")
    if view.services:
        names = "; ".join(f"{proto}: {', '.join(n)}" for proto, n in view.services.items())
        click.echo(f"service (/etc/services): {names}")
    else:
        click.echo("service (/etc/services): none listed for this port")
    for note in view.notes:
        click.echo(f"note: {note}")
