from __future__ import annotations

import dataclasses
import json
import socket

import pytest

from duplex.inspect.procnet import TcpState
from duplex.lab.common import apply_overrides, tcp_state
from duplex.lab.errors import ExperimentError
from duplex.lab.result import Result, Table, Verdict, format_text


def _result(verdict: Verdict = Verdict.DEPENDS) -> Result:
    return Result(
        name="x",
        claim="a claim",
        method="a method",
        verdict=verdict,
        reason="because",
        numbers={"count": 12345, "ratio": 0.5, "none": None},
        tables=[Table("t", ["a", "b"], [[1, 2.5], [None, "z"]])],
        depends_on="the weather",
    )


def test_format_and_json() -> None:
    result = _result()
    assert result.verdict_text == "depends on the weather"
    text = format_text(result)
    assert "claim    a claim" in text and "DEPENDS ON THE WEATHER: because" in text
    assert "12,345" in text
    data = json.loads(result.to_json())
    assert data["verdict"] == "depends" and data["depends_on"] == "the weather"
    assert data["tables"][0]["rows"] == [[1, 2.5], [None, "z"]]
    assert _result(Verdict.HOLDS).verdict_text == "holds"


def test_table_markdown() -> None:
    md = Table("t", ["a", "b"], [[1, 0.25], [20000, None]]).markdown()
    assert md.splitlines()[2:] == ["| a | b |", "|---|---|", "| 1 | 0.25 |", "| 20,000 | - |"]


@dataclasses.dataclass(frozen=True)
class _P:
    count: int = 1
    rate: float = 1.0
    flag: bool = False
    name: str = "a"
    sizes: tuple[int, ...] = (1, 2)


def test_apply_overrides() -> None:
    p = apply_overrides(
        _P(), {"count": "3", "rate": "2.5", "flag": "yes", "name": "b", "sizes": "4, 5"}
    )
    assert p == _P(3, 2.5, True, "b", (4, 5))
    with pytest.raises(ExperimentError, match="unknown parameter 'nope'; this experiment has"):
        apply_overrides(_P(), {"nope": "1"})
    with pytest.raises(ExperimentError, match="cannot read 'x' as int"):
        apply_overrides(_P(), {"count": "x"})
    with pytest.raises(ExperimentError):
        apply_overrides(_P(), {"flag": "maybe"})


def test_tcp_state() -> None:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        assert tcp_state(lsock) is TcpState.CLOSE
        lsock.listen(1)
        assert tcp_state(lsock) is TcpState.LISTEN
        with socket.create_connection(lsock.getsockname(), timeout=5) as client:
            assert tcp_state(client) is TcpState.ESTABLISHED
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert tcp_state(udp) is None
