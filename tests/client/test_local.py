"""The client's local file: mailbox sequences per hub store, the outbox per hub."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from duplex.client.local import ImportedLine, LocalStore

# The file as clients wrote it before hub stores had names: one sequence, and
# outgoing messages bound to no hub.
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE messages (
    n INTEGER PRIMARY KEY AUTOINCREMENT, peer TEXT NOT NULL, id BLOB NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')), body TEXT NOT NULL,
    ts INTEGER NOT NULL, state TEXT NOT NULL, path TEXT, reason TEXT NOT NULL DEFAULT '',
    UNIQUE (peer, id, direction)
);
INSERT INTO meta VALUES ('device', 'd1'), ('last_seq', '7');
INSERT INTO messages (peer, id, direction, body, ts, state)
    VALUES ('bob', x'00000000000000000000000000000001', 'out', 'old', 1, 'queued');
"""


def _ids(store: LocalStore) -> list[str]:
    return [out.body for out in store.queued()]


def test_each_store_keeps_its_own_sequence(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    local = LocalStore(path)
    local.bind("a:1")
    assert (local.store, local.last_seq) == ("", 0)  # never welcomed: nothing to say
    local.welcome("A")
    local.set_last_seq(5)
    local.bind("b:2")  # not seen yet: the last store's sequence is the best guess
    assert (local.store, local.last_seq) == ("A", 5)
    local.welcome("B")  # the hub says otherwise: B's own sequence, from its start
    assert (local.store, local.last_seq) == ("B", 0)
    local.set_last_seq(2)
    local.bind("a:1")
    assert (local.store, local.last_seq) == ("A", 5)
    local.welcome("")  # a hub too old to name its store changes nothing
    assert (local.store, local.last_seq) == ("A", 5)
    local.close()
    again = LocalStore(path)
    again.bind("b:2")
    assert (again.store, again.last_seq) == ("B", 2)
    again.bind("c:3")  # the last store welcomed, whichever address it was
    assert again.store == "B"
    again.close()


def test_the_outbox_is_per_hub(tmp_path: Path) -> None:
    local = LocalStore(tmp_path / "local.db")
    local.bind("a:1")
    local.add_outgoing("bob", "before A said who it is", b"\1" * 16, 1)
    local.welcome("A")
    local.add_outgoing("bob", "for A", b"\2" * 16, 2)
    local.bind("b:2")
    assert _ids(local) == []  # B may be another store: nothing of A's goes there
    assert local.undelivered("bob") == []
    local.add_outgoing("bob", "for b:2", b"\3" * 16, 3)
    local.welcome("A")  # b:2 turns out to be A's store too (another node of it)
    assert _ids(local) == ["before A said who it is", "for A", "for b:2"]
    local.bind("c:3")
    assert _ids(local) == []
    local.close()


def test_a_file_from_before_stores_had_names(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    local = LocalStore(path)
    local.bind("a:1")
    # Its sequence is the one the first login says, with no store: the hub takes it as
    # its own, as it did before; and its queued message goes to whichever hub.
    assert (local.store, local.last_seq, local.device_id()) == ("", 7, "d1")
    assert _ids(local) == ["old"]
    local.welcome("A")
    assert (local.store, local.last_seq) == ("A", 7)
    local.bind("b:2")
    local.welcome("B")
    assert (local.store, local.last_seq) == ("B", 0)
    assert _ids(local) == ["old"]
    local.close()
    with sqlite3.connect(path) as db:
        keys = {row[0] for row in db.execute("SELECT key FROM meta")}
    assert "last_seq" not in keys and "last_seq:A" in keys  # moved to the store it was


def test_inbox_prints_each_message_once_and_not_what_was_read_elsewhere(
    tmp_path: Path,
) -> None:
    local = LocalStore(tmp_path / "local.db")
    local.add_incoming("bob", b"\1" * 16, "one", 10, "relayed")
    local.add_incoming("carol", b"\2" * 16, "two", 20, "stored")
    local.add_incoming("bob", b"\3" * 16, "three", 30, "direct")
    assert not local.add_incoming("bob", b"\1" * 16, "one", 10, "relayed")  # held already
    assert [line.body for line in local.unprinted()] == ["one", "two", "three"]
    local.set_printed(local.unprinted()[0].n)
    assert [line.body for line in local.unprinted()] == ["two", "three"]
    # Read in the chat window: up to "three" with bob; carol's stays to print.
    three = local.unprinted()[-1]
    local.set_read_marker("bob", three.key)
    assert [line.body for line in local.unprinted()] == ["two"]
    # History fetched from the hub is old news, never printed as new.
    local.import_lines("dave", [ImportedLine(b"\4" * 16, False, "old", 5)])
    assert [line.body for line in local.unprinted()] == ["two"]
    local.close()


def test_a_message_a_one_shot_command_stored_is_shown_by_the_running_client(
    tmp_path: Path,
) -> None:
    running = LocalStore(tmp_path / "local.db")  # duplex chat, say
    one_shot = LocalStore(tmp_path / "local.db")  # duplex send, meanwhile
    # The one-shot command stores it first: new to it (it may print it), left for the
    # running client to show, once.
    assert one_shot.add_incoming("bob", b"\1" * 16, "first", 1, "relayed", transient=True)
    assert running.add_incoming("bob", b"\1" * 16, "first", 1, "relayed")
    assert not running.add_incoming("bob", b"\1" * 16, "first", 1, "relayed")
    # The running client first: the one-shot command has nothing to add.
    assert running.add_incoming("bob", b"\2" * 16, "second", 2, "relayed")
    assert not one_shot.add_incoming("bob", b"\2" * 16, "second", 2, "relayed", transient=True)
    assert not running.add_incoming("bob", b"\2" * 16, "second", 2, "relayed")
    one_shot.close()
    running.close()
