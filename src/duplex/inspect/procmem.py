"""Pure parsers of the memory files the lab reads: /proc/meminfo and /proc/slabinfo.

The lab's ``one-port`` experiment prices a connection in memory three ways: the
server's resident set, the kernel's socket *buffer* memory (``TCP: mem`` in
/proc/net/sockstat, in pages), and the kernel's socket *structures*, which live in
slab caches (``TCP``, ``sock_inode_cache``, ...) and show up in /proc/slabinfo and
in the ``Slab`` line of /proc/meminfo, not in sockstat.
"""

from __future__ import annotations

import dataclasses

from duplex.inspect.errors import ProcFormatError

__all__ = ["SlabCache", "parse_meminfo", "parse_slabinfo"]


def parse_meminfo(text: str) -> dict[str, int]:
    """Parses /proc/meminfo.

    Args:
        text: the file's text (``MemTotal:  24105 kB`` lines).

    Returns:
        ``{name: bytes}`` (values given in kB are multiplied by 1024; counts without
        a unit, like ``HugePages_Total``, are kept as they are).

    Raises:
        ProcFormatError: a line whose value is not a number.
    """
    result: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        words = rest.split()
        if not words:
            continue
        try:
            value = int(words[0])
        except ValueError:
            raise ProcFormatError(f"meminfo line {lineno}: {line.strip()!r}") from None
        if len(words) > 1 and words[1] == "kB":
            value *= 1024
        result[name.strip()] = value
    return result


@dataclasses.dataclass(frozen=True, slots=True)
class SlabCache:
    """One slab cache from /proc/slabinfo.

    Attributes:
        name: the cache name (``TCP``, ``TCPv6``, ``sock_inode_cache``, ...).
        active_objs: objects in use.
        num_objs: objects allocated (in use or free in partial slabs).
        objsize: bytes per object.
    """

    name: str
    active_objs: int
    num_objs: int
    objsize: int

    @property
    def active_bytes(self) -> int:
        """Bytes of the objects in use."""
        return self.active_objs * self.objsize


def parse_slabinfo(text: str) -> dict[str, SlabCache]:
    """Parses /proc/slabinfo (version 2.1).

    Args:
        text: the file's text, header lines included.

    Returns:
        The caches by name.

    Raises:
        ProcFormatError: a data line with too few columns or a non-number.
    """
    caches: dict[str, SlabCache] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(("slabinfo", "#")):
            continue
        fields = line.split()
        if len(fields) < 4:
            raise ProcFormatError(f"slabinfo line {lineno}: too few columns")
        try:
            caches[fields[0]] = SlabCache(fields[0], int(fields[1]), int(fields[2]), int(fields[3]))
        except ValueError:
            raise ProcFormatError(f"slabinfo line {lineno}: {line.strip()!r}") from None
    return caches
