"""Fixtures of the bench tests: the misbehaving echo server of :mod:`.controlled`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .controlled import ControlledEchoServer, Knobs


@pytest.fixture
def controlled() -> Iterator[Callable[..., ControlledEchoServer]]:
    """Makes :class:`ControlledEchoServer` instances (``controlled(delay=0.02)``) and
    always closes them."""
    made: list[ControlledEchoServer] = []

    def make(**knobs: object) -> ControlledEchoServer:
        server = ControlledEchoServer(Knobs(**knobs))  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()
