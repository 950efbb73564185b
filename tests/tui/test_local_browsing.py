"""The browsing methods added to the client's local store for duplex chat."""

from __future__ import annotations

from duplex.client.local import ImportedLine, LocalStore, Unread
from duplex.tui.timeline import BLOCK, CACHE_BLOCKS, Timeline


def _id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def test_keys_lines_search_markers_drafts() -> None:
    store = LocalStore(":memory:")
    store.add_incoming("bob", _id(1), "hello @Alice", 1000, "relayed")
    store.add_outgoing("bob", "hi bob", _id(2), 2000)
    store.add_incoming("bob", _id(3), "lunch?", 3000, "direct")
    store.add_incoming("carol", _id(4), "LUNCH at one", 2500, "stored")
    ts, ns = store.timeline_keys("bob")
    assert list(ts) == [1000, 2000, 3000]
    lines = store.lines([ns[2], ns[0], 999])
    assert [(x.body, x.outgoing, x.path) for x in lines] == [
        ("lunch?", False, "direct"),
        ("hello @Alice", False, "relayed"),
    ]
    mine = store.line_of(_id(2), outgoing=True)
    assert mine is not None and (mine.state, mine.key) == ("queued", (2000, ns[1]))
    assert store.line_of(_id(2), outgoing=False) is None
    assert store.conversations() == {"bob": 3000, "carol": 2500}
    assert [x.peer for x in store.search("lunch")] == ["bob", "carol"]  # newest first
    assert [x.peer for x in store.search("lunch", peer="carol")] == ["carol"]
    assert store.read_marker("bob") == (0, 0)
    assert store.unread("bob", "@alice") == Unread(2, 1)
    store.set_read_marker("bob", (1000, ns[0]))
    assert store.unread("bob", "@alice") == Unread(1, 0)
    assert store.unread("bob") == Unread(1, 0)
    store.set_draft("bob", "half a thought")
    assert store.draft("bob") == "half a thought"
    store.set_draft("bob", "")
    assert store.draft("bob") == ""
    store.close()


def test_import_from_the_hub_never_duplicates_or_moves_a_state_back() -> None:
    store = LocalStore(":memory:")
    store.add_outgoing("bob", "mine", _id(1), 5000)
    store.set_state(_id(1), "delivered", "direct")
    store.set_read_marker("bob", (5000, 1))
    added = store.import_lines(
        "bob",
        [
            ImportedLine(_id(1), True, "mine", 5000),  # already here
            ImportedLine(_id(2), False, "older from bob", 100),
            ImportedLine(_id(3), True, "older of mine", 200, "relayed"),
        ],
    )
    assert added == 2
    assert store.state_of(_id(1)) == ("delivered", "direct")
    assert store.state_of(_id(3)) == ("stored", "relayed")
    assert list(store.timeline_keys("bob")[0]) == [100, 200, 5000]
    assert store.unread("bob") == Unread(0, 0)  # older than the marker: not unread
    store.close()


def test_timeline_reads_blocks_lazily_and_keeps_order() -> None:
    store = LocalStore(":memory:")
    total = BLOCK * (CACHE_BLOCKS + 3)
    store.begin()
    for i in range(total):
        store.add_incoming("bob", _id(i), f"m{i}", 10_000 + i, "relayed")
    store.commit()
    timeline = Timeline(store, "bob")
    assert len(timeline) == total and timeline.cached_blocks == 0
    assert timeline[total - 1].body == f"m{total - 1}"
    assert timeline.cached_blocks == 1
    for i in range(0, total, BLOCK):
        assert timeline[i].body == f"m{i}"
    assert timeline.cached_blocks == CACHE_BLOCKS  # bounded
    # An older message arrives (hub history): it goes first, later blocks shift.
    store.add_incoming("bob", _id(10**6), "oldest", 5, "stored")
    line = store.line_of(_id(10**6), outgoing=False)
    assert line is not None
    assert timeline.add(line) == 0
    assert timeline[0].body == "oldest" and timeline[1].body == "m0"
    assert timeline[BLOCK].body == f"m{BLOCK - 1}"
    assert timeline.find(line.key) == 0 and timeline.add(line) == 0  # no duplicate
    store.close()
