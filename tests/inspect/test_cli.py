"""``duplex inspect`` against connections the tests open themselves."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from duplex.cli.inspect import inspect
from duplex.testing.servers import EchoServerProcess, wait_for


def _run(*args: str) -> Any:
    result = CliRunner().invoke(inspect, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def test_pairs_json_joins_both_ends_in_one_process() -> None:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        port = lsock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            conn, _ = lsock.accept()
            with conn, socket.create_connection(("127.0.0.1", port), timeout=5) as waiting:
                client.sendall(b"12345")  # 5 bytes the server has not read: its recv-q
                assert wait_for(
                    lambda: (
                        _run("pairs", "--port", str(port), "--json")[0]["server"]["recv_q"] == 5
                    ),
                    5,
                )
                pairs = {p["pair"]: p for p in _run("pairs", "--port", str(port), "--json")}
                me = os.getpid()
                served = pairs[f"127.0.0.1:{client.getsockname()[1]} <-> 127.0.0.1:{port}"]
                assert served["state"] == "ESTABLISHED"
                assert served["client"]["owners"] == [
                    {
                        "pid": me,
                        "fd": client.fileno(),
                        "comm": served["client"]["owners"][0]["comm"],
                    }
                ]
                assert [(o["pid"], o["fd"]) for o in served["server"]["owners"]] == [
                    (me, conn.fileno())
                ]
                assert served["server"]["recv_q"] == 5
                queued = pairs[f"127.0.0.1:{waiting.getsockname()[1]} <-> 127.0.0.1:{port}"]
                assert queued["server"]["owners"] == []
                assert "accept queue" in queued["server"]["note"]
                assert queued["client"]["owners"][0]["fd"] == waiting.fileno()
            # Both closed: the client end that went first ends in TIME_WAIT or FIN_WAIT2.
        text = _run("pairs", "--port", str(port))
        assert f"127.0.0.1:{port}" in text


def test_pairs_json_with_a_server_in_another_process() -> None:
    with EchoServerProcess("epoll", ["--grace", "1"]) as server:
        with server.connect() as client:
            client.sendall(b"x")
            assert client.recv(1) == b"x"
            key = f"127.0.0.1:{client.getsockname()[1]} <-> 127.0.0.1:{server.port}"
            pairs = {p["pair"]: p for p in _run("pairs", "--pid", str(server.pid), "--json")}
            pair = pairs[key]
            assert pair["client"]["owners"][0]["pid"] == os.getpid()
            assert pair["client"]["owners"][0]["fd"] == client.fileno()
            assert pair["server"]["owners"][0]["pid"] == server.pid
            assert pair["client"]["state"] == pair["server"]["state"] == "ESTABLISHED"
            proc = _run("proc", str(server.pid), "--json")
            roles = [f["role"] for f in proc["fds"]]
            assert roles.count("listening") == 1 and roles.count("connected") == 1
            text = _run("proc", str(server.pid))
            assert "listening:" in text and "connected:" in text
        # the client closed first: its end is in TIME_WAIT, the pair says so
        assert wait_for(
            lambda: any(
                p["pair"] == key and p["client"]["state"] == "TIME_WAIT"
                for p in _run("pairs", "--port", str(server.port), "--json")
            ),
            5,
        )
        server.stop()


def test_watch_names_who_closed_first() -> None:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        port = lsock.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn, _ = lsock.accept()
        code = "from duplex.cli.inspect import inspect; inspect()"
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                "pairs",
                "--watch",
                "--json",
                "--port",
                str(port),
                # Only our own sockets: a TIME_WAIT left by another test can carry the
                # same port number as its client end.
                "--pid",
                str(os.getpid()),
                "--interval",
                "0.05",
                "--count",
                "100",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert watcher.stdout is not None
            first = json.loads(watcher.stdout.readline())
            assert first == {"event": "watching", "connections": 1}
            conn.close()  # the server closes first
            client.close()
            events = []
            for line in watcher.stdout:
                event = json.loads(line)
                events.append(event)
                if event["role"] == "server" and event["new"] == "TIME_WAIT":
                    break
            tw = events[-1]
            assert tw["note"].startswith("the server closed first")
            assert tw["owners"][0]["pid"] == os.getpid()  # remembered: it was ours
        finally:
            watcher.kill()
            watcher.wait()
            assert watcher.stdout is not None
            watcher.stdout.close()


def test_listen_shows_accept_queue_and_backlog() -> None:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(5)
        port = lsock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            [view] = _run("listen", "--port", str(port), "--json")
            assert (view["accept_queue"], view["backlog"]) == (1, 5)
            assert view["owners"][0]["fd"] == lsock.fileno()
            text = _run("listen", "--port", str(port))
            assert "accept queue" in text


def test_sockaddr_json() -> None:
    view = _run("sockaddr", "127.0.0.1:7", "--json")
    assert view["hex"] == "02 00 00 07 7f 00 00 01 00 00 00 00 00 00 00 00"
    assert view["services"] == {"tcp": ["echo"], "udp": ["echo"]}
    assert "sin6_port" in _run("sockaddr", "[::1]:80")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sockaddr", "nonsense"], "expected HOST:PORT"),
        (["sockaddr", "127.0.0.1:99999"], "out of range"),
        (["proc", str(2**22 + 7)], "no process"),
        (["pairs", "--pid", str(2**22 + 7)], "no process"),
        (["pairs", "--port", "0"], "0"),
        (["pairs", "--state", "SLEEPING"], "SLEEPING"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args: list[str], message: str) -> None:
    result = CliRunner().invoke(inspect, args)
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and message in lines[0]


@pytest.mark.parametrize("command", ["pairs", "listen", "proc", "sockaddr"])
def test_help_has_an_example(command: str) -> None:
    result = CliRunner().invoke(inspect, [command, "--help"])
    assert result.exit_code == 0 and "Example" in result.output
