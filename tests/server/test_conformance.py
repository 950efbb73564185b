"""The driver conformance suite, run unchanged against every concurrency model."""

from __future__ import annotations

import time

import pytest

from duplex.testing import conformance
from duplex.testing.servers import EchoServerProcess
from tests.conftest import CONCURRENT_MODELS


@pytest.mark.parametrize("size", conformance.ECHO_SIZES, ids=lambda s: f"{s}B")
def test_echo_is_byte_exact(echo_server: EchoServerProcess, size: int) -> None:
    conformance.check_echo_size(echo_server, size)


def test_half_close(echo_server: EchoServerProcess) -> None:
    conformance.check_half_close(echo_server)


@pytest.mark.parametrize("concurrent_model", CONCURRENT_MODELS)
def test_concurrent_clients(concurrent_model: str) -> None:
    # Not the iterative model: it serves one client at a time (the next test).
    with EchoServerProcess(concurrent_model, ["--workers", "2"]) as server:
        conformance.check_concurrent_clients(server, 100)


def test_one_client_at_a_time_only_when_iterative(echo_server: EchoServerProcess) -> None:
    conformance.check_one_at_a_time(echo_server, concurrent=echo_server.model != "iterative")


def test_reset_midstream(echo_server: EchoServerProcess) -> None:
    conformance.check_reset_midstream(echo_server)


def test_clients_stay_isolated(echo_server: EchoServerProcess) -> None:
    conformance.check_clients_stay_isolated(echo_server)


def test_udp(echo_server: EchoServerProcess) -> None:
    conformance.check_udp(echo_server)


def test_sigterm_lets_connection_in_flight_finish(echo_server: EchoServerProcess) -> None:
    conformance.check_sigterm_in_flight(echo_server)


def test_sigterm_right_after_ready_stops_at_once(model: str) -> None:
    # A prefork worker that was ready but had not yet put its own SIGTERM handler in
    # place ran the supervisor's (inherited through fork), did nothing, and was killed
    # past the grace: grace + 1 s, every time, instead of a prompt exit.
    with EchoServerProcess(model, ["--grace", "3", "--workers", "2"]) as server:
        started = time.monotonic()
        server.terminate()
        status = server.wait(10)
        took = time.monotonic() - started
    assert status == 0, f"{model}: exit status {status}"
    assert took < 2.0, f"{model}: took {took:.1f} s to stop with nothing in flight"


def test_sigterm_cuts_idle_connection_after_grace(model: str) -> None:
    with EchoServerProcess(model, ["--grace", "1", "--workers", "2"]) as server:
        conformance.check_sigterm_idle(server)


def test_survives_emfile(model: str) -> None:
    with EchoServerProcess(
        model, ["--workers", "2"], preexec_fn=conformance.low_nofile(48)
    ) as server:
        conformance.check_survives_emfile(server, extra=80)
