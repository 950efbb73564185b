from __future__ import annotations

import pytest

from duplex.inspect.errors import ProcFormatError
from duplex.inspect.procnet import (
    TcpState,
    UnixState,
    count_states,
    decode_address,
    normalize_host,
    parse_netstat,
    parse_sockstat,
    parse_tcp,
    parse_udp,
    parse_unix,
)
from duplex.protocol.handler import Endpoint
from tests.inspect import fixtures


def test_decode_ipv4_reverses_the_word_on_little_endian() -> None:
    assert decode_address("0100007F:1B5F", "little") == Endpoint("127.0.0.1", 7007)
    assert decode_address("7F000001:1B5F", "big") == Endpoint("127.0.0.1", 7007)
    assert decode_address("00000000:0000", "little") == Endpoint("0.0.0.0", 0)


def test_decode_ipv6_word_by_word() -> None:
    assert decode_address("00000000000000000000000001000000:1F90", "little") == Endpoint(
        "::1", 8080
    )
    mapped = decode_address("0000000000000000FFFF00000100007F:A000", "little")
    assert mapped == Endpoint("::ffff:127.0.0.1", 40960)
    assert normalize_host(mapped.host) == "127.0.0.1"
    assert normalize_host("::1") == "::1"


@pytest.mark.parametrize("bad", ["0100007F", "0100007F:1B5", "ZZ00007F:1B5F", "01007F:1B5F"])
def test_decode_rejects_malformed(bad: str) -> None:
    with pytest.raises(ProcFormatError):
        decode_address(bad)


def test_parse_tcp() -> None:
    entries = parse_tcp(fixtures.TCP, "tcp", "little")
    assert len(entries) == 7
    listener = entries[0]
    assert listener.is_listening
    assert listener.local == Endpoint("127.0.0.1", 7007)
    assert listener.rx_queue == 1  # one connection waits in the accept queue
    assert listener.inode == 1001
    served = entries[3]
    assert served.state is TcpState.ESTABLISHED
    assert (served.tx_queue, served.rx_queue) == (5, 3)
    assert served.remote == Endpoint("127.0.0.1", 37020)
    assert entries[5].inode == 0  # not accepted yet
    tw = entries[6]
    assert tw.state is TcpState.TIME_WAIT and tw.timer == 3 and tw.inode == 0
    assert count_states(entries) == {"LISTEN": 2, "ESTABLISHED": 4, "TIME_WAIT": 1}


def test_parse_tcp6_and_keys_unmap_v4() -> None:
    entries = parse_tcp(fixtures.TCP6, "tcp6", "little")
    assert [e.proto for e in entries] == ["tcp6"] * 4
    assert entries[0].local == Endpoint("::", 8080) and entries[0].is_listening
    assert entries[1].key == ("127.0.0.1", 8080, "127.0.0.1", 40960)


def test_parse_udp() -> None:
    entries = parse_udp(fixtures.UDP, "udp", "little")
    assert entries[0].state is TcpState.CLOSE  # unconnected
    assert entries[1].remote == Endpoint("127.0.0.1", 53)
    assert entries[1].rx_queue == 0x200
    assert not entries[0].is_listening


def test_parse_tcp_errors_name_the_line() -> None:
    with pytest.raises(ProcFormatError, match="line 2"):
        parse_tcp("  sl local\n   0: 0100007F:1B5F\n")
    with pytest.raises(ProcFormatError, match="unknown TCP state"):
        parse_tcp(
            "   0: 0100007F:1B5F 00000000:0000 EE 00000000:00000000 00:00000000 00000000 0 0 1 1\n"
        )
    with pytest.raises(ProcFormatError, match="line 1"):
        parse_tcp(
            "   0: 0100007F:1B5F 00000000:0000 0A 0000000G:00000000 00:00000000 00000000 0 0 1 1\n"
        )
    assert parse_tcp("") == []


def test_parse_unix() -> None:
    entries = parse_unix(fixtures.UNIX)
    assert len(entries) == 3
    assert entries[0].is_listening and entries[0].path == "/var/run/postgresql/.s.PGSQL.5432"
    assert entries[0].type_name == "stream"
    assert entries[1].state is UnixState.CONNECTED and entries[1].path == ""
    assert entries[2].path == "@abstract name" and entries[2].type_name == "dgram"
    with pytest.raises(ProcFormatError):
        parse_unix("0000: 00000002 00000000\n")


def test_parse_netstat() -> None:
    result = parse_netstat(fixtures.NETSTAT)
    assert result["TcpExt"]["ListenOverflows"] == 12
    assert result["TcpExt"]["ListenDrops"] == 14
    assert result["IpExt"]["InOctets"] == 817881127
    with pytest.raises(ProcFormatError, match="2 names, 1 values"):
        parse_netstat("TcpExt: A B\nTcpExt: 1\n")
    with pytest.raises(ProcFormatError):
        parse_netstat("TcpExt: A\nTcpExt: x\n")


def test_parse_sockstat() -> None:
    result = parse_sockstat(fixtures.SOCKSTAT)
    assert result["sockets"] == {"used": 36}
    assert result["TCP"] == {"inuse": 13, "orphan": 0, "tw": 2, "alloc": 16, "mem": 132}
    assert result["FRAG"]["memory"] == 0
    with pytest.raises(ProcFormatError):
        parse_sockstat("TCP: inuse\n")
    with pytest.raises(ProcFormatError):
        parse_sockstat("TCP: inuse x\n")
