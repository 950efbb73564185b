"""Pure parsers of the kernel's socket tables under ``/proc/net``.

Every function here takes the *text* of a file and returns typed rows; none of them
opens a file, so each is tested with fixture text (the thin readers are in
:mod:`duplex.inspect.readers`). The formats are the kernel's ``seq_file`` outputs:

- ``/proc/net/tcp`` and ``tcp6``: ``tcp4_seq_show`` / ``tcp6_seq_show`` in
  net/ipv4/tcp_ipv4.c and net/ipv6/tcp_ipv6.c;
- ``/proc/net/udp`` and ``udp6``: ``udp4_seq_show`` (same columns, plus drops);
- ``/proc/net/unix``: ``unix_seq_show`` in net/unix/af_unix.c;
- ``/proc/net/netstat`` and ``snmp``: pairs of lines, names then values, per prefix;
- ``/proc/net/sockstat`` and ``sockstat6``: ``PROTO: key value key value ...``.

Addresses in tcp/udp are printed with ``%08X`` of the 32-bit words *as they sit in
memory*: the address is in network byte order in memory, and printing it as a native
integer reverses the bytes on a little-endian machine, so ``127.0.0.1`` reads
``0100007F``. The port is converted to host order before printing, so ``7007`` reads
``1B5F``. :func:`decode_address` undoes exactly that, given the machine's byte order.

Two columns mean something else for a listening socket: ``rx_queue`` is the number of
connections in the accept queue (completed handshakes not yet accepted), and the
backlog is not in this file at all (``ss`` gets it from sock_diag, as
:mod:`duplex.inspect.diag` does).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import sys
from collections.abc import Iterable
from typing import Literal

from duplex.inspect.errors import ProcFormatError
from duplex.protocol.handler import Endpoint

__all__ = [
    "SocketEntry",
    "TcpState",
    "UnixEntry",
    "UnixState",
    "count_states",
    "decode_address",
    "normalize_host",
    "parse_netstat",
    "parse_sockstat",
    "parse_tcp",
    "parse_udp",
    "parse_unix",
]

SO_ACCEPTCON = 0x10000
"""``__SO_ACCEPTCON`` in the Flags column of /proc/net/unix: a listening socket."""


class TcpState(enum.IntEnum):
    """TCP states as numbered in include/net/tcp_states.h (the ``st`` column)."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12
    BOUND_INACTIVE = 13

    @classmethod
    def from_code(cls, code: int) -> TcpState:
        """Returns the state numbered ``code``.

        Raises:
            ProcFormatError: a number the kernel does not use.
        """
        try:
            return cls(code)
        except ValueError:
            raise ProcFormatError(f"unknown TCP state {code:#04x}") from None


class UnixState(enum.IntEnum):
    """``socket_state`` of a Unix socket (the ``St`` column): include/uapi/linux/net.h."""

    FREE = 0
    UNCONNECTED = 1
    CONNECTING = 2
    CONNECTED = 3
    DISCONNECTING = 4


@dataclasses.dataclass(frozen=True, slots=True)
class SocketEntry:
    """One row of /proc/net/tcp, tcp6, udp or udp6.

    Attributes:
        proto: ``"tcp"``, ``"tcp6"``, ``"udp"`` or ``"udp6"``: the file it came from.
        local: the local address and port.
        remote: the remote address and port (``0.0.0.0:0`` when unconnected).
        state: the TCP state; UDP uses ESTABLISHED for a connected socket and CLOSE
            for an unconnected one.
        tx_queue: bytes sent but not yet acknowledged (TCP), or queued to send (UDP).
        rx_queue: bytes received but not yet read; for LISTEN, the connections in the
            accept queue.
        uid: the owner's user id.
        inode: the socket's inode, which ``/proc/PID/fd/N -> socket:[inode]`` names;
            0 for a socket no descriptor refers to (in an accept queue, TIME_WAIT,
            or orphaned after close()).
        timer: the timer column ``tr`` (0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT,
            4 zero-window probe).
    """

    proto: str
    local: Endpoint
    remote: Endpoint
    state: TcpState
    tx_queue: int
    rx_queue: int
    uid: int
    inode: int
    timer: int = 0

    @property
    def is_listening(self) -> bool:
        """True for a TCP socket in LISTEN."""
        return self.state is TcpState.LISTEN and self.proto.startswith("tcp")

    @property
    def key(self) -> tuple[str, int, str, int]:
        """``(local host, local port, remote host, remote port)``, v4-mapped unmapped."""
        return (
            normalize_host(self.local.host),
            self.local.port,
            normalize_host(self.remote.host),
            self.remote.port,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class UnixEntry:
    """One row of /proc/net/unix.

    Attributes:
        refcount: references to the kernel object.
        flags: the ``Flags`` column; :data:`SO_ACCEPTCON` marks a listening socket.
        type: 1 stream, 2 datagram, 5 seqpacket.
        state: the socket state.
        inode: the inode that ``socket:[inode]`` links name.
        path: the bound path; ``@name`` for the abstract namespace; ``""`` if unbound.
    """

    refcount: int
    flags: int
    type: int
    state: UnixState
    inode: int
    path: str

    @property
    def is_listening(self) -> bool:
        """True for a listening (accepting) Unix socket."""
        return bool(self.flags & SO_ACCEPTCON)

    @property
    def type_name(self) -> str:
        """``stream``, ``dgram``, ``seqpacket`` or the number."""
        return {1: "stream", 2: "dgram", 5: "seqpacket"}.get(self.type, str(self.type))


def normalize_host(host: str) -> str:
    """Returns an IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) as plain IPv4.

    A dual-stack listener's connections show up in tcp6 with mapped addresses while
    their IPv4 peers show up in tcp; unmapping lets the two ends be joined.
    """
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def decode_address(text: str, byteorder: str = sys.byteorder) -> Endpoint:
    """Decodes ``ADDR:PORT`` as printed in /proc/net/tcp, tcp6, udp and udp6.

    Args:
        text: e.g. ``0100007F:1B5F`` or 32 hex digits, a colon, 4 hex digits.
        byteorder: the byte order of the machine that printed it (``"little"`` on
            x86 and arm64); each 32-bit word is printed as a native integer.

    Returns:
        The endpoint, with the address as text (IPv6 in its compressed form).

    Raises:
        ProcFormatError: not 8 or 32 hex digits, a colon and 4 hex digits.
    """
    addr_hex, sep, port_hex = text.partition(":")
    if not sep or len(port_hex) != 4 or len(addr_hex) not in (8, 32):
        raise ProcFormatError(f"bad address {text!r}")
    order: Literal["little", "big"] = "little" if byteorder == "little" else "big"
    try:
        port = int(port_hex, 16)
        raw = b"".join(
            int(addr_hex[i : i + 8], 16).to_bytes(4, order) for i in range(0, len(addr_hex), 8)
        )
    except ValueError:
        raise ProcFormatError(f"bad address {text!r}") from None
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ip = ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # Python < 3.13 prints ::ffff:7f00:1; the kernel and ss print ::ffff:127.0.0.1.
        return Endpoint(f"::ffff:{ip.ipv4_mapped}", port)
    return Endpoint(str(ip), port)


def _parse_inet(text: str, proto: str, byteorder: str) -> list[SocketEntry]:
    entries: list[SocketEntry] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "sl":
            continue
        if len(fields) < 10 or not fields[0].endswith(":"):
            raise ProcFormatError(f"{proto} line {lineno}: too few columns: {line.strip()!r}")
        try:
            tx_hex, _, rx_hex = fields[4].partition(":")
            timer = int(fields[5].partition(":")[0], 16)
            entry = SocketEntry(
                proto=proto,
                local=decode_address(fields[1], byteorder),
                remote=decode_address(fields[2], byteorder),
                state=TcpState.from_code(int(fields[3], 16)),
                tx_queue=int(tx_hex, 16),
                rx_queue=int(rx_hex, 16),
                uid=int(fields[7]),
                inode=int(fields[9]),
                timer=timer,
            )
        except ValueError as exc:
            raise ProcFormatError(f"{proto} line {lineno}: {exc}") from None
        except ProcFormatError as exc:
            raise ProcFormatError(f"{proto} line {lineno}: {exc}") from None
        entries.append(entry)
    return entries


def parse_tcp(text: str, proto: str = "tcp", byteorder: str = sys.byteorder) -> list[SocketEntry]:
    """Parses /proc/net/tcp or /proc/net/tcp6.

    Args:
        text: the file's text, header line included.
        proto: ``"tcp"`` or ``"tcp6"``, recorded in each entry.
        byteorder: the byte order of the machine that printed it.

    Returns:
        One entry per socket row, in file order.

    Raises:
        ProcFormatError: a row that does not have the kernel's columns.
    """
    return _parse_inet(text, proto, byteorder)


def parse_udp(text: str, proto: str = "udp", byteorder: str = sys.byteorder) -> list[SocketEntry]:
    """Parses /proc/net/udp or /proc/net/udp6 (the tcp columns, plus ``ref pointer drops``).

    Args:
        text: the file's text, header line included.
        proto: ``"udp"`` or ``"udp6"``.
        byteorder: the byte order of the machine that printed it.

    Returns:
        One entry per socket; ``state`` is CLOSE (7) for an unconnected socket.

    Raises:
        ProcFormatError: a row that does not have the kernel's columns.
    """
    return _parse_inet(text, proto, byteorder)


def parse_unix(text: str) -> list[UnixEntry]:
    """Parses /proc/net/unix.

    Args:
        text: the file's text, header line included.

    Returns:
        One entry per Unix socket.

    Raises:
        ProcFormatError: a row that does not have the kernel's columns.
    """
    entries: list[UnixEntry] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("Num"):
            continue
        fields = line.split(None, 7)
        if len(fields) < 7 or not fields[0].endswith(":"):
            raise ProcFormatError(f"unix line {lineno}: too few columns: {line.strip()!r}")
        try:
            state_code = int(fields[5], 16)
            entries.append(
                UnixEntry(
                    refcount=int(fields[1], 16),
                    flags=int(fields[3], 16),
                    type=int(fields[4], 16),
                    state=UnixState(state_code) if 0 <= state_code <= 4 else UnixState.FREE,
                    inode=int(fields[6]),
                    path=fields[7].rstrip("\n") if len(fields) > 7 else "",
                )
            )
        except ValueError as exc:
            raise ProcFormatError(f"unix line {lineno}: {exc}") from None
    return entries


def parse_netstat(text: str) -> dict[str, dict[str, int]]:
    """Parses /proc/net/netstat (or /proc/net/snmp): header lines followed by values.

    Each group is two lines with the same prefix, ``TcpExt: A B C`` then
    ``TcpExt: 1 2 3``. ``TcpExt.ListenOverflows`` counts handshakes that completed
    while the accept queue was full (and SYNs dropped for it); ``ListenDrops`` counts
    every SYN or final ACK a listener dropped, overflows included.

    Args:
        text: the file's text.

    Returns:
        ``{prefix: {name: value}}``, e.g. ``result["TcpExt"]["ListenOverflows"]``.

    Raises:
        ProcFormatError: a values line without its names line, or counts that differ.
    """
    result: dict[str, dict[str, int]] = {}
    pending: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        prefix, sep, rest = line.partition(":")
        if not sep:
            continue
        words = rest.split()
        if prefix not in pending:
            pending[prefix] = words
            continue
        names = pending.pop(prefix)
        if len(names) != len(words):
            raise ProcFormatError(
                f"netstat line {lineno}: {prefix} has {len(names)} names, {len(words)} values"
            )
        try:
            result[prefix] = {n: int(v) for n, v in zip(names, words, strict=True)}
        except ValueError as exc:
            raise ProcFormatError(f"netstat line {lineno}: {exc}") from None
    return result


def parse_sockstat(text: str) -> dict[str, dict[str, int]]:
    """Parses /proc/net/sockstat or sockstat6.

    ``TCP: inuse 13 orphan 0 tw 2 alloc 16 mem 132`` becomes
    ``{"TCP": {"inuse": 13, "orphan": 0, "tw": 2, "alloc": 16, "mem": 132}}``.
    ``mem`` is in pages and counts socket *buffer* memory (queued data), not the
    socket structures themselves.

    Args:
        text: the file's text.

    Returns:
        ``{protocol: {key: value}}``; ``sockets: used N`` gives ``{"sockets": {"used": N}}``.

    Raises:
        ProcFormatError: an odd number of words after a prefix, or a non-number.
    """
    result: dict[str, dict[str, int]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        prefix, sep, rest = line.partition(":")
        if not sep:
            continue
        words = rest.split()
        if len(words) % 2:
            raise ProcFormatError(f"sockstat line {lineno}: odd number of words")
        try:
            result[prefix.strip()] = {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}
        except ValueError as exc:
            raise ProcFormatError(f"sockstat line {lineno}: {exc}") from None
    return result


def count_states(entries: Iterable[SocketEntry]) -> dict[str, int]:
    """Returns how many entries are in each TCP state, by state name."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.state.name] = counts.get(entry.state.name, 0) + 1
    return counts
