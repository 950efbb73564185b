"""Shared fixtures: real servers on loopback that are always shut down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from duplex.server.base import model_names
from duplex.testing.servers import EchoServerProcess

ALL_MODELS = model_names()
CONCURRENT_MODELS = [m for m in ALL_MODELS if m != "iterative"]


@pytest.fixture(params=ALL_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    """Every registered concurrency model, one test each."""
    return str(request.param)


@pytest.fixture
def echo_server(model: str) -> Iterator[EchoServerProcess]:
    """An echo server of ``model`` on 127.0.0.1, port 0, with UDP, grace 3 s."""
    with EchoServerProcess(model, ["--udp", "--grace", "3", "--workers", "2"]) as server:
        yield server
