from __future__ import annotations

import ctypes
import socket

import pytest

from duplex.inspect.errors import InspectError
from duplex.inspect.sockaddr import (
    build_view,
    describe,
    encode_sockaddr,
    parse_services,
    split_host_port,
)
from tests.inspect import fixtures


def _kernel_sockaddr(sock: socket.socket) -> bytes:
    """What getsockname(2) really writes, read through libc."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(128)
    length = ctypes.c_uint32(128)
    assert libc.getsockname(sock.fileno(), buf, ctypes.byref(length)) == 0
    return buf.raw[: length.value]


@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_encoding_matches_the_kernel(family: int, host: str) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        assert encode_sockaddr(host, port) == _kernel_sockaddr(sock)


def test_sockaddr_in_fields() -> None:
    view = build_view(
        "127.0.0.1:7007", "127.0.0.1", 7007, parse_services(fixtures.SERVICES), byteorder="little"
    )
    assert view.struct_name == "sockaddr_in" and len(view.raw) == 16
    assert view.raw.hex() == "02001b5f7f00000100000000" + "00000000"
    names = [f.name for f in view.fields]
    assert names == ["sin_family", "sin_port", "sin_addr", "sin_zero"]
    port = view.fields[1]
    assert port.raw == b"\x1b\x5f" and "24347" in port.note
    assert "0100007F:1B5F" in view.fields[2].note
    assert view.services == {"udp": ["afs3-bos"]}
    big = build_view("x", "127.0.0.1", 7007, parse_services(""), byteorder="big")
    assert big.raw[:2] == b"\x00\x02"


def test_sockaddr_in6_fields() -> None:
    view = build_view("[::1]:80", "::1", 80, parse_services(fixtures.SERVICES), scope_id=3)
    assert view.struct_name == "sockaddr_in6" and len(view.raw) == 28
    assert [f.offset for f in view.fields] == [0, 2, 4, 8, 24]
    assert view.fields[1].raw == b"\x00\x50"
    assert view.services == {"tcp": ["http", "www"]}
    assert any("privileged" in n for n in view.notes)
    assert view.as_dict()["size"] == 28


def test_services() -> None:
    services = parse_services(fixtures.SERVICES)
    assert services.names(7, "tcp") == ["echo"] and services.names(7, "udp") == ["echo"]
    assert services.port("www") == 80 and services.port("ssh") == 22
    assert services.names(9999) == []


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:80") == ("127.0.0.1", "80")
    assert split_host_port("[::1]:http") == ("::1", "http")
    assert split_host_port("localhost:7007") == ("localhost", "7007")
    for bad in ("127.0.0.1", "::1:80", "[::1]", "[::1]80", ":80", "host:"):
        with pytest.raises(InspectError):
            split_host_port(bad)


def test_describe_resolves_names_and_services() -> None:
    view = describe("localhost:http")
    assert view.port == 80 and view.host in ("127.0.0.1", "::1")
    assert describe("127.0.0.1:0").notes[-1].startswith("port 0")
    with pytest.raises(InspectError, match="unknown port or service"):
        describe("127.0.0.1:no-such-service")
    with pytest.raises(InspectError, match="out of range"):
        describe("127.0.0.1:70000")
    with pytest.raises(InspectError, match="cannot resolve"):
        describe("no-such-host.invalid:80")
    with pytest.raises(InspectError, match="not an IPv4"):
        encode_sockaddr("example", 80)
