"""sock_diag (``NETLINK_SOCK_DIAG``): what /proc/net/tcp does not print, the backlog.

For a listening socket /proc/net/tcp shows the accept queue's current length but not
its limit. ``ss`` prints the limit as Send-Q; it asks the kernel through the
sock_diag netlink family, whose answer (``struct inet_diag_msg``) carries
``idiag_rqueue`` (for LISTEN: connections in the accept queue) and ``idiag_wqueue``
(for LISTEN: ``sk_max_ack_backlog``, the backlog after the somaxconn clamp). See
``inet_diag_fill_info``/``tcp_diag_get_info`` in net/ipv4/tcp_diag.c and
include/uapi/linux/inet_diag.h for the structures packed below.

:func:`build_request` and :func:`parse_messages` are pure; :func:`query` does the
netlink I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct

from duplex.inspect.errors import InspectError, ProcFormatError
from duplex.inspect.procnet import TcpState
from duplex.protocol.handler import Endpoint

__all__ = ["DiagEntry", "build_request", "parse_messages", "query"]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid
# (a dump matches every socket); inet_diag_sockid: sport, dport (big-endian),
# src[16], dst[16], if, cookie[2] = 48 bytes.
_REQ = struct.Struct("=BBBBI")
_SOCKID = struct.Struct(">HH16s16s")
# inet_diag_msg: family, state, timer, retrans, sockid(48), expires, rqueue, wqueue, uid, inode
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")
_SOCKID_SIZE = 48


@dataclasses.dataclass(frozen=True, slots=True)
class DiagEntry:
    """One ``inet_diag_msg``.

    Attributes:
        family: ``socket.AF_INET`` or ``socket.AF_INET6``.
        state: the TCP state.
        local: source address and port.
        remote: destination address and port.
        rqueue: for LISTEN, connections in the accept queue; else unread bytes.
        wqueue: for LISTEN, the backlog the kernel enforces; else unacknowledged bytes.
        uid: the owner's user id.
        inode: the socket inode (0 when no descriptor refers to it).
    """

    family: int
    state: TcpState
    local: Endpoint
    remote: Endpoint
    rqueue: int
    wqueue: int
    uid: int
    inode: int


def build_request(family: int, states: int, seq: int = 1) -> bytes:
    """Builds a dump request for the TCP sockets of ``family`` in ``states``.

    Args:
        family: ``socket.AF_INET`` or ``socket.AF_INET6``.
        states: a bit mask, ``1 << TcpState.X`` for each state wanted.
        seq: the netlink sequence number.

    Returns:
        One netlink message: nlmsghdr + inet_diag_req_v2.
    """
    body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, states) + bytes(_SOCKID_SIZE)
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


def _address(family: int, raw: bytes, port: int) -> Endpoint:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ip = ipaddress.IPv4Address(raw[:4]) if family == socket.AF_INET else ipaddress.IPv6Address(raw)
    return Endpoint(str(ip), port)


def parse_messages(data: bytes) -> tuple[list[DiagEntry], bool]:
    """Parses one ``recv()`` worth of sock_diag answers.

    Args:
        data: concatenated netlink messages.

    Returns:
        The entries, and True once ``NLMSG_DONE`` was seen (the dump is complete).

    Raises:
        InspectError: the kernel answered with an error (e.g. sock_diag not built).
        ProcFormatError: a truncated or malformed message.
    """
    entries: list[DiagEntry] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise ProcFormatError(f"sock_diag: bad message length {length}")
        body = data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3
        if mtype == NLMSG_DONE:
            return entries, True
        if mtype == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", body) if len(body) >= 4 else (0,)
            if code:
                raise InspectError(f"sock_diag refused the request: errno {-code}")
            continue
        if mtype != SOCK_DIAG_BY_FAMILY:
            continue
        need = _MSG_HEAD.size + _SOCKID_SIZE + _MSG_TAIL.size
        if len(body) < need:
            raise ProcFormatError(f"sock_diag: message of {len(body)} bytes, need {need}")
        family, state, _timer, _retrans = _MSG_HEAD.unpack_from(body, 0)
        sport, dport, src, dst = _SOCKID.unpack_from(body, _MSG_HEAD.size)
        _expires, rqueue, wqueue, uid, inode = _MSG_TAIL.unpack_from(
            body, _MSG_HEAD.size + _SOCKID_SIZE
        )
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise ProcFormatError(f"sock_diag: unexpected family {family}")
        entries.append(
            DiagEntry(
                family=family,
                state=TcpState.from_code(state),
                local=_address(family, src, sport),
                remote=_address(family, dst, dport),
                rqueue=rqueue,
                wqueue=wqueue,
                uid=uid,
                inode=inode,
            )
        )
    return entries, False


def query(states: int = 1 << TcpState.LISTEN, timeout: float = 2.0) -> list[DiagEntry]:
    """Asks the kernel for the TCP sockets (IPv4 and IPv6) in ``states``.

    Args:
        states: a bit mask of TCP states; LISTEN by default.
        timeout: seconds to wait for each answer.

    Returns:
        The entries of both families.

    Raises:
        InspectError: netlink or sock_diag is not available here.
    """
    entries: list[DiagEntry] = []
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    except OSError as exc:
        raise InspectError(f"sock_diag is not available: {exc.strerror or exc}") from exc
    with sock:
        sock.settimeout(timeout)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            try:
                sock.send(build_request(family, states, seq))
                done = False
                while not done:
                    got, done = parse_messages(sock.recv(1 << 16))
                    entries.extend(got)
            except OSError as exc:
                raise InspectError(f"sock_diag failed: {exc.strerror or exc}") from exc
    return entries
