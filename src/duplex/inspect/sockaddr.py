"""The socket address structure as the kernel sees it, byte by byte.

``bind()``, ``connect()`` and ``accept()`` take a ``struct sockaddr *`` whose first
two bytes say which structure it really is. For IPv4 it is the 16-byte
``sockaddr_in`` (``<netinet/in.h>``)::

    offset 0  sa_family_t    sin_family   AF_INET = 2, in HOST byte order
    offset 2  in_port_t      sin_port     in NETWORK byte order (big-endian): htons()
    offset 4  struct in_addr sin_addr     in NETWORK byte order: inet_pton()
    offset 8  unsigned char  sin_zero[8]  padding to the size of struct sockaddr

and for IPv6 the 28-byte ``sockaddr_in6``: family (host order), port (network order),
``sin6_flowinfo`` (network order), the 16 address bytes, ``sin6_scope_id`` (host
order: it is an interface index, never sent on the wire). Network byte order means
most significant byte first, which is the reverse of x86's little-endian: port 7007 is
0x1B5F, stored as the bytes ``1b 5f``; a program that forgets ``htons()`` stores
``5f 1b`` and binds port 24347 instead.

Everything here is pure except :func:`describe`, which resolves the host and reads
/etc/services.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct
import sys

from duplex.inspect.errors import InspectError

__all__ = [
    "Services",
    "SockaddrField",
    "SockaddrView",
    "build_view",
    "describe",
    "encode_sockaddr",
    "parse_services",
    "split_host_port",
]

SERVICES_PATH = "/etc/services"


@dataclasses.dataclass(slots=True)
class Services:
    """/etc/services: names of well-known ports, per protocol."""

    by_port: dict[tuple[int, str], list[str]] = dataclasses.field(default_factory=dict)
    by_name: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    def names(self, port: int, proto: str = "tcp") -> list[str]:
        """Returns the service name and aliases of ``port``/``proto`` (may be empty)."""
        return self.by_port.get((port, proto), [])

    def port(self, name: str, proto: str = "tcp") -> int | None:
        """Returns the port of service ``name`` (or an alias), or None."""
        return self.by_name.get((name, proto))


def parse_services(text: str) -> Services:
    """Parses /etc/services: ``name port/proto [aliases...] [# comment]``.

    Args:
        text: the file's text.

    Returns:
        The services; malformed lines are skipped, as glibc's parser skips them.
    """
    services = Services()
    for line in text.splitlines():
        words = line.partition("#")[0].split()
        if len(words) < 2:
            continue
        port_text, sep, proto = words[1].partition("/")
        if not sep or not port_text.isdigit():
            continue
        port = int(port_text)
        names = [words[0], *words[2:]]
        services.by_port.setdefault((port, proto), []).extend(
            n for n in names if n not in services.by_port.get((port, proto), [])
        )
        for name in names:
            services.by_name.setdefault((name, proto), port)
    return services


def split_host_port(text: str) -> tuple[str, str]:
    """Splits ``HOST:PORT`` or ``[IPV6]:PORT``.

    Returns:
        ``(host, port)``; the port may be a number or a service name.

    Raises:
        InspectError: no port, or an IPv6 address without brackets.
    """
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":") or not rest[1:]:
            raise InspectError(f"expected [IPV6]:PORT, got {text!r}")
        return host, rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port:
        raise InspectError(f"expected HOST:PORT, got {text!r}")
    if ":" in host:
        raise InspectError(f"write an IPv6 address in brackets: [{host}]:{port}")
    return host, port


@dataclasses.dataclass(frozen=True, slots=True)
class SockaddrField:
    """One field of the structure.

    Attributes:
        offset: byte offset in the structure.
        size: bytes.
        name: the C field name.
        ctype: the C type.
        raw: the bytes, as the kernel has them.
        value: the value they encode, in words.
        note: the byte order and why.
    """

    offset: int
    size: int
    name: str
    ctype: str
    raw: bytes
    value: str
    note: str

    def as_dict(self) -> dict[str, object]:
        """Returns a JSON-ready dict."""
        return {
            "offset": self.offset,
            "size": self.size,
            "name": self.name,
            "ctype": self.ctype,
            "hex": self.raw.hex(" "),
            "value": self.value,
            "note": self.note,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class SockaddrView:
    """A socket address laid out as ``struct sockaddr_in`` or ``sockaddr_in6``."""

    text: str
    struct_name: str
    family: int
    host: str
    port: int
    raw: bytes
    fields: tuple[SockaddrField, ...]
    services: dict[str, list[str]]
    notes: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        """Returns a JSON-ready dict."""
        return {
            "input": self.text,
            "struct": self.struct_name,
            "size": len(self.raw),
            "family": self.family,
            "host": self.host,
            "port": self.port,
            "hex": self.raw.hex(" "),
            "fields": [f.as_dict() for f in self.fields],
            "services": self.services,
            "notes": list(self.notes),
        }


def encode_sockaddr(
    host: str,
    port: int,
    *,
    flowinfo: int = 0,
    scope_id: int = 0,
    byteorder: str = sys.byteorder,
) -> bytes:
    """Returns the bytes of ``sockaddr_in`` (16) or ``sockaddr_in6`` (28) for an address.

    Args:
        host: an IPv4 or IPv6 literal.
        port: 0..65535.
        flowinfo: IPv6 flow label field.
        scope_id: IPv6 scope (interface index).
        byteorder: the host byte order the family and scope id are stored in.

    Raises:
        InspectError: not an IP literal, or a port out of range.
    """
    if not 0 <= port <= 65535:
        raise InspectError(f"port {port} is out of range 0..65535")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InspectError(f"{host!r} is not an IPv4 or IPv6 address") from None
    h = "<" if byteorder == "little" else ">"
    if ip.version == 4:
        return struct.pack(f"{h}H", socket.AF_INET) + struct.pack("!H", port) + ip.packed + bytes(8)
    return (
        struct.pack(f"{h}H", socket.AF_INET6)
        + struct.pack("!HI", port, flowinfo)
        + ip.packed
        + struct.pack(f"{h}I", scope_id)
    )


def build_view(
    text: str,
    host: str,
    port: int,
    services: Services,
    *,
    scope_id: int = 0,
    byteorder: str = sys.byteorder,
) -> SockaddrView:
    """Lays out the socket address of ``host``/``port`` field by field.

    Args:
        text: what the user typed (for the heading).
        host: an IP literal (already resolved).
        port: the port number.
        services: /etc/services, for the port's name.
        scope_id: the IPv6 scope id.
        byteorder: this machine's byte order.

    Returns:
        The view.

    Raises:
        InspectError: as :func:`encode_sockaddr`.
    """
    raw = encode_sockaddr(host, port, scope_id=scope_id, byteorder=byteorder)
    ip = ipaddress.ip_address(host)
    order = f"{byteorder}-endian"
    swapped = struct.unpack("<H", struct.pack(">H", port))[0]
    port_note = (
        f"network byte order (big-endian): htons({port}) = 0x{port:04x} -> bytes "
        f"{struct.pack('!H', port).hex(' ')}; stored in this host's {order} order it would "
        f"read {struct.pack('<H' if byteorder == 'little' else '>H', port).hex(' ')}, "
        f"and forgetting htons() would mean port {swapped}"
    )
    fields: list[SockaddrField]
    if ip.version == 4:
        as_int = int(ip)
        proc_hex = f"{int.from_bytes(ip.packed, 'little' if byteorder == 'little' else 'big'):08X}"
        fields = [
            SockaddrField(
                0,
                2,
                "sin_family",
                "sa_family_t",
                raw[0:2],
                f"AF_INET ({socket.AF_INET})",
                f"host byte order ({order}): it never goes on the wire",
            ),
            SockaddrField(2, 2, "sin_port", "in_port_t", raw[2:4], str(port), port_note),
            SockaddrField(
                4,
                4,
                "sin_addr",
                "struct in_addr",
                raw[4:8],
                str(ip),
                f"network byte order: inet_pton(); as a number 0x{as_int:08x}; "
                f"/proc/net/tcp prints it as {proc_hex}:{port:04X} (the 4 bytes "
                f"read as a {order} integer)",
            ),
            SockaddrField(
                8,
                8,
                "sin_zero",
                "unsigned char[8]",
                raw[8:16],
                "zero",
                "padding up to sizeof(struct sockaddr) = 16",
            ),
        ]
        name = "sockaddr_in"
    else:
        fields = [
            SockaddrField(
                0,
                2,
                "sin6_family",
                "sa_family_t",
                raw[0:2],
                f"AF_INET6 ({socket.AF_INET6})",
                f"host byte order ({order}): it never goes on the wire",
            ),
            SockaddrField(2, 2, "sin6_port", "in_port_t", raw[2:4], str(port), port_note),
            SockaddrField(
                4,
                4,
                "sin6_flowinfo",
                "uint32_t",
                raw[4:8],
                "0",
                "network byte order: the flow label",
            ),
            SockaddrField(
                8,
                16,
                "sin6_addr",
                "struct in6_addr",
                raw[8:24],
                str(ip),
                "network byte order: 16 bytes, most significant first",
            ),
            SockaddrField(
                24,
                4,
                "sin6_scope_id",
                "uint32_t",
                raw[24:28],
                str(scope_id),
                f"host byte order ({order}): an interface index for link-local",
            ),
        ]
        name = "sockaddr_in6"
    names = {proto: services.names(port, proto) for proto in ("tcp", "udp")}
    notes = [
        f"struct {name} is {len(raw)} bytes; bind()/connect() receive a pointer to it and "
        f"its length, and read sa_family first to know which structure it is",
    ]
    if port == 0:
        notes.append("port 0 asks the kernel for an ephemeral port at bind()/connect()")
    elif port < 1024:
        notes.append(f"port {port} is privileged (< 1024): binding it needs CAP_NET_BIND_SERVICE")
    return SockaddrView(
        text=text,
        struct_name=name,
        family=socket.AF_INET if ip.version == 4 else socket.AF_INET6,
        host=str(ip),
        port=port,
        raw=raw,
        fields=tuple(fields),
        services={k: v for k, v in names.items() if v},
        notes=tuple(notes),
    )


def _read_services() -> Services:
    try:
        with open(SERVICES_PATH, encoding="utf-8", errors="replace") as fh:
            return parse_services(fh.read())
    except OSError:
        return Services()


def describe(text: str) -> SockaddrView:
    """Resolves ``HOST:PORT`` and lays out its socket address.

    The host may be a name (the first address ``getaddrinfo`` returns is used), the
    port a number or a service name from /etc/services. An IPv6 scope may follow
    ``%`` (``[fe80::1%lo]:80``).

    Args:
        text: ``HOST:PORT`` or ``[IPV6]:PORT``.

    Returns:
        The view.

    Raises:
        InspectError: a malformed address, an unknown service or an unresolvable host.
    """
    host, port_text = split_host_port(text)
    services = _read_services()
    if port_text.isdigit():
        port = int(port_text)
    else:
        found = services.port(port_text, "tcp") or services.port(port_text, "udp")
        if found is None:
            raise InspectError(f"unknown port or service name {port_text!r} (see /etc/services)")
        port = found
    if not 0 <= port <= 65535:
        raise InspectError(f"port {port} is out of range 0..65535")
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InspectError(f"cannot resolve {host!r}: {exc}") from None
    sockaddr = infos[0][4]
    scope_id = int(sockaddr[3]) if len(sockaddr) == 4 else 0
    return build_view(text, str(sockaddr[0]).partition("%")[0], port, services, scope_id=scope_id)
