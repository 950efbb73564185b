"""Views over one snapshot of the socket tables: pairs, listeners, one process.

All pure: a :class:`Snapshot` (the parsed tables plus the inode owners) goes in,
plain dataclasses with ``as_dict()`` come out, which the CLI prints as text or JSON.

*Pairs.* A TCP connection between two processes on this host appears twice in
/proc/net/tcp, once per end, with local and remote swapped. :func:`join_pairs`
joins the two rows into one connection, written as the texts write a socket pair,
``client ip:port <-> server ip:port``, and tells which end is the server: the end
whose local address has a listening socket on it; failing that (the listener was
closed), the end whose port is *not* in the ephemeral range; failing that, the lower
port. An end with no descriptor (inode 0) is explained: not yet accepted, TIME_WAIT,
or orphaned after close().
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from duplex.inspect.diag import DiagEntry
from duplex.inspect.fds import FdLink, Owner, describe_link, socket_inode
from duplex.inspect.procnet import SocketEntry, TcpState, UnixEntry, normalize_host
from duplex.protocol.handler import Endpoint

__all__ = [
    "DEFAULT_EPHEMERAL",
    "End",
    "FdView",
    "ListenView",
    "Pair",
    "ProcView",
    "Snapshot",
    "filter_pairs",
    "join_pairs",
    "listeners",
    "process_view",
]

DEFAULT_EPHEMERAL = (32768, 60999)
"""Linux's default ``net.ipv4.ip_local_port_range``."""

_WILDCARDS = frozenset({"0.0.0.0", "::"})
_CLOSED_FIRST = frozenset(
    {TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.TIME_WAIT, TcpState.CLOSING}
)
_PEER_CLOSED_FIRST = frozenset({TcpState.CLOSE_WAIT, TcpState.LAST_ACK})


@dataclasses.dataclass(slots=True)
class Snapshot:
    """The socket tables and their owners at one moment.

    Attributes:
        tcp: rows of /proc/net/tcp and tcp6.
        udp: rows of /proc/net/udp and udp6.
        unix: rows of /proc/net/unix.
        owners: descriptors referring to each socket inode.
        backlogs: sock_diag answers for listening sockets, by inode (the backlog is
            only there); empty when sock_diag was not asked or not available.
        ephemeral: the ephemeral port range, ``(low, high)``.
        taken: when it was taken (seconds, any clock the caller likes).
    """

    tcp: list[SocketEntry]
    udp: list[SocketEntry] = dataclasses.field(default_factory=list)
    unix: list[UnixEntry] = dataclasses.field(default_factory=list)
    owners: dict[int, list[Owner]] = dataclasses.field(default_factory=dict)
    backlogs: dict[int, DiagEntry] = dataclasses.field(default_factory=dict)
    ephemeral: tuple[int, int] = DEFAULT_EPHEMERAL
    taken: float = 0.0

    def owners_of(self, inode: int) -> list[Owner]:
        """Returns the descriptors that refer to socket ``inode`` (none for inode 0)."""
        return self.owners.get(inode, []) if inode else []


def _endpoint_dict(endpoint: Endpoint) -> dict[str, object]:
    return {"address": str(endpoint), "host": endpoint.host, "port": endpoint.port}


@dataclasses.dataclass(frozen=True, slots=True)
class End:
    """One end of a connection as this host sees it.

    Attributes:
        address: the end's own ip:port.
        entry: its row in /proc/net/tcp, or None when it is not on this host (or gone).
        owners: the processes and descriptors that refer to it.
        note: why it has no owner, or what its state means, in words.
    """

    address: Endpoint
    entry: SocketEntry | None
    owners: tuple[Owner, ...] = ()
    note: str = ""

    @property
    def visible(self) -> bool:
        """True when this end is a socket on this host."""
        return self.entry is not None

    @property
    def state(self) -> TcpState | None:
        """The end's TCP state, or None when it is not visible."""
        return None if self.entry is None else self.entry.state

    def as_dict(self) -> dict[str, object]:
        """Returns a JSON-ready dict."""
        entry = self.entry
        return {
            **_endpoint_dict(self.address),
            "visible": entry is not None,
            "state": None if entry is None else entry.state.name,
            "send_q": None if entry is None else entry.tx_queue,
            "recv_q": None if entry is None else entry.rx_queue,
            "inode": None if entry is None else entry.inode,
            "owners": [o.as_dict() for o in self.owners],
            "note": self.note,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Pair:
    """One TCP connection, both ends joined: ``client ip:port <-> server ip:port``."""

    client: End
    server: End
    proto: str

    @property
    def key(self) -> tuple[str, int, str, int]:
        """``(client host, client port, server host, server port)``, unmapped."""
        return (
            normalize_host(self.client.address.host),
            self.client.address.port,
            normalize_host(self.server.address.host),
            self.server.address.port,
        )

    @property
    def state(self) -> str:
        """Both states, ``ESTABLISHED`` when equal, else ``CLIENT_STATE/SERVER_STATE``."""
        c = self.client.state.name if self.client.state else "-"
        s = self.server.state.name if self.server.state else "-"
        return c if c == s else f"{c}/{s}"

    @property
    def closed_first(self) -> str | None:
        """``"client"`` or ``"server"``: the end that closed first, when the states tell."""
        cs, ss = self.client.state, self.server.state
        if cs in _CLOSED_FIRST or ss in _PEER_CLOSED_FIRST:
            return "client"
        if ss in _CLOSED_FIRST or cs in _PEER_CLOSED_FIRST:
            return "server"
        return None

    def __str__(self) -> str:
        return f"{self.client.address} <-> {self.server.address}"

    def as_dict(self) -> dict[str, object]:
        """Returns a JSON-ready dict."""
        return {
            "pair": str(self),
            "proto": self.proto,
            "state": self.state,
            "closed_first": self.closed_first,
            "client": self.client.as_dict(),
            "server": self.server.as_dict(),
        }


def _listening_index(entries: Iterable[SocketEntry]) -> dict[int, list[SocketEntry]]:
    index: dict[int, list[SocketEntry]] = {}
    for entry in entries:
        if entry.is_listening:
            index.setdefault(entry.local.port, []).append(entry)
    return index


def _listener_for(local: Endpoint, index: Mapping[int, list[SocketEntry]]) -> SocketEntry | None:
    host = normalize_host(local.host)
    for listener in index.get(local.port, ()):
        lhost = normalize_host(listener.local.host)
        if lhost == host or lhost in _WILDCARDS:
            return listener
    return None


def _note(
    entry: SocketEntry, owners: list[Owner], listener: SocketEntry | None, snapshot: Snapshot
) -> str:
    state = entry.state
    if owners:
        if state is TcpState.CLOSE_WAIT:
            return "the peer closed; this end has not called close() yet"
        return ""
    if state is TcpState.TIME_WAIT:
        return "no descriptor: TIME_WAIT, this end closed first (the kernel keeps it 60 s)"
    if state in (TcpState.ESTABLISHED, TcpState.SYN_RECV) and listener is not None:
        lo = snapshot.owners_of(listener.inode)
        by = f" of {lo[0]}" if lo else ""
        return f"no descriptor yet: waiting in the accept queue{by}"
    if state in (TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.CLOSING, TcpState.LAST_ACK):
        return "no descriptor: closed by its process, the kernel finishes the close"
    if snapshot.owners:
        return "no descriptor found (another namespace, or the process is gone)"
    return ""


def _is_server(
    entry: SocketEntry, index: Mapping[int, list[SocketEntry]], ephemeral: tuple[int, int]
) -> tuple[bool, bool]:
    """(has a listener, port is outside the ephemeral range)."""
    lo, hi = ephemeral
    return (
        _listener_for(entry.local, index) is not None,
        not lo <= entry.local.port <= hi,
    )


def _make_end(
    entry: SocketEntry, index: Mapping[int, list[SocketEntry]], snapshot: Snapshot
) -> End:
    owners = snapshot.owners_of(entry.inode)
    listener = _listener_for(entry.local, index)
    return End(entry.local, entry, tuple(owners), _note(entry, owners, listener, snapshot))


def join_pairs(snapshot: Snapshot) -> list[Pair]:
    """Joins the two rows of every TCP connection on this host into one :class:`Pair`.

    Listening sockets are left out (see :func:`listeners`). A connection whose other
    end is not on this host, or is already gone, gives a pair with one visible end.

    Args:
        snapshot: the tables and owners.

    Returns:
        The connections, sorted by server address then client address.
    """
    index = _listening_index(snapshot.tcp)
    by_key: dict[tuple[str, int, str, int], SocketEntry] = {}
    for entry in snapshot.tcp:
        if entry.state is not TcpState.LISTEN:
            by_key[entry.key] = entry
    pairs: list[Pair] = []
    seen: set[tuple[str, int, str, int]] = set()
    for key, entry in by_key.items():
        if key in seen:
            continue
        seen.add(key)
        reverse = (key[2], key[3], key[0], key[1])
        peer = by_key.get(reverse) if reverse != key else None
        if peer is not None:
            seen.add(reverse)
        mine = _make_end(entry, index, snapshot)
        if peer is not None:
            other = _make_end(peer, index, snapshot)
            a = _is_server(entry, index, snapshot.ephemeral)
            b = _is_server(peer, index, snapshot.ephemeral)
            entry_is_server = a > b if a != b else entry.local.port < peer.local.port
        else:
            other = End(entry.remote, None)
            has_listener, fixed_port = _is_server(entry, index, snapshot.ephemeral)
            remote_fixed = not snapshot.ephemeral[0] <= entry.remote.port <= snapshot.ephemeral[1]
            if has_listener:
                entry_is_server = True
            elif _listener_for(entry.remote, index) is not None:
                entry_is_server = False  # it talks to a listening port of this host
            elif fixed_port != remote_fixed:
                entry_is_server = fixed_port
            else:
                entry_is_server = entry.local.port < entry.remote.port
        client, server = (other, mine) if entry_is_server else (mine, other)
        proto = "tcp6" if ":" in normalize_host(entry.local.host) else "tcp"
        pairs.append(Pair(client, server, proto))
    pairs.sort(
        key=lambda p: (
            p.server.address.port,
            p.server.address.host,
            p.client.address.port,
            p.client.address.host,
        )
    )
    return pairs


def filter_pairs(
    pairs: Iterable[Pair],
    *,
    port: int | None = None,
    pid: int | None = None,
    state: str | None = None,
) -> list[Pair]:
    """Keeps the pairs with ``port`` on either end, owned by ``pid``, in ``state``.

    Args:
        pairs: from :func:`join_pairs`.
        port: a port of either end.
        pid: a process that owns either end.
        state: a TCP state name of either end (``TIME_WAIT``, ...), case-insensitive.

    Returns:
        The pairs that match every filter given.
    """
    result = []
    want_state = state.upper() if state else None
    for pair in pairs:
        ends = (pair.client, pair.server)
        if port is not None and all(e.address.port != port for e in ends):
            continue
        if pid is not None and all(o.pid != pid for e in ends for o in e.owners):
            continue
        if want_state and all(e.state is None or e.state.name != want_state for e in ends):
            continue
        result.append(pair)
    return result


@dataclasses.dataclass(frozen=True, slots=True)
class ListenView:
    """A listening socket and what its two queue columns mean.

    Attributes:
        proto: ``tcp``, ``tcp6`` or ``unix``.
        address: where it listens (a path for Unix sockets).
        inode: the socket inode.
        owners: the processes and descriptors that hold it (several after fork(),
            or one per worker with SO_REUSEPORT, each its own socket).
        accept_queue: connections that completed the handshake and wait for
            ``accept()`` now (Recv-Q); None where the kernel does not say (Unix).
        backlog: the most the accept queue holds, ``listen()``'s argument after the
            somaxconn clamp (Send-Q in ``ss``); None without sock_diag.
    """

    proto: str
    address: str
    inode: int
    owners: tuple[Owner, ...]
    accept_queue: int | None
    backlog: int | None

    def as_dict(self) -> dict[str, object]:
        """Returns a JSON-ready dict."""
        return {
            "proto": self.proto,
            "address": self.address,
            "inode": self.inode,
            "owners": [o.as_dict() for o in self.owners],
            "accept_queue": self.accept_queue,
            "backlog": self.backlog,
            "recv_q_means": "connections waiting in the accept queue now",
            "send_q_means": "the accept queue's limit: listen() backlog clamped to somaxconn",
        }


def listeners(snapshot: Snapshot, *, port: int | None = None) -> list[ListenView]:
    """Lists the listening TCP and Unix stream sockets.

    Args:
        snapshot: the tables, owners and (optionally) sock_diag backlogs.
        port: keep only TCP listeners on this port.

    Returns:
        TCP listeners sorted by port, then Unix ones (unless ``port`` is given).
    """
    views: list[ListenView] = []
    for entry in sorted(
        (e for e in snapshot.tcp if e.is_listening), key=lambda e: (e.local.port, e.local.host)
    ):
        if port is not None and entry.local.port != port:
            continue
        diag = snapshot.backlogs.get(entry.inode)
        views.append(
            ListenView(
                proto=entry.proto,
                address=str(entry.local),
                inode=entry.inode,
                owners=tuple(snapshot.owners_of(entry.inode)),
                accept_queue=diag.rqueue if diag is not None else entry.rx_queue,
                backlog=diag.wqueue if diag is not None else None,
            )
        )
    if port is None:
        for unix in snapshot.unix:
            if unix.is_listening:
                views.append(
                    ListenView(
                        proto="unix",
                        address=unix.path or "(unnamed)",
                        inode=unix.inode,
                        owners=tuple(snapshot.owners_of(unix.inode)),
                        accept_queue=None,
                        backlog=None,
                    )
                )
    return views


@dataclasses.dataclass(frozen=True, slots=True)
class FdView:
    """One descriptor of a process, with what the kernel knows of its socket.

    Attributes:
        fd: the descriptor number.
        target: the link target (``socket:[123]``, a path, ``pipe:[..]``).
        kind: ``socket``, ``pipe``, ``anon``, ``dev`` or ``file``.
        role: for sockets, ``listening``, ``connected``, ``udp``, ``unix-listening``,
            ``unix-connected``, ``unix`` or ``socket`` (netlink and others); else "".
        proto: ``tcp``, ``tcp6``, ``udp``, ``udp6``, ``unix`` or "".
        local: the local address (or Unix path).
        remote: the remote address, "" when none.
        state: the TCP state name (or Unix state), "" when none.
        send_q: bytes not yet acknowledged (TCP) or queued (UDP).
        recv_q: bytes not yet read; for a listener, the accept queue.
        shared_with: other processes holding the same socket (after fork()).
    """

    fd: int
    target: str
    kind: str
    role: str = ""
    proto: str = ""
    local: str = ""
    remote: str = ""
    state: str = ""
    send_q: int | None = None
    recv_q: int | None = None
    shared_with: tuple[Owner, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """Returns a JSON-ready dict."""
        return {
            "fd": self.fd,
            "target": self.target,
            "kind": self.kind,
            "role": self.role,
            "proto": self.proto,
            "local": self.local,
            "remote": self.remote,
            "state": self.state,
            "send_q": self.send_q,
            "recv_q": self.recv_q,
            "shared_with": [o.as_dict() for o in self.shared_with],
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ProcView:
    """The descriptors of one process."""

    pid: int
    comm: str
    fds: tuple[FdView, ...]

    def by_role(self, role: str) -> list[FdView]:
        """Returns the descriptors with ``role``."""
        return [f for f in self.fds if f.role == role]

    def as_dict(self) -> dict[str, object]:
        """Returns a JSON-ready dict."""
        counts: dict[str, int] = {}
        for f in self.fds:
            label = f.role or f.kind
            counts[label] = counts.get(label, 0) + 1
        return {
            "pid": self.pid,
            "comm": self.comm,
            "counts": counts,
            "fds": [f.as_dict() for f in self.fds],
        }


def process_view(pid: int, comm: str, links: Iterable[FdLink], snapshot: Snapshot) -> ProcView:
    """Describes each descriptor of process ``pid``.

    Args:
        pid: the process.
        comm: its command name.
        links: its descriptors (``/proc/PID/fd``).
        snapshot: the socket tables and owners (of every process, to find sharing).

    Returns:
        The view, descriptors in numeric order.
    """
    inet = {e.inode: e for e in (*snapshot.tcp, *snapshot.udp) if e.inode}
    unix = {u.inode: u for u in snapshot.unix}
    views: list[FdView] = []
    for link in sorted(links, key=lambda lk: lk.fd):
        kind = describe_link(link.target)
        inode = socket_inode(link.target)
        if inode is None:
            views.append(FdView(link.fd, link.target, kind))
            continue
        shared = tuple(o for o in snapshot.owners_of(inode) if o.pid != pid)
        entry = inet.get(inode)
        if entry is not None:
            tcp = entry.proto.startswith("tcp")
            if not tcp:
                role = "udp"
            elif entry.state is TcpState.LISTEN:
                role = "listening"
            else:
                role = "connected"
            connected = tcp and entry.state is not TcpState.LISTEN
            views.append(
                FdView(
                    link.fd,
                    link.target,
                    kind,
                    role=role,
                    proto=entry.proto,
                    local=str(entry.local),
                    remote=str(entry.remote) if connected or entry.remote.port else "",
                    state=entry.state.name
                    if tcp
                    else ("connected" if entry.remote.port else "unconnected"),
                    send_q=entry.tx_queue,
                    recv_q=entry.rx_queue,
                    shared_with=shared,
                )
            )
            continue
        uentry = unix.get(inode)
        if uentry is not None:
            role = (
                "unix-listening"
                if uentry.is_listening
                else ("unix-connected" if uentry.state.name == "CONNECTED" else "unix")
            )
            views.append(
                FdView(
                    link.fd,
                    link.target,
                    kind,
                    role=role,
                    proto="unix",
                    local=uentry.path,
                    state=f"{uentry.type_name} {uentry.state.name.lower()}",
                    shared_with=shared,
                )
            )
            continue
        views.append(FdView(link.fd, link.target, kind, role="socket", shared_with=shared))
    return ProcView(pid, comm, tuple(views))
