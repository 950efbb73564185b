"""Values a store cannot hold are refused by the codec, as malformed, not deep in a store.

Found by the abuse suite: ``HistoryRequest.before`` of 2**63 or more passed the codec,
and SQLite (signed 64-bit integers) raised ``OverflowError`` in the hub's reader
thread, an unexpected exception logged with its traceback on every such request. The
same held for the ``ts`` of a ``PeerSend`` in a client's local history.
"""

from __future__ import annotations

import msgspec
import pytest

from duplex.errors import MalformedFrame
from duplex.wire import messages as m

ID = b"i" * 16


@pytest.mark.parametrize("value", [-1, 2**62 + 1, 2**63, 2**64 - 1])
def test_out_of_range_times_are_malformed(value: int) -> None:
    raw = [
        {"type": "history", "rid": 1, "peer": "bob", "before": value},
        {"type": "peer-send", "id": ID, "body": "x", "ts": value},
        {"type": "deliver", "seq": 1, "kind": "msg", "peer": "a", "id": ID, "ts": value},
    ]
    for body in raw:
        with pytest.raises(MalformedFrame):
            m.decode(msgspec.msgpack.encode(body))


def test_in_range_times_decode() -> None:
    for value in (0, 1_700_000_000_000, 2**62):
        msg = m.decode(
            msgspec.msgpack.encode({"type": "history", "rid": 1, "peer": "b", "before": value})
        )
        assert isinstance(msg, m.HistoryRequest) and msg.before == value
