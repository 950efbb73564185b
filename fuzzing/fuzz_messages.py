"""Fuzz the message decoder, and every session that parses what a peer sends.

``python fuzzing/fuzz_messages.py [atheris/libFuzzer options]`` runs it under atheris
(``make fuzz`` does, for a while); ``tests/fuzz/test_harnesses.py`` runs
:func:`test_one_input` over random inputs in CI, without atheris.

Byte 0 picks a target, the rest is its input:

* the codec, :func:`duplex.wire.messages.decode`: the one documented exception is
  :class:`~duplex.errors.MalformedFrame`; a message that decodes must encode and
  decode back to itself;
* a session (hub side, client side, peer listener, peer dialer) fed the bytes after
  the peer's Hello: ``receive_data`` and ``receive_eof`` raise *nothing* (a bad peer
  closes its session with an ``Error`` and a :class:`~duplex.protocol.events.Closed`
  event, it never raises into the driver), and whatever the session then says is
  well-framed and decodable.
"""

from __future__ import annotations

import sys

from duplex.errors import MalformedFrame
from duplex.protocol.events import Closed
from duplex.protocol.hub import HubClientSession, HubServerSession, SessionConfig
from duplex.protocol.peer import PeerDialerSession, PeerListenerSession
from duplex.wire import messages as m
from duplex.wire.frames import FrameDecoder, encode_frame

__all__ = ["test_one_input"]

SESSIONS = (HubServerSession, HubClientSession, PeerListenerSession, PeerDialerSession)
CONFIG = SessionConfig(max_frame=4096)
HELLO = m.encode(m.Hello(m.PROTO_VERSION, "fuzz"))


def _codec(body: bytes) -> None:
    try:
        message = m.decode(body)
    except MalformedFrame:
        return
    again = m.decode(m.encode_body(message))
    assert again == message, f"{message!r} does not survive a round trip"


def _session(kind: type[HubServerSession], data: bytes) -> None:
    session = kind(CONFIG, 0.0)
    now = 0.0
    # Half the inputs are framed for the fuzzer (one message body), half raw bytes.
    stream = HELLO + (encode_frame(data[1:]) if data[:1] == b"\x00" else data[1:])
    for start in range(0, len(stream), 97):
        now += 0.01
        session.receive_data(stream[start : start + 97], now)
    session.handle_timer(now + 0.5)
    session.receive_eof()
    events = session.events_received()
    assert session.closed and any(isinstance(e, Closed) for e in events)
    decoder = FrameDecoder(1 << 20)
    for chunk in session.data_to_send():
        for body in decoder.feed(chunk):
            m.decode(body)  # what we say is always well-formed


def test_one_input(data: bytes) -> None:
    """One fuzz input (see the module docstring)."""
    if not data:
        return
    target, rest = data[0] % (1 + len(SESSIONS)), data[1:]
    if target == 0:
        _codec(rest)
    else:
        _session(SESSIONS[target - 1], rest)  # type: ignore[arg-type]


def main() -> None:
    """Runs the harness under atheris."""
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
