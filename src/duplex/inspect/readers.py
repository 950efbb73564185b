"""The thin readers: open the /proc files and hand their text to the pure parsers.

Everything that touches the file system lives here, so the parsers stay testable
with fixture text. A process can exit between listing /proc and reading its
descriptors; such races are expected and skipped, never raised.

/proc/net is the network namespace of the *reading* process. psutil's
``net_connections`` reads the same files but drops what we need (the queues, the
accept-queue entries with no descriptor, TIME_WAIT rows' timers), so we read them
directly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from duplex.inspect import diag
from duplex.inspect.errors import InspectError, NoSuchProcess
from duplex.inspect.fds import FdLink, owners_by_inode
from duplex.inspect.procmem import SlabCache, parse_meminfo, parse_slabinfo
from duplex.inspect.procnet import (
    SocketEntry,
    UnixEntry,
    parse_netstat,
    parse_sockstat,
    parse_tcp,
    parse_udp,
    parse_unix,
)
from duplex.inspect.views import DEFAULT_EPHEMERAL, Snapshot

__all__ = [
    "PROC",
    "list_pids",
    "read_comm",
    "read_ephemeral_range",
    "read_fd_links",
    "read_meminfo",
    "read_netstat",
    "read_slabinfo",
    "read_sockstat",
    "read_tcp",
    "read_udp",
    "read_unix",
    "take_snapshot",
]

PROC = "/proc"


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise InspectError(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_tcp() -> list[SocketEntry]:
    """Returns the rows of /proc/net/tcp and /proc/net/tcp6."""
    return parse_tcp(_read(f"{PROC}/net/tcp"), "tcp") + parse_tcp(_read(f"{PROC}/net/tcp6"), "tcp6")


def read_udp() -> list[SocketEntry]:
    """Returns the rows of /proc/net/udp and /proc/net/udp6."""
    return parse_udp(_read(f"{PROC}/net/udp"), "udp") + parse_udp(_read(f"{PROC}/net/udp6"), "udp6")


def read_unix() -> list[UnixEntry]:
    """Returns the rows of /proc/net/unix."""
    return parse_unix(_read(f"{PROC}/net/unix"))


def read_netstat() -> dict[str, dict[str, int]]:
    """Returns /proc/net/netstat parsed (``["TcpExt"]["ListenOverflows"]``, ...)."""
    return parse_netstat(_read(f"{PROC}/net/netstat"))


def read_sockstat() -> dict[str, dict[str, int]]:
    """Returns /proc/net/sockstat and sockstat6 merged (``TCP6`` and friends)."""
    result = parse_sockstat(_read(f"{PROC}/net/sockstat"))
    result.update(parse_sockstat(_read(f"{PROC}/net/sockstat6")))
    return result


def read_meminfo() -> dict[str, int]:
    """Returns /proc/meminfo in bytes."""
    return parse_meminfo(_read(f"{PROC}/meminfo"))


def read_slabinfo() -> dict[str, SlabCache]:
    """Returns /proc/slabinfo by cache name; empty where it is not readable."""
    try:
        return parse_slabinfo(_read(f"{PROC}/slabinfo"))
    except InspectError:
        return {}


def read_ephemeral_range() -> tuple[int, int]:
    """Returns ``net.ipv4.ip_local_port_range`` (the default where unreadable)."""
    words = _read(f"{PROC}/sys/net/ipv4/ip_local_port_range").split()
    if len(words) == 2 and all(w.isdigit() for w in words):
        return int(words[0]), int(words[1])
    return DEFAULT_EPHEMERAL


def list_pids() -> list[int]:
    """Returns the ids of the processes visible in /proc."""
    return sorted(int(name) for name in os.listdir(PROC) if name.isdigit())


def read_comm(pid: int) -> str:
    """Returns the command name of ``pid``, or ``""`` if it is gone."""
    try:
        with open(f"{PROC}/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def read_fd_links(
    pids: Iterable[int] | None = None, *, strict_pid: int | None = None
) -> list[FdLink]:
    """Reads ``/proc/PID/fd/*`` of each process.

    Args:
        pids: the processes; every visible process when None.
        strict_pid: raise :class:`NoSuchProcess` if this one cannot be read.

    Returns:
        One link per descriptor; processes that vanish meanwhile are skipped.

    Raises:
        NoSuchProcess: ``strict_pid`` does not exist or its descriptors are hidden.
    """
    links: list[FdLink] = []
    for pid in list_pids() if pids is None else pids:
        base = f"{PROC}/{pid}/fd"
        try:
            names = os.listdir(base)
        except OSError as exc:
            if pid == strict_pid:
                raise NoSuchProcess(
                    f"no process {pid}"
                    if isinstance(exc, FileNotFoundError)
                    else f"cannot read the descriptors of process {pid}: {exc.strerror}"
                ) from exc
            continue
        denied: OSError | None = None
        before = len(links)
        for name in names:
            try:
                target = os.readlink(f"{base}/{name}")
            except OSError as exc:
                denied = exc
                continue
            links.append(FdLink(pid, int(name), target))
        if pid == strict_pid and denied is not None and len(links) == before:
            raise NoSuchProcess(
                f"cannot read the descriptors of process {pid}: {denied.strerror or denied}"
            )
    return links


def take_snapshot(
    *,
    pids: Iterable[int] | None = None,
    udp: bool = False,
    unix: bool = False,
    backlogs: bool = False,
) -> Snapshot:
    """Reads the socket tables and joins every socket with its owners.

    Args:
        pids: look for owners only in these processes (all when None).
        udp: read the UDP tables too.
        unix: read /proc/net/unix too.
        backlogs: ask sock_diag for the listeners' backlogs (skipped if unavailable).

    Returns:
        The snapshot; ``taken`` is ``time.time()``.
    """
    tcp = read_tcp()
    links = read_fd_links(pids)
    comms = {pid: read_comm(pid) for pid in {lk.pid for lk in links if lk.target[:7] == "socket:"}}
    by_inode: dict[int, diag.DiagEntry] = {}
    if backlogs:
        try:
            by_inode = {e.inode: e for e in diag.query() if e.inode}
        except InspectError:
            by_inode = {}
    return Snapshot(
        tcp=tcp,
        udp=read_udp() if udp else [],
        unix=read_unix() if unix else [],
        owners=owners_by_inode(links, comms),
        backlogs=by_inode,
        ephemeral=read_ephemeral_range(),
        taken=time.time(),
    )
