"""Servers under test: started in their own process, pinned, measured, always stopped."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import psutil
import pytest

from duplex.bench.reference import build_reference, find_reference_source
from duplex.bench.servers import REFERENCE_LABEL, BenchServer, plan_cpus
from duplex.bench.spec import BenchError
from duplex.services.echo import EchoClient

needs_cc = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("cc", "gcc", "clang")), reason="no C compiler"
)


def test_plan_cpus() -> None:
    server, generator = plan_cpus()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        assert server == (cpus[0],)
        assert generator == tuple(cpus[1:])
    else:
        assert (server, generator) == (None, None)
    assert plan_cpus(pin=False) == (None, None)


def test_duplex_model_is_pinned_measured_and_stopped() -> None:
    server_cpus, _ = plan_cpus()
    with BenchServer.duplex("epoll", cpus=server_cpus) as server:
        assert server.label == server.model == "epoll"
        assert server.alive
        with EchoClient(server.target.host, server.target.port) as client:
            assert client.echo(b"hello") == b"hello"
        if server_cpus:
            assert psutil.Process(server.pid).cpu_affinity() == list(server_cpus)
        assert (server.cpu_seconds() or 0.0) >= 0.0
        pid = server.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_prefork_workers_inherit_the_pinning() -> None:
    server_cpus, _ = plan_cpus()
    if not server_cpus:
        pytest.skip("one CPU: nothing to pin")
    with BenchServer.duplex("prefork", workers=2, cpus=server_cpus) as server:
        assert server.workers == 2
        children = psutil.Process(server.pid).children()
        assert len(children) == 2
        for child in children:
            assert child.cpu_affinity() == list(server_cpus)


def test_a_server_that_fails_to_start_is_reported() -> None:
    with pytest.raises(BenchError, match="exited with status"):
        BenchServer([sys.executable, "-c", "import sys; sys.exit(3)"], label="x", model=None)
    with pytest.raises(BenchError, match="not JSON"):
        BenchServer([sys.executable, "-c", "print('hello')"], label="x", model=None)
    with pytest.raises(BenchError, match="cannot start"):
        BenchServer(["/nonexistent/server"], label="x", model=None)


def test_a_server_that_never_gets_ready_is_killed() -> None:
    code = "import time; time.sleep(60)"
    with pytest.raises(BenchError, match="no ready line"):
        BenchServer([sys.executable, "-c", code], label="x", model=None, ready_timeout=0.5)


def test_reference_source_is_found() -> None:
    assert find_reference_source().name == "echo_epoll.c"


def test_reference_source_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DUPLEX_REFERENCE_SOURCE", str(tmp_path / "missing.c"))
    with pytest.raises(BenchError, match="not a file"):
        find_reference_source()


@needs_cc
def test_reference_is_built_once_and_echoes(tmp_path: Path) -> None:
    binary = build_reference(tmp_path)
    assert os.access(binary, os.X_OK)
    mtime = binary.stat().st_mtime_ns
    assert build_reference(tmp_path) == binary
    assert binary.stat().st_mtime_ns == mtime  # cached, not rebuilt
    with BenchServer.reference(binary) as server:
        assert server.label == REFERENCE_LABEL
        with EchoClient(server.target.host, server.target.port) as client:
            payload = os.urandom(200_000)
            assert client.echo(payload) == payload
    assert server.proc.returncode == 0  # SIGTERM ends it cleanly


@needs_cc
def test_a_broken_reference_source_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text("int main( {\n")
    with pytest.raises(BenchError, match="building the C reference failed"):
        build_reference(tmp_path / "cache", bad)
