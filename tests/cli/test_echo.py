"""The echo command line through real subprocesses: bad input and the client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from duplex.server.listener import read_somaxconn
from duplex.services.echo import EchoClient
from duplex.testing.conformance import run_cli
from duplex.testing.servers import EchoServerProcess


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_port_in_use_is_one_line_and_nonzero() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("echo", "serve", "--port", str(port))
    line = _one_line_error(result)
    assert f"127.0.0.1:{port} is already in use" in line


def test_unknown_model_lists_the_models() -> None:
    line = _one_line_error(run_cli("echo", "serve", "--model", "nonsense"))
    assert "unknown model 'nonsense'" in line
    for name in ("iterative", "fork", "thread", "pool", "select", "epoll", "asyncio", "prefork"):
        assert name in line


def test_invalid_host() -> None:
    line = _one_line_error(run_cli("echo", "serve", "--host", "no.such.host.invalid"))
    assert "invalid host" in line


def test_bad_env_value_is_reported() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "duplex", "echo", "serve"],
        capture_output=True,
        text=True,
        env={"DUPLEX_ECHO_PORT": "x", "PATH": "/usr/bin:/bin"},
        timeout=30,
        check=False,
    )
    assert "DUPLEX_ECHO_PORT: expected an integer" in _one_line_error(result)


def test_backlog_above_somaxconn_is_clamped_with_a_notice() -> None:
    somaxconn = read_somaxconn()
    assert somaxconn is not None
    with EchoServerProcess("epoll", ["--backlog", str(somaxconn * 10)]) as server:
        assert server.info["backlog"] == somaxconn * 10
        assert server.info["effective_backlog"] == somaxconn
        server.stop()
        assert "clamps the backlog" in server.stderr


def test_ready_report_has_limits_and_address() -> None:
    with EchoServerProcess("thread", []) as server:
        info = server.info
        assert info["nofile_soft"] == info["nofile_hard"]  # raised to the hard limit
        assert info["port"] > 0 and info["host"] == "127.0.0.1"
        assert server.stop() == 0


def test_text_banner_says_what_it_listens_on() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "duplex", "echo", "serve", "--port", "0", "--model", "pool"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        rest = [proc.stdout.readline() for _ in range(4)]
    finally:
        proc.terminate()
        _out, _err = proc.communicate(timeout=30)
    assert first.startswith("duplex echo: model pool, listening on 127.0.0.1:")
    text = "".join(rest)
    assert "backlog" in text and "effective" in text
    assert "open files" in text and "workers" in text
    assert proc.returncode == 0


def test_client_count_mode_checks_and_reports() -> None:
    with EchoServerProcess("epoll", ["--udp"]) as server:
        result = run_cli(
            "echo", "client", "127.0.0.1", str(server.port), "-n", "50", "-s", "1000", "--json"
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["count"] == 50
        assert report["bytes_checked"] == 50_000
        assert report["rtt_ms"]["p50"] <= report["rtt_ms"]["max"]
        udp = run_cli("echo", "client", "127.0.0.1", str(server.port), "--udp", "-n", "3")
        assert udp.returncode == 0, udp.stderr
        assert "3 round trips" in udp.stdout


def test_client_interactive_line_mode() -> None:
    with EchoServerProcess("thread", []) as server:
        result = subprocess.run(
            [sys.executable, "-m", "duplex", "echo", "client", "127.0.0.1", str(server.port)],
            input="hello\nworld\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\nworld\n"
    assert "connected: 127.0.0.1:" in result.stderr


def test_client_against_nothing_fails_cleanly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        line = _one_line_error(run_cli("echo", "client", "127.0.0.1", str(port), "-n", "1"))
    assert "refused" in line.lower()


def test_debug_logs_every_socket_pair_as_json() -> None:
    with EchoServerProcess("thread", ["--log-level", "debug", "--log-format", "json"]) as server:
        with EchoClient("127.0.0.1", server.port) as client:
            client.echo(b"ping")
            local = str(client.local)
        server.stop()
    records = [json.loads(line) for line in server.stderr.splitlines() if line.startswith("{")]
    messages = [r["msg"] for r in records]
    assert f"open {local} <-> 127.0.0.1:{server.port}" in messages
    assert f"close {local} <-> 127.0.0.1:{server.port}" in messages
    assert all({"ts", "level", "logger", "msg", "pid"} <= r.keys() for r in records)
