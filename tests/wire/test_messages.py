from __future__ import annotations

import msgspec
import pytest
from hypothesis import given

from duplex.errors import MalformedFrame
from duplex.testing.strategies import any_message
from duplex.wire import messages as m


@given(any_message)
def test_every_message_roundtrips(message: m.Message) -> None:
    frame = m.encode(message)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert m.decode(frame[4:]) == message


def test_body_is_a_map_tagged_by_type() -> None:
    body = m.encode_body(m.Ack(upto=7))
    assert msgspec.msgpack.decode(body) == {"type": "ack", "upto": 7}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",  # never used in MessagePack
        msgspec.msgpack.encode([1, 2]),
        msgspec.msgpack.encode({"type": "no-such-type"}),
        msgspec.msgpack.encode({"type": "send", "id": b"short", "to": "bob", "body": ""}),
        msgspec.msgpack.encode({"type": "send", "id": b"x" * 16, "to": "", "body": ""}),
        msgspec.msgpack.encode({"type": "send", "id": b"x" * 16, "to": "b" * 65, "body": ""}),
        msgspec.msgpack.encode({"type": "ack", "upto": -1}),
        msgspec.msgpack.encode({"type": "ack"}),
        msgspec.msgpack.encode({"type": 5}),
    ],
)
def test_malformed_bodies_are_refused(raw: bytes) -> None:
    with pytest.raises(MalformedFrame):
        m.decode(raw)


def test_body_length_is_bounded() -> None:
    ok = m.Send(id=b"i" * 16, to="bob", body="x" * 65536)
    assert m.decode(m.encode_body(ok)) == ok
    too_long = msgspec.msgpack.encode(
        {"type": "send", "id": b"i" * 16, "to": "bob", "body": "x" * 65537}
    )
    with pytest.raises(MalformedFrame):
        m.decode(too_long)


def test_directions_do_not_overlap() -> None:
    assert not set(m.CLIENT_MESSAGES) & set(m.HUB_MESSAGES)
