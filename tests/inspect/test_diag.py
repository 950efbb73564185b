from __future__ import annotations

import socket
import struct

import pytest

from duplex.inspect import diag
from duplex.inspect.errors import InspectError, ProcFormatError
from duplex.inspect.procnet import TcpState
from duplex.protocol.handler import Endpoint


def _message(
    family: int, state: int, sport: int, src: bytes, rqueue: int, wqueue: int, inode: int
) -> bytes:
    body = (
        struct.pack("=BBBB", family, state, 0, 0)
        + struct.pack(">HH16s16s", sport, 0, src.ljust(16, b"\0"), bytes(16))
        + struct.pack("=II", 0, 0)  # if, cookie[0]
        + struct.pack("=I", 0)  # cookie[1]
        + struct.pack("=IIIII", 0, rqueue, wqueue, 0, inode)
    )
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body


def test_build_request_layout() -> None:
    req = diag.build_request(socket.AF_INET, 1 << TcpState.LISTEN, seq=7)
    assert len(req) == 16 + 56
    length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", req)
    assert (length, mtype, seq) == (72, 20, 7)
    assert flags == 0x301  # NLM_F_REQUEST | NLM_F_DUMP
    family, proto, _ext, _pad, states = struct.unpack_from("=BBBBI", req, 16)
    assert (family, proto, states) == (socket.AF_INET, socket.IPPROTO_TCP, 1 << 10)


def test_parse_messages() -> None:
    data = _message(socket.AF_INET, 10, 7007, bytes([127, 0, 0, 1]), 3, 128, 99)
    data += _message(socket.AF_INET6, 10, 8080, bytes(15) + b"\1", 0, 4096, 100)
    entries, done = diag.parse_messages(data + struct.pack("=IHHII", 20, 3, 2, 1, 0) + bytes(4))
    assert done
    assert entries[0].local == Endpoint("127.0.0.1", 7007)
    assert (entries[0].rqueue, entries[0].wqueue, entries[0].inode) == (3, 128, 99)
    assert entries[0].state is TcpState.LISTEN
    assert entries[1].local == Endpoint("::1", 8080)
    more, done = diag.parse_messages(data[: len(data) // 2 + 8][:0])
    assert (more, done) == ([], False)


def test_parse_errors() -> None:
    error = struct.pack("=IHHII", 20, 2, 0, 1, 0) + struct.pack("=i", -2)
    with pytest.raises(InspectError, match="errno 2"):
        diag.parse_messages(error)
    with pytest.raises(ProcFormatError, match="length"):
        diag.parse_messages(struct.pack("=IHHII", 400, 20, 0, 1, 0))
    with pytest.raises(ProcFormatError, match="need"):
        diag.parse_messages(struct.pack("=IHHII", 20, 20, 0, 1, 0) + bytes(4))


def test_query_sees_our_backlog() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(77)
        port = sock.getsockname()[1]
        mine = [e for e in diag.query() if e.local.port == port]
    assert len(mine) == 1
    assert mine[0].wqueue == 77 and mine[0].rqueue == 0
