from __future__ import annotations

import os
import resource
import socket
from pathlib import Path

import pytest

from duplex.config import ListenerConfig
from duplex.errors import BindError
from duplex.server.listener import (
    create_listener,
    effective_backlog,
    raise_nofile_limit,
    read_somaxconn,
)


def test_port_zero_reports_the_real_port() -> None:
    listener = create_listener(ListenerConfig(port=0))
    try:
        assert listener.address.port == listener.sock.getsockname()[1] > 0
    finally:
        listener.close()


def test_backlog_clamp_is_reported() -> None:
    somaxconn = read_somaxconn()
    assert somaxconn is not None
    listener = create_listener(ListenerConfig(port=0, backlog=somaxconn + 1))
    try:
        assert listener.clamped
        assert listener.effective_backlog == somaxconn
    finally:
        listener.close()
    assert effective_backlog(5, 4096) == 5
    assert effective_backlog(5, None) == 5


def test_address_in_use() -> None:
    first = create_listener(ListenerConfig(port=0))
    try:
        with pytest.raises(BindError, match="already in use"):
            create_listener(ListenerConfig(port=first.address.port))
    finally:
        first.close()


def test_ipv6_and_dual_stack() -> None:
    v6 = create_listener(ListenerConfig(host="::1", port=0))
    try:
        assert v6.sock.family == socket.AF_INET6
        assert str(v6.address).startswith("[::1]:")
    finally:
        v6.close()
    dual = create_listener(ListenerConfig(host="::", port=0))
    try:
        with socket.create_connection(("127.0.0.1", dual.address.port), timeout=5):
            conn, addr = dual.sock.accept()
            conn.close()
        assert addr[0] == "::ffff:127.0.0.1"  # an IPv4 client, mapped
    finally:
        dual.close()


def test_unix_socket_is_created_and_removed(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    listener = create_listener(ListenerConfig(unix=path))
    assert os.path.exists(path) and listener.address.is_unix
    with pytest.raises(BindError, match="already in use"):
        create_listener(ListenerConfig(unix=path))
    listener.close()
    assert not os.path.exists(path)


def test_stale_unix_socket_is_replaced_but_files_are_not(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    listener = create_listener(ListenerConfig(unix=path))
    listener.close()
    regular = tmp_path / "file"
    regular.write_text("data")
    with pytest.raises(BindError, match="not a socket"):
        create_listener(ListenerConfig(unix=str(regular)))
    assert regular.read_text() == "data"


def test_nofile_limit_is_raised_to_hard() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        limit = raise_nofile_limit()
        assert limit.soft_before == min(256, hard)
        assert limit.soft == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert "raised from" in str(limit) or limit.soft_before == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
