"""Frames: a 4-byte unsigned length in network byte order, then that many bytes.

The receive side is bounded by construction: the length prefix is checked against the
limit *before* a single byte of the body is buffered, so a peer that announces a
4 GiB frame costs us four bytes, not four gigabytes (:class:`~duplex.errors.PayloadTooBig`).
While a frame is incomplete, the buffer holds at most the limit plus one ``recv()``.
"""

from __future__ import annotations

from duplex.errors import ClosedResourceError, MalformedFrame, PayloadTooBig

__all__ = ["DEFAULT_MAX_FRAME", "HEADER", "FrameDecoder", "encode_frame"]

HEADER = 4
"""Bytes of the length prefix."""

DEFAULT_MAX_FRAME = 1 << 20
"""Largest frame body accepted by default: 1 MiB."""


def encode_frame(body: bytes) -> bytes:
    """Returns ``body`` with its length prefix."""
    return len(body).to_bytes(HEADER, "big") + body


# What other protocols' first four bytes announce, read as a length prefix (the
# usual way a duplex port meets them): named in the refusal, so that the log of the
# end that refuses says what was wrong, not just that a frame was too big.
_FOREIGN = (
    (0x16030000, 0x160304FF, "the start of a TLS handshake: one end uses TLS, the other not"),
    (0x47455420, 0x47455420, "'GET ': an HTTP request"),
    (0x504F5354, 0x504F5354, "'POST': an HTTP request"),
    (0x48454144, 0x48454144, "'HEAD': an HTTP request"),
    (0x48545450, 0x48545450, "'HTTP': an HTTP response"),
    (0x5353482D, 0x5353482D, "'SSH-': an SSH banner"),
)


def _too_big(need: int, limit: int) -> PayloadTooBig:
    for low, high, what in _FOREIGN:
        if low <= need <= high:
            return PayloadTooBig(
                f"frame of {need} bytes announced; the limit is {limit} (those bytes are {what})"
            )
    return PayloadTooBig(f"frame of {need} bytes announced; the limit is {limit}")


class FrameDecoder:
    """Splits a byte stream into frame bodies, refusing oversized ones early.

    Args:
        max_size: the largest body accepted, in bytes.

    Usage::

        decoder = FrameDecoder(1 << 20)
        for body in decoder.feed(chunk):
            ...
        decoder.feed_eof()   # raises MalformedFrame if a frame was cut short
    """

    __slots__ = ("_buf", "_eof", "_need", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._need = -1  # body length of the frame in progress, -1 while reading a header
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Adds received bytes; returns the bodies of the frames they complete.

        Raises:
            PayloadTooBig: a length prefix above ``max_size`` (nothing more is parsed).
            ClosedResourceError: data after :meth:`feed_eof`.
        """
        if self._eof:
            raise ClosedResourceError("data after end of stream")
        buf = self._buf
        if not buf and self._need < 0:
            # The common case, a read that starts at a frame: its frames are sliced
            # from ``data`` itself, one copy each, and only a cut-off end is buffered.
            return self._feed_fresh(data)
        buf += data
        frames: list[bytes] = []
        pos = 0
        size = len(buf)
        need = self._need
        while True:
            if need < 0:
                if size - pos < HEADER:
                    break
                need = int.from_bytes(buf[pos : pos + HEADER], "big")
                if need > self.max_size:
                    self._need = need
                    del buf[:]
                    raise _too_big(need, self.max_size)
                pos += HEADER
            if size - pos < need:
                break
            frames.append(bytes(buf[pos : pos + need]))
            pos += need
            need = -1
        self._need = need
        if pos:
            del buf[:pos]
        return frames

    def _feed_fresh(self, data: bytes) -> list[bytes]:
        """:meth:`feed` with nothing buffered (no frame in progress)."""
        frames: list[bytes] = []
        pos = 0
        size = len(data)
        while size - pos >= HEADER:
            need = (data[pos] << 24) | (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
            if need > self.max_size:
                self._need = need
                raise _too_big(need, self.max_size)
            start = pos + HEADER
            if size - start < need:
                break
            frames.append(data[start : start + need])
            pos = start + need
        if pos < size:
            self._buf += data[pos:]  # a frame's start (header or not): the slow path's
        return frames

    def feed_eof(self) -> None:
        """Marks the end of the stream.

        Raises:
            MalformedFrame: the stream ended inside a frame.
        """
        self._eof = True
        if self._buf or self._need >= 0:
            raise MalformedFrame(f"stream ended inside a frame ({len(self._buf)} bytes pending)")
