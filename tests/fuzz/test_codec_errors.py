"""Everything the codec refuses is MalformedFrame, the one documented exception.

Found by the message harness (``fuzzing/fuzz_messages.py`` through
``tests/fuzz/test_harnesses.py``): msgspec lets ``UnicodeDecodeError`` (a string that
is not UTF-8) and ``RecursionError`` (nesting deeper than the interpreter's limit,
even inside a field the schema skips) through as they are. The sessions catch only
protocol errors, so either one escaped ``receive_data`` into the driver: the hub
dropped the connection through asyncio's "fatal error" path, with a traceback in its
log and no ``Error`` frame to the peer.
"""

from __future__ import annotations

import pytest

from duplex.errors import MalformedFrame
from duplex.protocol.events import Closed
from duplex.protocol.hub import HubServerSession, SessionConfig
from duplex.wire import messages as m
from duplex.wire.frames import encode_frame

NOT_UTF8 = b"\x84\xa4type\xa8register\xa3rid\x01\xa4user\xa2\xff\xfe\xa8password\xa1x"
NOT_UTF8_TAG = b"\x81\xa4type\xa2\xff\xfe"
TOO_DEEP = b"\x82\xa4type\xa5hello\xa5extra" + b"\x91" * 100_000 + b"\xc0"


@pytest.mark.parametrize("body", [NOT_UTF8, NOT_UTF8_TAG, TOO_DEEP], ids=["str", "tag", "deep"])
def test_refused_as_malformed(body: bytes) -> None:
    with pytest.raises(MalformedFrame):
        m.decode(body)


@pytest.mark.parametrize("body", [NOT_UTF8, TOO_DEEP], ids=["str", "deep"])
def test_a_session_closes_with_an_error_instead_of_raising(body: bytes) -> None:
    session = HubServerSession(SessionConfig(), 0.0)
    session.receive_data(m.encode(m.Hello(1)) + encode_frame(body), 0.0)
    assert session.closed
    closed = [e for e in session.events_received() if isinstance(e, Closed)]
    assert [c.code for c in closed] == ["malformed"]
