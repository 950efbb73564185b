"""Sans-I/O tests of the echo session: no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplex.errors import InvalidState
from duplex.protocol.echo import EchoDatagrams, EchoSession, EchoState
from duplex.protocol.handler import Endpoint, SocketPair


def test_echoes_every_chunk_in_order() -> None:
    session = EchoSession()
    session.on_connect(SocketPair(Endpoint("127.0.0.1", 5000), Endpoint("127.0.0.1", 7)))
    session.receive_data(b"ab")
    session.receive_data(b"c")
    assert session.data_to_send() == [b"ab", b"c"]
    assert session.data_to_send() == []


def test_eof_flushes_then_closes() -> None:
    session = EchoSession()
    session.receive_data(b"tail")
    session.receive_eof()
    assert session.data_to_send() == [b"tail", b""]
    assert session.state is EchoState.CLOSING


def test_illegal_calls_raise_and_change_nothing() -> None:
    session = EchoSession()
    session.receive_eof()
    session.data_to_send()
    with pytest.raises(InvalidState):
        session.receive_data(b"late")
    with pytest.raises(InvalidState):
        session.receive_eof()
    assert session.state is EchoState.CLOSING
    assert session.data_to_send() == []


@given(st.lists(st.binary(min_size=1), max_size=50))
def test_output_is_input(chunks: list[bytes]) -> None:
    session = EchoSession()
    for chunk in chunks:
        session.receive_data(chunk)
    assert b"".join(session.data_to_send()) == b"".join(chunks)


def test_datagrams_go_back_to_sender() -> None:
    assert EchoDatagrams().datagram_received(b"x", ("127.0.0.1", 9)) == [(b"x", ("127.0.0.1", 9))]


def test_endpoint_formats() -> None:
    assert str(Endpoint("::1", 7)) == "[::1]:7"
    assert str(Endpoint("10.0.0.1", 7)) == "10.0.0.1:7"
    assert str(Endpoint.from_sockaddr("/tmp/s")) == "unix:/tmp/s"
    assert str(Endpoint.from_sockaddr(("::1", 7, 0, 0))) == "[::1]:7"
    pair = SocketPair(Endpoint("127.0.0.1", 40000), Endpoint("127.0.0.1", 7007))
    assert str(pair) == "127.0.0.1:40000 <-> 127.0.0.1:7007"
