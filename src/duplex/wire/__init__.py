"""Sans-I/O wire format: bounded frames and the typed messages they carry."""

from __future__ import annotations

from duplex.wire import messages
from duplex.wire.frames import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from duplex.wire.messages import PROTO_VERSION, Message, decode, encode

__all__ = [
    "DEFAULT_MAX_FRAME",
    "PROTO_VERSION",
    "FrameDecoder",
    "Message",
    "decode",
    "encode",
    "encode_frame",
    "messages",
]
