from __future__ import annotations

import pytest

from duplex.inspect.errors import ProcFormatError
from duplex.inspect.procmem import parse_meminfo, parse_slabinfo
from tests.inspect import fixtures


def test_meminfo_in_bytes() -> None:
    info = parse_meminfo(fixtures.MEMINFO)
    assert info["MemAvailable"] == 24087552 * 1024
    assert info["Slab"] == 71234 * 1024
    assert info["HugePages_Total"] == 0
    with pytest.raises(ProcFormatError):
        parse_meminfo("MemFree: lots kB\n")


def test_slabinfo() -> None:
    caches = parse_slabinfo(fixtures.SLABINFO)
    assert set(caches) == {"tw_sock_TCP", "TCP", "sock_inode_cache"}
    tcp = caches["TCP"]
    assert (tcp.active_objs, tcp.num_objs, tcp.objsize) == (133, 182, 2368)
    assert tcp.active_bytes == 133 * 2368
    with pytest.raises(ProcFormatError):
        parse_slabinfo("TCP 1 2\n")
    with pytest.raises(ProcFormatError):
        parse_slabinfo("TCP a b c d\n")
