"""Socket pairs, descriptors and TCP states: pure parsers of /proc/net plus thin readers.

The parsers (:mod:`~duplex.inspect.procnet`, :mod:`~duplex.inspect.procmem`,
:mod:`~duplex.inspect.fds`, :mod:`~duplex.inspect.diag`, :mod:`~duplex.inspect.sockaddr`)
take text or bytes and return typed rows; :mod:`~duplex.inspect.readers` opens the
files; :mod:`~duplex.inspect.views` joins rows into what ``duplex inspect`` shows
(connections with both ends, listeners, one process's descriptors) and
:mod:`~duplex.inspect.watch` diffs two snapshots into state changes.
"""

from __future__ import annotations

from duplex.inspect.errors import InspectError, NoSuchProcess, ProcFormatError
from duplex.inspect.fds import FdLink, Owner, owners_by_inode, socket_inode
from duplex.inspect.procnet import (
    SocketEntry,
    TcpState,
    UnixEntry,
    decode_address,
    parse_netstat,
    parse_sockstat,
    parse_tcp,
    parse_udp,
    parse_unix,
)
from duplex.inspect.readers import take_snapshot
from duplex.inspect.sockaddr import describe, encode_sockaddr
from duplex.inspect.views import (
    End,
    ListenView,
    Pair,
    ProcView,
    Snapshot,
    filter_pairs,
    join_pairs,
    listeners,
    process_view,
)
from duplex.inspect.watch import Change, diff

__all__ = [
    "Change",
    "End",
    "FdLink",
    "InspectError",
    "ListenView",
    "NoSuchProcess",
    "Owner",
    "Pair",
    "ProcFormatError",
    "ProcView",
    "Snapshot",
    "SocketEntry",
    "TcpState",
    "UnixEntry",
    "decode_address",
    "describe",
    "diff",
    "encode_sockaddr",
    "filter_pairs",
    "join_pairs",
    "listeners",
    "owners_by_inode",
    "parse_netstat",
    "parse_sockstat",
    "parse_tcp",
    "parse_udp",
    "parse_unix",
    "process_view",
    "socket_inode",
    "take_snapshot",
]
