"""Fuzz the frame decoder: any bytes, cut anywhere, against any frame-size limit.

``python fuzzing/fuzz_frames.py [atheris/libFuzzer options]`` runs it under atheris
(``make fuzz`` does, for a while); ``tests/fuzz/test_harnesses.py`` runs
:func:`test_one_input` over random inputs in CI, without atheris.

Documented exceptions only: :class:`~duplex.errors.PayloadTooBig` (a length prefix
over the limit, raised before the body is buffered) and
:class:`~duplex.errors.MalformedFrame` (the stream ends inside a frame). Anything
else is a bug. Invariants checked on every input:

* what is buffered never exceeds the limit plus the header plus one chunk;
* the frames returned are exactly a prefix of the stream, re-encoded.
"""

from __future__ import annotations

import sys

from duplex.errors import MalformedFrame, PayloadTooBig
from duplex.wire.frames import HEADER, FrameDecoder, encode_frame

__all__ = ["test_one_input"]

DOCUMENTED = (PayloadTooBig, MalformedFrame)


def test_one_input(data: bytes) -> None:
    """One fuzz input: byte 0 picks the limit, byte 1 the chunk size, the rest is the stream."""
    if len(data) < 2:
        return
    limit = data[0] * 4  # 0..1020: small, so that too-big frames are easy to reach
    chunk = 1 + data[1] % 64
    stream = data[2:]
    decoder = FrameDecoder(limit)
    frames: list[bytes] = []
    try:
        for start in range(0, len(stream), chunk):
            frames += decoder.feed(stream[start : start + chunk])
            assert decoder.buffered <= limit + HEADER + chunk, "the buffer outgrew its limit"
        decoder.feed_eof()
    except DOCUMENTED:
        pass
    consumed = b"".join(encode_frame(frame) for frame in frames)
    assert stream.startswith(consumed), "frames that are not the stream's"
    assert all(len(frame) <= limit for frame in frames), "a frame over the limit"


def main() -> None:
    """Runs the harness under atheris."""
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
