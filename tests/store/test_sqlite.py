"""The SQLite store: the conformance suite, group commit, integrity and crash safety."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from duplex.errors import ConfigError, StoreCorrupt, StoreError
from duplex.store import SqliteStore, open_store
from duplex.store.base import NewMessage
from duplex.store.migrate import load_migrations
from duplex.testing.servers import scaled
from duplex.testing.store_conformance import (
    CHECKS,
    Check,
    check_durable_across_reopen,
    new_id,
    run_check,
)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_conformance(tmp_path: Path, check: Check) -> None:
    asyncio.run(run_check(lambda: SqliteStore(tmp_path / "hub.db"), check))


def test_durable_across_reopen(tmp_path: Path) -> None:
    asyncio.run(check_durable_across_reopen(lambda: SqliteStore(tmp_path / "hub.db")))


def _run(store: SqliteStore, body: Callable[[SqliteStore], object]) -> None:
    """Opens ``store``, awaits ``body(store)``, always closes it."""

    async def main() -> None:
        await store.open()
        try:
            result = body(store)
            if asyncio.iscoroutine(result):
                await result
        finally:
            await store.close()

    asyncio.run(main())


async def _flood(store: SqliteStore, n: int, recipient: str = "bob") -> None:
    await asyncio.gather(
        *(store.store_message(NewMessage("alice", recipient, new_id(), "x", i)) for i in range(n))
    )


def test_group_commit_batches(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "hub.db")
    _run(store, lambda s: _flood(s, 1000))
    assert store.write_count == 1000
    # Everything queued goes into one transaction: a handful of commits, not 1000.
    assert store.commit_count <= 20, store.commit_count


def test_one_commit_per_request_when_max_batch_is_1(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "hub.db", synchronous="NORMAL", max_batch=1)
    _run(store, lambda s: _flood(s, 50))
    # And two more at close: one applies the journal to the tables, one empties it.
    assert (store.commit_count, store.write_count, store.apply_count) == (52, 50, 1)


def test_cancelled_callers_do_not_leak_or_lose(tmp_path: Path) -> None:
    """A cancelled store_message still commits, and frees its place in the queue."""

    async def body(store: SqliteStore) -> None:
        messages = [NewMessage("alice", "bob", new_id(), str(i), i) for i in range(200)]
        tasks = [asyncio.create_task(store.store_message(m)) for m in messages]
        await asyncio.sleep(0)
        for task in tasks[::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Resending every message: the cancelled ones were stored all the same.
        again = await asyncio.gather(*(store.store_message(m) for m in messages))
        assert all(r.duplicate for r in again)
        assert await store.last_seq("bob") == 200
        assert store._pending == 0  # every slot of the bounded queue came back

    _run(SqliteStore(tmp_path / "hub.db"), body)


def test_one_failing_request_does_not_fail_its_batch(tmp_path: Path) -> None:
    """A constraint error or a bug in one request: the others of its batch commit."""

    def broken(conn: object) -> None:
        raise ZeroDivisionError("a bug")

    async def body(store: SqliteStore) -> None:
        sql = "INSERT INTO users (name, password_hash, created) VALUES (NULL, 'h', 1)"
        results = await asyncio.gather(
            *(store.store_message(NewMessage("a", "b", new_id(), "x", i)) for i in range(20)),
            store._write(lambda conn: conn.execute(sql)),
            store._write(broken),
            *(store.store_message(NewMessage("a", "b", new_id(), "y", i)) for i in range(20)),
            return_exceptions=True,
        )
        assert isinstance(results[20], StoreError) and "NOT NULL" in str(results[20])
        assert isinstance(results[21], ZeroDivisionError)
        assert await store.last_seq("b") == 40
        assert sorted(r.entry.seq for r in results if not isinstance(r, BaseException)) == list(
            range(1, 41)
        )

    _run(SqliteStore(tmp_path / "hub.db"), body)


def test_migrations_ship_with_the_package() -> None:
    for dialect in ("sqlite", "postgres"):
        migrations = load_migrations(dialect)
        assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
        assert "CREATE TABLE entries" in migrations[0].sql
    with pytest.raises(StoreError, match="no mysql migrations"):
        load_migrations("mysql")


def test_wal_mode_and_pragmas(tmp_path: Path) -> None:
    async def body(store: SqliteStore) -> None:
        await _flood(store, 3)
        assert (tmp_path / "hub.db-wal").exists()

    _run(SqliteStore(tmp_path / "hub.db"), body)
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = conn.execute("SELECT version FROM schema_version").fetchall()
    conn.close()
    assert [v[0] for v in versions] == [m.version for m in load_migrations("sqlite")]
    # A clean close checkpoints and removes the log.
    assert not (tmp_path / "hub.db-wal").exists()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore("x.db", synchronous="OFF")
    with pytest.raises(ValueError, match="integrity_check"):
        SqliteStore("x.db", integrity_check="maybe")


def test_bad_message_id(tmp_path: Path) -> None:
    async def body(store: SqliteStore) -> None:
        with pytest.raises(ValueError, match="16 bytes"):
            await store.store_message(NewMessage("a", "b", b"short", "x", 0))

    _run(SqliteStore(tmp_path / "hub.db"), body)


def test_errors_are_store_errors(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match=r"dir\.db"):
        asyncio.run(SqliteStore(tmp_path / "dir.db").open())
    store = SqliteStore(tmp_path / "hub.db")

    async def closed() -> None:
        with pytest.raises(StoreError, match="not open"):
            await store.fetch("bob", 0, 1)
        await store.open()
        await store.close()
        with pytest.raises(StoreError, match="closed"):
            await store.store_message(NewMessage("a", "b", new_id(), "x", 0))
        with pytest.raises(StoreError, match="closed"):
            await store.last_seq("bob")
        await store.close()  # twice is fine

    asyncio.run(closed())


def test_newer_schema_refused(tmp_path: Path) -> None:
    _run(SqliteStore(tmp_path / "hub.db"), lambda s: None)
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    conn.close()
    with pytest.raises(StoreError, match="newer than this duplex"):
        asyncio.run(SqliteStore(tmp_path / "hub.db").open())


def test_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    """A database made before migrations 2 to 4 keeps its messages, dedupe, receipts
    and history."""
    from duplex.store.migrate import SCHEMA_VERSION_DDL

    old_id = new_id()
    db = tmp_path / "hub.db"
    with sqlite3.connect(db) as conn:  # what version 1 left: one message, acked
        conn.execute(SCHEMA_VERSION_DDL)
        conn.executescript(load_migrations("sqlite")[0].sql)
        conn.execute("INSERT INTO schema_version VALUES (1, 'initial', 0)")
        conn.executemany(
            "INSERT INTO entries (mailbox, seq, kind, peer, msg_id, body, ts, delivered)"
            " VALUES (?, 1, ?, ?, ?, ?, ?, ?)",
            [
                ("bob", "msg", "alice", old_id, "old", 1, 2),
                ("alice", "receipt", "bob", old_id, "", 2, None),
            ],
        )
        conn.executemany(
            "INSERT INTO mailboxes VALUES (?, 1, ?, ?, ?)", [("bob", 1, 1, 1), ("alice", 0, 0, 0)]
        )
    conn.close()

    async def new(store: SqliteStore) -> None:
        again = await store.store_message(NewMessage("alice", "bob", old_id, "old", 3))
        assert (again.duplicate, again.delivered, again.entry.body) == (True, True, "old")
        assert await store.ack("bob", "laptop", again.entry.seq, 4) == []  # no second receipt
        assert [e.kind for e in await store.fetch("alice", 0, 10)] == ["receipt"]
        assert [e.body for e in await store.history("alice", "bob", None, 10)] == ["old"]

    _run(SqliteStore(db), new)
    with sqlite3.connect(db) as conn:
        versions = [v[0] for v in conn.execute("SELECT version FROM schema_version")]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='index'")}
        columns = [r[2] for r in conn.execute("PRAGMA index_info(entries_msg_id)")]
    conn.close()
    with sqlite3.connect(f"{db}.log") as log:
        journal = log.execute("SELECT count(*) FROM journal").fetchone()[0]
    log.close()
    assert versions == [1, 2, 3, 4]
    assert "entries_receipt" not in indexes and "entries_history" not in indexes
    assert columns == ["msg_id", "peer"]
    assert journal == 0  # applied at close


def test_a_history_page_walks_the_mailbox_index_newest_first(tmp_path: Path) -> None:
    """Without a history index, a page must still stop at its limit: each direction
    reads the (mailbox, seq) index backwards, with no sort of the whole mailbox, and
    returns the newest messages of the conversation among many others."""
    from duplex.store.sqlite import _HISTORY

    async def body(store: SqliteStore) -> None:
        for i in range(300):  # bob's mailbox: mostly other people, alice now and then
            sender = "alice" if i % 30 == 0 else f"user{i % 7}"
            await store.store_message(NewMessage(sender, "bob", new_id(), f"m{i}", 1000 + i))
        await store.store_message(NewMessage("bob", "alice", new_id(), "reply", 1295))
        page = await store.history("bob", "alice", None, 3)
        assert [(e.peer, e.body) for e in page] == [
            ("alice", "m240"),
            ("alice", "m270"),
            ("bob", "reply"),
        ]
        older = await store.history("bob", "alice", 1241, 10)
        assert [e.body for e in older] == [f"m{i}" for i in range(0, 241, 30)]

    _run(SqliteStore(tmp_path / "hub.db"), body)
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        plan = " | ".join(
            str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {_HISTORY}", ("b", "a", 1, 3))
        )
    conn.close()
    assert "USING INDEX sqlite_autoindex_entries_1" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # no sort: it stops after the limit


def test_a_group_commit_appends_to_the_message_id_index(tmp_path: Path) -> None:
    """Time-ordered ids from many senders land on one edge of the dedupe index.

    Counts the write-ahead-log frames of one group commit per index: with the index
    keyed (peer, msg_id), 200 senders' messages dirtied one leaf per sender's range,
    every leaf; keyed (msg_id, peer), the few at its right edge and their parents.
    (The index is written when the journal is applied: here with every batch.)
    """
    senders = [f"user{i:03d}" for i in range(200)]
    made = iter(range(1 << 30))

    def uuid7_like() -> bytes:  # increasing, as the client's UUIDv7 ids are
        return next(made).to_bytes(8, "big") + os.urandom(8)

    async def body(store: SqliteStore) -> None:
        for _ in range(20):  # an index of many leaves
            await asyncio.gather(
                *(store.store_message(NewMessage(s, "bob", uuid7_like(), "x", 1)) for s in senders)
            )
        await store._apply_now()  # the table writer is idle now
        assert store._tconn is not None
        store._tconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        commits = store.commit_count
        await asyncio.gather(
            *(store.store_message(NewMessage(s, "bob", uuid7_like(), "x", 2)) for s in senders)
        )
        await store._apply_now()
        assert store.commit_count - commits <= 3
        wal = (tmp_path / "hub.db-wal").read_bytes()
        with sqlite3.connect(tmp_path / "hub.db") as conn:
            names = dict(conn.execute("SELECT pageno, name FROM dbstat"))
            leaves = conn.execute(
                "SELECT count(*) FROM dbstat WHERE name = 'entries_msg_id' AND pagetype = 'leaf'"
            ).fetchone()[0]
        conn.close()
        size = int.from_bytes(wal[8:12], "big")  # the log header's page size
        pages = [  # each frame: a 24-byte header starting with its page number, the page
            int.from_bytes(wal[off : off + 4], "big")
            for off in range(32, len(wal) - size - 23, 24 + size)
        ]
        touched = sum(1 for page in pages if names.get(page) == "entries_msg_id")
        assert leaves >= 20, leaves  # enough leaves for scattered writes to show
        # Measured: 36 of 35 leaves (and a parent) before, 6 now.
        assert touched <= 8, (touched, leaves)

    _run(SqliteStore(tmp_path / "hub.db", synchronous="NORMAL", apply_after=0), body)


def test_an_ack_sees_a_message_of_its_own_batch(tmp_path: Path) -> None:
    """A device may ack "everything" (a sequence past the end) while a message to it
    is staged in the same batch: that message must be marked delivered and get its
    receipt, not be passed over by ``acked_seq``. The cursors are written once, at the
    apply."""

    async def body(store: SqliteStore) -> None:
        first = store.stage_message(NewMessage("alice", "bob", new_id(), "one", 1))
        assert store.stage_message(NewMessage("carol", "dave", new_id(), "other", 1))
        receipts = store.stage_ack("bob", "phone", 10**9, 2)
        assert first is not None and receipts is not None
        assert [(r.user, r.kind, r.msg_id) for r in receipts] == [
            ("alice", "receipt", first.entry.msg_id)
        ]
        assert store.stage_ack("bob", "laptop", 10**9, 3) == []  # once only
        await store._apply_now()
        assert store.commit_count == 2  # one batch into the journal, one apply

    _run(SqliteStore(tmp_path / "hub.db"), body)
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        rows = conn.execute("SELECT mailbox, kind FROM entries ORDER BY mailbox, seq").fetchall()
        boxes = conn.execute("SELECT mailbox, acked_seq, delivered FROM mailboxes ORDER BY 1")
        acked = boxes.fetchall()
        cursors = conn.execute("SELECT mailbox, device, seq FROM cursors ORDER BY 2").fetchall()
    conn.close()
    assert rows == [("alice", "receipt"), ("bob", "msg"), ("dave", "msg")]
    assert acked == [("alice", 0, 0), ("bob", 1, 1), ("dave", 0, 0)]
    assert cursors == [("bob", "laptop", 1), ("bob", "phone", 1)]


def test_entries_are_written_once_and_never_updated(tmp_path: Path) -> None:
    """Delivery lives in the mailbox (``acked_seq``), not in each message's row: a
    message acked before the journal is applied and one acked after it are both
    written once, and no statement ever updates ``entries``; a resend still says
    which was delivered."""

    # The applies run in the applier process: triggers record what it does to entries.
    db = tmp_path / "hub.db"
    _run(SqliteStore(db), lambda s: None)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE written (op TEXT)")
        for op in ("INSERT", "UPDATE", "DELETE"):
            conn.execute(
                f"CREATE TRIGGER written_{op} AFTER {op} ON entries"
                f" BEGIN INSERT INTO written VALUES ('{op}'); END"
            )
    conn.close()

    async def body(store: SqliteStore) -> None:
        early = await store.store_message(NewMessage("alice", "bob", new_id(), "early", 1))
        assert store.apply_count == 0  # in the journal, not yet in the tables
        await store.ack("bob", "phone", early.entry.seq, 2)
        await store._apply_now()
        late = await store.store_message(NewMessage("alice", "bob", new_id(), "late", 3))
        unacked = await store.store_message(NewMessage("alice", "bob", new_id(), "unacked", 4))
        await store._apply_now()
        await store.ack("bob", "phone", late.entry.seq, 5)
        await store._apply_now()
        written = await store._read(lambda c: [r[0] for r in c.execute("SELECT op FROM written")])
        assert written == ["INSERT"] * 5  # three messages, two receipts
        assert [e.kind for e in await store.fetch("alice", 0, 10)] == ["receipt", "receipt"]
        for stored, delivered in ((early, True), (late, True), (unacked, False)):
            again = await store.store_message(
                NewMessage("alice", "bob", stored.entry.msg_id, "again", 9)
            )
            assert (again.duplicate, again.delivered) == (True, delivered)

    _run(SqliteStore(tmp_path / "hub.db"), body)


# -- integrity ------------------------------------------------------------------


def _make_db(path: Path, messages: int = 400) -> None:
    async def body(store: SqliteStore) -> None:
        for i in range(4):
            await asyncio.gather(
                *(
                    store.store_message(NewMessage("alice", f"u{j}", new_id(), "b" * 200, i))
                    for j in range(messages // 4)
                )
            )

    _run(SqliteStore(path), body)


def test_truncated_database_refused(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    _make_db(db)
    size = db.stat().st_size
    assert size > 8 * 4096
    with db.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(StoreCorrupt, match=r"damaged|integrity check") as info:
        asyncio.run(SqliteStore(db).open())
    assert "restore it from a backup" in str(info.value)


def test_flipped_byte_in_any_page_refused(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    _make_db(db)
    original = db.read_bytes()
    page_size = int.from_bytes(original[16:18], "big")
    with sqlite3.connect(db) as conn:  # pages that hold data (not the free list)
        used = {1} | {r[0] for r in conn.execute("SELECT pageno FROM dbstat")}
    conn.close()
    reasons = set()
    for page in sorted(p - 1 for p in used):
        # The first byte of each page: the b-tree page type (or, for page 1, the
        # file's magic string).
        data = bytearray(original)
        data[page * page_size] ^= 0xFF
        db.write_bytes(bytes(data))
        with pytest.raises(StoreCorrupt, match=r"damaged|integrity check") as info:
            asyncio.run(SqliteStore(db).open())
        reasons.add("integrity check" in str(info.value))
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    # Both paths were taken: SQLite's own refusal and PRAGMA quick_check's report.
    assert reasons == {True, False}


def test_not_a_database_refused(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    _make_db(db, messages=8)
    data = bytearray(db.read_bytes())
    data[0:16] = b"garbage garbage!"
    db.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="damaged"):
        asyncio.run(SqliteStore(db).open())


def _wal_snapshot(tmp_path: Path, commits: int, *, apply: bool = False) -> Path:
    """A copy of both files, their WALs and the mark, taken while the store is open
    with ``commits`` commits in the journal (and, with ``apply``, applied).

    This is what a crash leaves: each log holds every commit not yet checkpointed.
    """
    src = tmp_path / "live" / "hub.db"
    dst = tmp_path / "copy" / "hub.db"
    dst.parent.mkdir()

    async def body(store: SqliteStore) -> None:
        for i in range(commits):
            await store.store_message(NewMessage("alice", "bob", new_id(), f"m{i}", i))
        if apply:
            await store._apply_now()
        for suffix in ("", "-wal", ".log", ".log-wal", ".hwm"):
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")

    _run(SqliteStore(src), body)
    return dst


def _flip_in_last_wal_frame(wal: Path) -> None:
    data = bytearray(wal.read_bytes())
    page_size = int.from_bytes(data[8:12], "big")
    frame = 24 + page_size
    frames = (len(data) - 32) // frame
    assert frames >= 10, frames
    data[32 + (frames - 1) * frame + 24 + page_size // 2] ^= 0x01
    wal.write_bytes(bytes(data))


def test_wal_snapshot_without_damage_opens(tmp_path: Path) -> None:
    db = _wal_snapshot(tmp_path, 10)

    async def body(store: SqliteStore) -> None:
        assert await store.last_seq("bob") == 10
        assert [e.body for e in await store.fetch("bob", 0, 20)] == [f"m{i}" for i in range(10)]

    _run(SqliteStore(db), body)


# The journal's file takes every message first; the database's takes each apply.
_DAMAGED = {"journal": (".log-wal", False), "database": ("-wal", True)}


@pytest.mark.parametrize("damaged", _DAMAGED)
def test_flipped_byte_in_wal_is_a_shortened_history(tmp_path: Path, damaged: str) -> None:
    suffix, apply = _DAMAGED[damaged]
    db = _wal_snapshot(tmp_path, 10, apply=apply)
    _flip_in_last_wal_frame(Path(f"{db}{suffix}"))
    # SQLite itself sees nothing wrong: the damaged commit is silently gone.
    conn = sqlite3.connect(f"file:{str(db) + suffix.removesuffix('-wal')}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        if damaged == "journal":
            assert conn.execute("SELECT count(*) FROM journal").fetchone()[0] == 9  # of 10
    finally:
        conn.close()
    with pytest.raises(StoreCorrupt, match="history is shorter than what was acknowledged") as info:
        asyncio.run(SqliteStore(db).open())
    assert f"the {damaged}'s history" in str(info.value)
    assert "delete" in str(info.value) and ".hwm" in str(info.value)


def test_shortened_history_only_warned_with_synchronous_normal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = _wal_snapshot(tmp_path, 10)
    _flip_in_last_wal_frame(Path(f"{db}.log-wal"))
    with caplog.at_level(logging.WARNING, logger="duplex.store.sqlite"):
        _run(SqliteStore(db, synchronous="NORMAL"), lambda s: None)
    assert "history is shorter" in caplog.text


def test_deleted_database_with_mark_refused(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    _make_db(db, messages=8)
    db.unlink()
    with pytest.raises(StoreCorrupt, match="it is empty"):
        asyncio.run(SqliteStore(db).open())


def test_damaged_mark_refused(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    _make_db(db, messages=8)
    mark = Path(f"{db}.hwm")
    mark.write_bytes(mark.read_bytes().replace(b" ", b"_", 1))
    with pytest.raises(StoreCorrupt, match="high-water-mark file is damaged"):
        asyncio.run(SqliteStore(db).open())
    mark.unlink()  # the documented way out
    _run(SqliteStore(db), lambda s: None)


# -- crash safety ---------------------------------------------------------------

_CRASH_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from duplex.store import SqliteStore
    from duplex.store.base import NewMessage

    async def sender(store, k):
        i = 0
        while True:
            mid = os.urandom(16)
            await store.store_message(NewMessage("s%d" % k, "r%d" % (k % 3), mid, "x", i))
            sys.stdout.write(mid.hex() + "\\n")
            sys.stdout.flush()
            i += 1

    async def main():
        store = SqliteStore(sys.argv[1])
        await store.open()
        await asyncio.gather(*(sender(store, k) for k in range(20)))

    asyncio.run(main())
    """
)


def test_crash_keeps_every_acked_message(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_CHILD, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    acked: list[bytes] = []
    try:
        assert child.stdout is not None
        while len(acked) < 2000:
            line = child.stdout.readline()
            if not line:
                break
            acked.append(bytes.fromhex(line.decode().strip()))
    finally:
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=scaled(30))
    assert len(acked) >= 2000, err.decode()[-2000:]
    # Whatever the child printed after our count is acked too.
    for line in out.decode().splitlines():
        if len(line) == 32:
            acked.append(bytes.fromhex(line))

    async def body(store: SqliteStore) -> None:
        stored: set[bytes] = set()
        for k in range(3):
            entries = await store.fetch(f"r{k}", 0, 1_000_000)
            assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
            stored.update(e.msg_id for e in entries)
        missing = [a for a in acked if a not in stored]
        assert not missing, f"{len(missing)} acked messages lost"

    _run(SqliteStore(db), body)


# -- open_store -----------------------------------------------------------------


def test_open_store_urls(tmp_path: Path) -> None:
    absolute = open_store(f"sqlite:///{tmp_path}/a.db")
    assert isinstance(absolute, SqliteStore) and absolute.path == tmp_path / "a.db"
    relative = open_store("sqlite:///data/hub.db")
    assert isinstance(relative, SqliteStore) and relative.path == Path("data/hub.db")
    plain = open_store(str(tmp_path / "b.db"), synchronous="NORMAL")
    assert isinstance(plain, SqliteStore) and plain.synchronous == "NORMAL"
    assert isinstance(open_store(tmp_path / "c.db"), SqliteStore)
    with pytest.raises(ConfigError, match="unsupported store URL scheme 'mysql'"):
        open_store("mysql://x/y")
    with pytest.raises(ConfigError, match="sqlite:///path"):
        open_store("sqlite://relative.db")
    with pytest.raises(ConfigError, match="empty"):
        open_store("")


def test_store_files_are_private(tmp_path: Path) -> None:
    _run(SqliteStore(tmp_path / "hub.db"), lambda s: None)
    assert os.stat(tmp_path / "hub.db.hwm").st_mode & 0o077 == 0


@pytest.mark.parametrize("seed", range(6))
def test_staged_sends_and_acks_in_any_order_give_one_receipt_each(
    tmp_path: Path, seed: int
) -> None:
    """A model check of the loop-side state: two users send and ack at random (acks
    before, at and past the end, ranges that end below what is applied), with commits,
    applies after any delay and the writers racing them. Every message gets exactly one
    receipt; the tables agree with the counters at the end.

    (It found a tail slice that counted from the end when an ack stopped below the
    applied part: one message receipted twice, another never.)"""
    apply_after = (0.0, 0.001, 0.01)[seed % 3]
    _model_check(tmp_path, seed, ("alice", "bob"), apply_after=apply_after)


@pytest.mark.parametrize("seed", range(3))
def test_mailboxes_forgotten_and_read_back_lose_nothing(tmp_path: Path, seed: int) -> None:
    """The same model check with eight users and room for two mailboxes in memory:
    after every apply the clean ones are forgotten, and read back from the tables at
    their next use, in the middle of sends, acks and receipts."""
    users = tuple(f"u{i}" for i in range(8))
    forgotten = _model_check(tmp_path, seed, users, apply_after=0.001, box_cache=2)
    assert forgotten > 100  # the cache really was exceeded and trimmed, many times


def _model_check(tmp_path: Path, seed: int, users: tuple[str, ...], **options: Any) -> int:
    """Runs the model check; returns how many mailboxes were forgotten on the way."""
    rnd = random.Random(seed)
    forgotten = 0

    async def body(store: SqliteStore) -> None:
        nonlocal forgotten
        receipts: Counter[tuple[str, bytes]] = Counter()
        sent: dict[tuple[str, bytes], int] = {}
        for step in range(2500):
            user, peer = rnd.sample(users, 2)
            roll = rnd.random()
            if roll < 0.5:
                message = NewMessage(user, peer, new_id(), "x", step)
                stored = store.stage_message(message) or await store.store_message(message)
                sent[(user, message.msg_id)] = stored.entry.seq
            elif roll < 0.8:
                last = await store.last_seq(user)
                upto = rnd.randint(max(0, last - 5), last + 2)
                made = store.stage_ack(user, "dev", upto, step)
                if made is None:
                    made = await store.ack(user, "dev", upto, step)
                receipts.update((e.user, e.msg_id) for e in made)
            else:
                await asyncio.sleep(rnd.choice((0, 0, 0.001, 0.003)))
        for user in users:
            made = await store.ack(user, "dev", 10**9, 10**6)
            receipts.update((e.user, e.msg_id) for e in made)
        assert {k: n for k, n in receipts.items() if n != 1} == {}
        assert set(receipts) == set(sent)
        stats = await store.stats()
        assert stats.messages == stats.delivered == len(sent)
        forgotten = store.boxes_forgotten

    _run(SqliteStore(tmp_path / "hub.db", synchronous="NORMAL", **options), body)
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        boxes = conn.execute("SELECT messages, delivered FROM mailboxes").fetchall()
        receipt_rows = conn.execute("SELECT count(*) FROM entries WHERE kind = 'receipt'")
        receipts_written = receipt_rows.fetchone()[0]
    conn.close()
    assert all(messages == delivered for messages, delivered in boxes), boxes
    assert receipts_written > 1000
    return forgotten


def test_a_journal_replayed_over_its_own_apply_changes_nothing(tmp_path: Path) -> None:
    """A crash between an apply and the journal commit that deletes its rows: the
    next open replays rows the tables already hold. Entries are skipped (an entry is
    its mailbox and sequence), marks, cursors and mailbox states written again."""
    src, dst = tmp_path / "live" / "hub.db", tmp_path / "copy" / "hub.db"
    dst.parent.mkdir()

    async def body(store: SqliteStore) -> None:
        sent = [
            await store.store_message(NewMessage("alice", "bob", new_id(), f"m{i}", i))
            for i in range(5)
        ]
        assert len(await store.ack("bob", "phone", 3, 9)) == 3
        await store._apply_now()
        assert store._deletable > store._deleted  # applied, rows not yet deleted
        for suffix in ("", "-wal", ".log", ".log-wal", ".hwm"):
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")
        assert sent[-1].entry.seq == 5

    _run(SqliteStore(src), body)

    async def after(store: SqliteStore) -> None:
        assert [e.body for e in await store.fetch("bob", 0, 10)] == [f"m{i}" for i in range(5)]
        assert [e.kind for e in await store.fetch("alice", 0, 10)] == ["receipt"] * 3
        stats = await store.stats()
        assert (stats.messages, stats.delivered) == (5, 3)
        assert len(await store.ack("bob", "phone", 5, 10)) == 2  # the rest, once

    _run(SqliteStore(dst), after)
    with sqlite3.connect(f"{dst}.log") as log:
        assert log.execute("SELECT count(*) FROM journal").fetchone()[0] == 0
    log.close()


def test_a_journal_of_another_database_is_refused(tmp_path: Path) -> None:
    """The journal beside a database must be its own: another's would be applied to
    the wrong mailboxes."""
    for name in ("a", "b"):
        _make_db(tmp_path / name / "hub.db", messages=8)
    shutil.copyfile(tmp_path / "a" / "hub.db.log", tmp_path / "b" / "hub.db.log")
    Path(tmp_path / "b" / "hub.db.hwm").unlink()  # so that the journal's own check speaks
    with pytest.raises(StoreCorrupt, match="belongs to another database"):
        asyncio.run(SqliteStore(tmp_path / "b" / "hub.db").open())


def test_a_mark_written_before_the_journal_had_its_file_is_read(tmp_path: Path) -> None:
    """A format-1 mark (no journal count) still guards the database, then is rewritten."""
    db = tmp_path / "hub.db"
    _make_db(db, messages=8)
    with sqlite3.connect(db) as conn:
        store_id = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
        commits = int(conn.execute("SELECT value FROM meta WHERE key = 'commits'").fetchone()[0])
    conn.close()
    mark = Path(f"{db}.hwm")

    def v1(count: int) -> bytes:
        body = b"duplex-hwm1 %s %d" % (store_id.encode(), count)
        return (b"%s %08x" % (body, zlib.crc32(body))).ljust(95) + b"\n"

    mark.write_bytes(v1(commits + 1))  # one more than the database holds
    with pytest.raises(StoreCorrupt, match="database's history is shorter"):
        asyncio.run(SqliteStore(db).open())
    mark.write_bytes(v1(commits))
    _run(SqliteStore(db), lambda s: None)
    assert mark.read_bytes().startswith(b"duplex-hwm2 ")


def test_the_applier_yields_the_cpu_to_the_loop(tmp_path: Path) -> None:
    """Applies run in a process of their own, at a lower priority than the hub."""
    from duplex.store.sqlite import APPLIER_NICE

    async def body(store: SqliteStore) -> None:
        await store.store_message(NewMessage("alice", "bob", new_id(), "x", 1))
        await store._apply_now()
        assert store._applier is not None and store._applier.pid != os.getpid()
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, store._applier.pid) == mine + APPLIER_NICE

    _run(SqliteStore(tmp_path / "hub.db"), body)


def test_stats_returns_under_a_steady_stream_of_writes(tmp_path: Path) -> None:
    """stats() and history() wait for an apply of what was journaled before the call,
    not for a moment with nothing left to apply, which a busy hub may never have.
    (A liveness check under 50 concurrent senders; whether the old loop would have
    starved here depends on timing, so it is a guard, not a reproduction.)"""

    async def body(store: SqliteStore) -> None:
        stop = asyncio.Event()

        async def stream(k: int) -> None:
            i = 0
            while not stop.is_set():
                await store.store_message(NewMessage(f"s{k}", "bob", new_id(), "x", i))
                i += 1

        tasks = [asyncio.create_task(stream(k)) for k in range(50)]

        try:
            await asyncio.sleep(0.05)
            for _ in range(3):
                stats = await asyncio.wait_for(store.stats(), scaled(10))
                assert stats.messages > 0
                await asyncio.wait_for(store.history("s1", "bob", None, 5), scaled(10))
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    _run(SqliteStore(tmp_path / "hub.db", synchronous="NORMAL", apply_after=0.05), body)


def test_a_store_serves_one_hub_at_a_time(tmp_path: Path) -> None:
    """A second store on the same files would number the same mailboxes from its own
    memory: it waits for the lock, then refuses, naming who holds it; once the first
    is closed, it opens."""

    async def scenario() -> None:
        first = SqliteStore(tmp_path / "hub.db")
        await first.open()
        try:
            await first.store_message(NewMessage("alice", "bob", new_id(), "one", 1))
            second = SqliteStore(tmp_path / "hub.db", lock_wait=0.3)
            with pytest.raises(StoreError, match="in use by another hub") as refused:
                await second.open()
            assert first._applier is not None
            assert f"{os.getpid()}, {first._applier.pid}" in str(refused.value)
            await second.close()  # a store that never opened closes quietly
        finally:
            await first.close()
        again = SqliteStore(tmp_path / "hub.db", lock_wait=0.3)
        await again.open()
        try:
            assert await again.fetch("bob", 0, 10) != []
        finally:
            await again.close()

    asyncio.run(scenario())


def _stamped(ms: int) -> bytes:
    """A message id whose first 48 bits are ``ms``, as a UUIDv7's are."""
    return ms.to_bytes(6, "big") + os.urandom(10)


def test_a_resend_is_found_after_its_id_is_forgotten(tmp_path: Path) -> None:
    """Past ``recent_ids`` the store forgets the oldest ids and keeps a horizon above
    them: a resend of a forgotten id is looked up (and found), an id from a clock far
    ahead does not drag the horizon into the future, and an old id never stored is
    still new. Each send either way: stored once, shown once."""
    now = int(time.time() * 1000)

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "hub.db", recent_ids=20, apply_after=0)
        await store.open()
        try:
            ids = [_stamped(now - 60_000 + i) for i in range(50)]
            far = _stamped(now + 86_400_000)  # a sender's clock a day ahead
            for i, msg_id in enumerate([*ids[:10], far, *ids[10:]]):
                await store.store_message(NewMessage("alice", "bob", msg_id, f"m{i}", i))
            await store._apply_now()
            # The last 20 are remembered; of the 31 forgotten, the far one is kept
            # apart and the horizon is just above the others.
            assert len(store._ids) == 20 and len(store._far_ids) == 1
            assert store._horizon == (now - 60_000 + 30).to_bytes(6, "big")
            for msg_id in (ids[0], ids[9], far, ids[29], ids[49]):  # forgotten, remembered
                again = await store.store_message(NewMessage("alice", "bob", msg_id, "x", 99))
                assert again.duplicate, msg_id.hex()
            past = _stamped(now - 3_600_000)
            old = await store.store_message(NewMessage("alice", "bob", past, "old", 1))
            assert not old.duplicate  # below the horizon, looked up, not there: new
            assert await store.last_seq("bob") == 52
        finally:
            await store.close()
        reopened = SqliteStore(tmp_path / "hub.db", recent_ids=20)
        await reopened.open()
        try:  # nothing remembered now: the horizon starts above the tables' ids
            again = await reopened.store_message(NewMessage("alice", "bob", ids[3], "x", 99))
            assert again.duplicate and again.entry.body == "m3"
            assert await reopened.last_seq("bob") == 52
        finally:
            await reopened.close()

    asyncio.run(scenario())


def _comm(task: str) -> str:
    """The name the OS shows for ``/proc/<task>``."""
    return Path(f"/proc/{task}/comm").read_text().strip()


def test_the_stores_threads_and_applier_carry_their_names(tmp_path: Path) -> None:
    """``top -H``, ``ps -L`` and ``benchmarks/hub_relay.py`` tell the store's threads
    and its applier process apart by the names they give themselves."""

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "hub.db")
        await store.open()
        try:
            await store.store_message(NewMessage("alice", "bob", new_id(), "hi", 1))
            await store.history("bob", "alice", None, 10)  # (the reader thread starts)
            names = {_comm(f"self/task/{task}") for task in os.listdir("/proc/self/task")}
            assert {"duplex-journal", "duplex-tables", "duplex-read"} <= names, names
            assert store._applier is not None
            assert _comm(str(store._applier.pid)) == "duplex-applier"
        finally:
            await store.close()

    asyncio.run(scenario())
