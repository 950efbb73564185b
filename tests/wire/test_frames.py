from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplex.errors import ClosedResourceError, MalformedFrame, PayloadTooBig
from duplex.wire.frames import FrameDecoder, encode_frame


def test_roundtrip_in_one_piece() -> None:
    decoder = FrameDecoder(100)
    assert decoder.feed(encode_frame(b"abc") + encode_frame(b"") + encode_frame(b"z")) == [
        b"abc",
        b"",
        b"z",
    ]
    assert decoder.buffered == 0


@given(st.lists(st.binary(max_size=300), max_size=20), st.data())
def test_any_split_gives_the_same_frames(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder(1000)
    out: list[bytes] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[prev:cut])
        prev = cut
    assert out == bodies
    decoder.feed_eof()


def test_oversized_length_is_refused_before_the_body() -> None:
    decoder = FrameDecoder(1024)
    with pytest.raises(PayloadTooBig, match="limit is 1024"):
        decoder.feed((1025).to_bytes(4, "big"))  # the header alone is enough
    assert decoder.buffered == 0


def test_negative_looking_length_is_just_too_big() -> None:
    with pytest.raises(PayloadTooBig):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


def test_truncated_frame_at_eof() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"hello")[:-1])
    with pytest.raises(MalformedFrame, match="inside a frame"):
        decoder.feed_eof()
    with pytest.raises(ClosedResourceError):
        decoder.feed(b"x")


def test_buffer_stays_bounded_while_waiting() -> None:
    decoder = FrameDecoder(1 << 20)
    decoder.feed((1 << 20).to_bytes(4, "big"))
    for _ in range(10):
        decoder.feed(b"x" * 100_000)
    assert decoder.buffered <= (1 << 20)


@pytest.mark.parametrize(
    ("first", "named"),
    [
        (b"\x16\x03\x01\x02\x00\x01", "the start of a TLS handshake"),  # a ClientHello
        (b"GET / HTTP/1.1\r\n", "an HTTP request"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "an SSH banner"),
    ],
)
def test_another_protocol_is_named_in_the_refusal(first: bytes, named: str) -> None:
    # Fresh, and after a partial header: both ways into the length check.
    for head in (b"", first[:2]):
        decoder = FrameDecoder(1 << 20)
        assert decoder.feed(head) == []
        with pytest.raises(PayloadTooBig, match=f"1048576 \\(those bytes are .*{named}"):
            decoder.feed(first[len(head) :])


def test_a_plain_oversized_length_names_nothing() -> None:
    with pytest.raises(PayloadTooBig) as refused:
        FrameDecoder(16).feed((17).to_bytes(4, "big"))
    assert str(refused.value) == "frame of 17 bytes announced; the limit is 16"
