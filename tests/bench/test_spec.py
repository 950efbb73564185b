"""Targets and load specs are checked once, with a one-line reason."""

from __future__ import annotations

import pytest

from duplex.bench.spec import LoadSpec, Target, parse_target
from duplex.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("127.0.0.1:7007", Target("127.0.0.1", 7007)),
        ("localhost:7", Target("localhost", 7)),
        ("[::1]:9000", Target("::1", 9000)),
    ],
)
def test_parse_target(text: str, target: Target) -> None:
    assert parse_target(text) == target


def test_target_text() -> None:
    assert str(Target("::1", 80)) == "[::1]:80"
    assert str(Target("127.0.0.1", 80)) == "127.0.0.1:80"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", "is not HOST:PORT"),
        (":7007", "is not HOST:PORT"),
        ("host:", "is not HOST:PORT"),
        ("host:http", "is not a number"),
        ("host:0", "not in 1..65535"),
        ("host:70000", "not in 1..65535"),
        ("::1:80", "in brackets"),
        ("[nope]:80", "not an IPv6 address"),
    ],
)
def test_bad_targets(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_target(text)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"connections": 0}, "connections"),
        ({"size": 0}, "payload size"),
        ({"size": 65 * 1024 * 1024}, "64 MiB"),
        ({"pipeline": 0}, "pipeline"),
        ({"rate": 0.0}, "rate"),
        ({"duration": None}, "needs a bound"),
        ({"duration": 0.0}, "duration"),
        ({"requests": 0}, "requests"),
        ({"warmup": -1.0}, "warm-up"),
        ({"timeout": 0.0}, "timeout"),
        ({"processes": -1}, "processes"),
        ({"time_limit": 0.0}, "time limit"),
    ],
)
def test_bad_specs(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        LoadSpec().replace(**changes)


def test_spec_properties() -> None:
    assert LoadSpec().mode == "closed"
    assert LoadSpec(rate=10.0).mode == "open"
    assert LoadSpec(duration=2.0).measure_limit == 2.0
    assert LoadSpec(duration=None, requests=5, time_limit=9.0).measure_limit == 9.0


def test_process_count() -> None:
    assert LoadSpec(connections=1).process_count(4) == 1
    assert LoadSpec(connections=100).process_count(3) == 3
    assert LoadSpec(connections=100, processes=5).process_count(3) == 5
    assert LoadSpec(connections=100).process_count() >= 1
