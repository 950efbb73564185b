"""State changes between two snapshots: who connected, who closed first.

TCP's close is asymmetric, and the states say who went first. The end that calls
``close()`` first sends the first FIN and walks FIN_WAIT1, FIN_WAIT2, TIME_WAIT (and
stays in TIME_WAIT for 2 MSL, 60 s on Linux); the other end, receiving that FIN, walks
CLOSE_WAIT then LAST_ACK and is gone at once. So "who is in TIME_WAIT" answers "who
closed first" — which is why a busy server that closes first collects TIME_WAIT
sockets and one whose clients close first does not.

A TIME_WAIT socket has no descriptor (inode 0) any more, so :func:`diff` remembers
each end's owners from the earlier snapshot to say whose socket it was. Changes
faster than the polling interval are seen only by their result (ESTABLISHED straight
to TIME_WAIT); the result is enough to tell who closed first.
"""

from __future__ import annotations

import dataclasses

from duplex.inspect.fds import Owner
from duplex.inspect.procnet import TcpState
from duplex.inspect.views import End, Pair, Snapshot, join_pairs

__all__ = ["Change", "diff", "end_index"]

_ACTIVE = frozenset({TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.TIME_WAIT, TcpState.CLOSING})
_PASSIVE = frozenset({TcpState.CLOSE_WAIT, TcpState.LAST_ACK})

EndKey = tuple[str, int, str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One end of one connection changed.

    Attributes:
        kind: ``new`` (appeared), ``state`` (changed state) or ``gone``.
        pair: the connection, ``client ip:port <-> server ip:port``.
        role: ``client`` or ``server``: which end changed.
        address: that end's ip:port.
        old: its state before (None for ``new``).
        new: its state now (None for ``gone``).
        owners: its descriptors now, or before if it has none now (TIME_WAIT).
        note: what the change means (``closed first``, ``peer closed first``, ...).
        ports: ``(client port, server port)`` of the connection.
    """

    kind: str
    pair: str
    role: str
    address: str
    old: str | None
    new: str | None
    owners: tuple[Owner, ...]
    note: str
    ports: tuple[int, int] = (0, 0)

    def __str__(self) -> str:
        who = f" ({', '.join(str(o) for o in self.owners)})" if self.owners else ""
        old, new = self.old or "-", self.new or "gone"
        note = f": {self.note}" if self.note else ""
        return f"{self.pair}  {self.role} {self.address}{who}  {old} -> {new}{note}"

    def as_dict(self) -> dict[str, object]:
        """Returns a JSON-ready dict."""
        return {
            "kind": self.kind,
            "pair": self.pair,
            "role": self.role,
            "address": self.address,
            "old": self.old,
            "new": self.new,
            "owners": [o.as_dict() for o in self.owners],
            "note": self.note,
            "ports": list(self.ports),
        }


def end_index(pairs: list[Pair]) -> dict[EndKey, tuple[Pair, str, End]]:
    """Indexes the visible ends of ``pairs`` by their own (local, remote) 4-tuple."""
    index: dict[EndKey, tuple[Pair, str, End]] = {}
    for pair in pairs:
        for role, end, other in (
            ("client", pair.client, pair.server),
            ("server", pair.server, pair.client),
        ):
            if end.entry is not None:
                key = (end.address.host, end.address.port, other.address.host, other.address.port)
                index[key] = (pair, role, end)
    return index


def _meaning(old: TcpState | None, new: TcpState | None, role: str) -> str:
    other = "server" if role == "client" else "client"
    if new in _ACTIVE and old not in _ACTIVE:
        return f"the {role} closed first (active close)"
    if new is TcpState.TIME_WAIT:
        return f"the {role} closed first; TIME_WAIT for 60 s"
    if new in _PASSIVE and old not in _PASSIVE:
        return f"the {other} closed first; the {role} got its FIN"
    if new is TcpState.ESTABLISHED and old in (None, TcpState.SYN_SENT, TcpState.SYN_RECV):
        return "connected"
    if new is None and old is TcpState.TIME_WAIT:
        return "TIME_WAIT expired"
    if new is None:
        return "closed"
    return ""


def diff(
    before: Snapshot,
    after: Snapshot,
    remembered: dict[EndKey, tuple[Owner, ...]] | None = None,
) -> list[Change]:
    """Returns what changed between two snapshots, one :class:`Change` per end.

    Args:
        before: the earlier snapshot.
        after: the later one.
        remembered: owners seen in earlier snapshots, by end; updated in place. A
            watcher passes the same dict on every call, so an end that lost its
            descriptor several polls ago (FIN_WAIT2, then TIME_WAIT) is still named.

    Returns:
        The changes, new and changed ends first, then the gone ones.
    """
    memory = {} if remembered is None else remembered
    old = end_index(join_pairs(before))
    new = end_index(join_pairs(after))
    for index in (old, new):
        for key, (_pair, _role, end) in index.items():
            if end.owners:
                memory[key] = end.owners
    changes: list[Change] = []
    for key, (pair, role, end) in new.items():
        prev = old.get(key)
        prev_state = prev[2].state if prev else None
        if prev is not None and prev_state is end.state:
            continue
        owners = end.owners or memory.get(key, ())
        changes.append(
            Change(
                kind="new" if prev is None else "state",
                pair=str(pair),
                role=role,
                address=str(end.address),
                old=None if prev_state is None else prev_state.name,
                new=None if end.state is None else end.state.name,
                owners=tuple(owners),
                note=_meaning(prev_state, end.state, role),
                ports=(pair.client.address.port, pair.server.address.port),
            )
        )
    for key, (pair, role, end) in old.items():
        if key not in new:
            changes.append(
                Change(
                    kind="gone",
                    pair=str(pair),
                    role=role,
                    address=str(end.address),
                    old=None if end.state is None else end.state.name,
                    new=None,
                    owners=end.owners or memory.get(key, ()),
                    note=_meaning(end.state, None, role),
                    ports=(pair.client.address.port, pair.server.address.port),
                )
            )
    for key in list(memory):
        if key not in new:
            del memory[key]
    return changes
