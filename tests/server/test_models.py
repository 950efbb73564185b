"""What each model promises beyond the conformance suite (one section per module)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from duplex.config import ListenerConfig
from duplex.errors import ServerError, UnknownModel
from duplex.protocol.echo import EchoSession
from duplex.server.base import Driver, DriverOptions, get_driver_class, model_names
from duplex.server.listener import create_listener
from duplex.services.echo import EchoClient
from duplex.testing.servers import EchoServerProcess, wait_for


@contextmanager
def in_process(model: str, **options: object) -> Iterator[Driver]:
    """Runs a driver on a thread of this process (for models safe to run in-process)."""
    cls = get_driver_class(model)
    listener = create_listener(ListenerConfig(port=0))
    driver = cls(listener, EchoSession, DriverOptions(**options))  # type: ignore[arg-type]
    thread = threading.Thread(target=driver.serve_forever)
    thread.start()
    try:
        yield driver
    finally:
        driver.shutdown()
        thread.join(30)
        assert not thread.is_alive(), f"{model} did not stop"


# ------------------------------------------------------------------ registry


def test_registry_has_the_nine_models_in_order() -> None:
    assert model_names() == [
        "iterative",
        "fork",
        "thread",
        "pool",
        "select",
        "epoll",
        "asyncio",
        "uvloop",
        "prefork",
    ]


def test_unknown_model() -> None:
    with pytest.raises(UnknownModel, match="choose one of: iterative, fork"):
        get_driver_class("nope")


def test_missing_optional_dependency_is_explained() -> None:
    from duplex.server.base import register_model

    register_model("ghost", "duplex_no_such_module:Driver", "test only")
    try:
        with pytest.raises(ServerError, match="pip install"):
            get_driver_class("ghost")
    finally:
        from duplex.server.base import MODELS

        del MODELS["ghost"]


# ------------------------------------------------------------------ thread


def test_thread_model_keeps_no_finished_threads() -> None:
    baseline = threading.active_count()
    with in_process("thread") as driver:
        for _ in range(50):
            with EchoClient("127.0.0.1", driver.listener.address.port) as client:
                client.echo(b"x" * 100)
        assert wait_for(lambda: driver.live_threads == 0, 10)  # type: ignore[attr-defined]
        assert wait_for(lambda: threading.active_count() == baseline + 1, 10)  # + serve thread
    assert threading.active_count() == baseline


def test_thread_model_joins_live_threads_at_shutdown() -> None:
    with in_process("thread", grace=0.2) as driver:
        client = EchoClient("127.0.0.1", driver.listener.address.port)
        client.echo(b"held open")
        assert driver.live_threads == 1  # type: ignore[attr-defined]
    # shutdown returned only after the connection thread was joined
    assert driver.live_threads == 0  # type: ignore[attr-defined]
    client.close()


# ------------------------------------------------------------------ pool


def test_pool_serves_more_connections_than_workers() -> None:
    with in_process("pool", workers=2) as driver:
        port = driver.listener.address.port
        clients = [EchoClient("127.0.0.1", port) for _ in range(50)]
        try:
            for round_ in range(3):  # all 50 stay open and keep being served
                for i, client in enumerate(clients):
                    client.echo(b"%d-%d" % (round_, i))
        finally:
            for client in clients:
                client.close()
        assert driver.workers == 2


def test_pool_default_workers_scale_with_cpus() -> None:
    cls = get_driver_class("pool")
    assert cls.default_workers() == 4 * (os.cpu_count() or 1)


# ------------------------------------------------------------------ select / epoll


def test_select_refuses_descriptors_above_fd_setsize_and_keeps_serving() -> None:
    with EchoServerProcess("select", []) as server:
        early = server.connect()
        early.sendall(b"early")
        assert early.recv(5) == b"early"
        # Push the server's descriptors past 1024.
        crowd = [server.connect() for _ in range(1040)]
        try:
            refused = 0
            for sock in crowd[-10:]:  # the newest ones have the highest descriptors
                sock.settimeout(10)
                sock.sendall(b"?")
                try:
                    data = sock.recv(1)
                except ConnectionResetError:
                    data = b""
                refused += data == b""
            assert refused == 10, "connections at fd >= 1024 were not refused"
            early.sendall(b"still")
            assert early.recv(5) == b"still"
        finally:
            for sock in crowd:
                sock.close()
            early.close()
        server.stop()
    assert "FD_SETSIZE" in server.stderr


def test_epoll_has_no_fd_setsize_limit() -> None:
    with EchoServerProcess("epoll", []) as server:
        crowd = [server.connect() for _ in range(1100)]
        try:
            for sock in crowd[-5:]:
                sock.sendall(b"ok")
                assert sock.recv(2) == b"ok"
        finally:
            for sock in crowd:
                sock.close()


def test_selector_stops_reading_from_a_client_that_does_not_read() -> None:
    # The server may buffer at most HIGH_WATER plus the socket buffers, then it
    # stops reading: our sends block instead of its memory growing.
    with EchoServerProcess("epoll", []) as server:
        sock = server.connect()
        sock.setblocking(False)
        sent = 0
        chunk = b"z" * 65536
        try:
            for _ in range(2000):  # at most 128 MiB
                try:
                    sent += sock.send(chunk)
                except BlockingIOError:
                    if not wait_for(lambda: False, 0.3):
                        try:
                            sent += sock.send(chunk)
                        except BlockingIOError:
                            break
        finally:
            sock.close()
        assert sent < 64 * 1024 * 1024, f"the server kept reading: {sent} bytes accepted"
        rss = psutil.Process(server.pid).memory_info().rss
        assert rss < 200 * 1024 * 1024


# ------------------------------------------------------------------ fork


def test_fork_reaps_children() -> None:
    with EchoServerProcess("fork", []) as server:
        for _ in range(20):
            with EchoClient("127.0.0.1", server.port) as client:
                client.echo(b"child")
        parent = psutil.Process(server.pid)
        assert wait_for(lambda: parent.children() == [], 10), parent.children()
        assert parent.num_threads() == 1  # the parent stays single-threaded


def test_fork_child_serves_while_parent_accepts() -> None:
    with EchoServerProcess("fork", []) as server:
        a = EchoClient("127.0.0.1", server.port)
        b = EchoClient("127.0.0.1", server.port)
        try:
            a.echo(b"a")
            b.echo(b"b")
            assert len(psutil.Process(server.pid).children()) == 2
        finally:
            a.close()
            b.close()


# ------------------------------------------------------------------ prefork


def test_prefork_workers_share_the_port_and_are_restarted() -> None:
    with EchoServerProcess("prefork", ["--workers", "2"]) as server:
        supervisor = psutil.Process(server.pid)
        workers = supervisor.children()
        assert len(workers) == 2
        # Each worker has its own listening socket on the same port.
        for worker in workers:
            listening = [c for c in worker.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
            assert [c.laddr.port for c in listening] == [server.port]
        os.kill(workers[0].pid, signal.SIGKILL)
        assert wait_for(
            lambda: (
                len(supervisor.children()) == 2
                and workers[0].pid not in [c.pid for c in supervisor.children()]
            ),
            10,
        )
        for _ in range(20):
            with EchoClient("127.0.0.1", server.port) as client:
                client.echo(b"after restart")
        assert server.stop() == 0
    assert "died" in server.stderr and "restarting" in server.stderr


def test_prefork_spreads_connections_over_workers() -> None:
    with EchoServerProcess("prefork", ["--workers", "2"]) as server:
        clients = [EchoClient("127.0.0.1", server.port) for _ in range(40)]
        try:
            for client in clients:
                client.echo(b"spread")
            per_worker = [
                len([c for c in w.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED])
                for w in psutil.Process(server.pid).children()
            ]
        finally:
            for client in clients:
                client.close()
        assert sum(per_worker) == 40
        assert min(per_worker) > 0, per_worker


# ------------------------------------------------------------------ unix sockets


@pytest.mark.parametrize("model", ["iterative", "thread", "epoll", "uvloop", "prefork"])
def test_unix_domain_socket(model: str, tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    with EchoServerProcess(model, ["--unix", path, "--workers", "2"]) as server:
        assert server.info["unix"] is True
        with EchoClient(unix=path) as client:
            client.echo(b"local ipc")
        assert server.stop() == 0
    assert not os.path.exists(path)


def test_ipv6_listener() -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6")
    with (
        EchoServerProcess("asyncio", ["--host", "::1"]) as server,
        EchoClient("::1", server.port) as client,
    ):
        client.echo(b"v6")
        assert client.remote.host == "::1"
