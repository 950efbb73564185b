"""Which process and descriptor own a socket: the inode join, kept pure.

A socket is a kernel object; a descriptor is a process's numbered reference to it.
``/proc/PID/fd/N`` is a symbolic link whose target, for a socket, reads
``socket:[INODE]``, and the same inode is the last number of the socket's row in
/proc/net/tcp (or udp, unix). Joining the two answers "which process, which
descriptor" for every socket, including the case the texts warn about: after
``fork()`` parent and child both hold a descriptor for the *same* socket, and it
closes only when the last one does (``duplex lab fork-refcount``).

The functions here take ``(pid, fd, link target)`` triples and return mappings; the
directory walk that produces the triples is :func:`duplex.inspect.readers.read_fd_links`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

__all__ = ["FdLink", "Owner", "describe_link", "owners_by_inode", "socket_inode"]


@dataclasses.dataclass(frozen=True, slots=True)
class FdLink:
    """One descriptor of one process: ``/proc/PID/fd/FD -> target``."""

    pid: int
    fd: int
    target: str


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Owner:
    """A process and descriptor that refer to a socket.

    Attributes:
        pid: the process id.
        fd: the descriptor number in that process.
        comm: the process's command name (``/proc/PID/comm``), or ``""``.
    """

    pid: int
    fd: int
    comm: str = ""

    def __str__(self) -> str:
        name = f" {self.comm}" if self.comm else ""
        return f"pid {self.pid}{name} fd {self.fd}"

    def as_dict(self) -> dict[str, object]:
        """Returns a JSON-ready dict."""
        return {"pid": self.pid, "fd": self.fd, "comm": self.comm}


def socket_inode(target: str) -> int | None:
    """Returns the inode of a ``socket:[INODE]`` link target, or None for anything else.

    Args:
        target: what ``readlink(/proc/PID/fd/N)`` returned.
    """
    if target.startswith("socket:[") and target.endswith("]"):
        digits = target[8:-1]
        if digits.isdigit():
            return int(digits)
    return None


def describe_link(target: str) -> str:
    """Returns the kind of descriptor a link target names.

    Returns:
        ``socket``, ``pipe``, ``anon`` (``anon_inode:[eventpoll]`` and friends),
        ``dev`` (a path under /dev), or ``file``.
    """
    if target.startswith("socket:["):
        return "socket"
    if target.startswith("pipe:["):
        return "pipe"
    if target.startswith("anon_inode:"):
        return "anon"
    if target.startswith("/dev/"):
        return "dev"
    return "file"


def owners_by_inode(
    links: Iterable[FdLink], comms: Mapping[int, str] | None = None
) -> dict[int, list[Owner]]:
    """Maps each socket inode to the descriptors that refer to it.

    Args:
        links: descriptors of one or more processes.
        comms: command names by pid, to label owners.

    Returns:
        ``{inode: [Owner, ...]}`` with owners sorted by (pid, fd); non-socket
        descriptors are left out.
    """
    owners: dict[int, list[Owner]] = {}
    names = comms or {}
    for link in links:
        inode = socket_inode(link.target)
        if inode is not None:
            owners.setdefault(inode, []).append(Owner(link.pid, link.fd, names.get(link.pid, "")))
    for found in owners.values():
        found.sort()
    return owners
