"""The SQLite store's applier process: it writes what the journal holds, it ends with
the store or the hub, and a failure of it loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

import msgspec
import psutil
import pytest

from duplex.client import register
from duplex.errors import StoreError
from duplex.store import SqliteStore
from duplex.store import sqlite as sqlite_store
from duplex.store.applier import ApplierGone, ApplierProcess, ApplyFailed, _Row, fold, main
from duplex.store.base import Entry, NewMessage
from duplex.testing.hubs import HubProcess
from duplex.testing.servers import scaled
from duplex.testing.store_conformance import new_id


def test_the_journal_entry_is_the_store_entry() -> None:
    """The applier decodes journal entries with a struct of its own (it runs without
    the duplex package): the same fields, in the same order, of the same types."""
    assert _Row.__struct_fields__ == Entry.__struct_fields__
    entry = Entry("bob", 7, "msg", "alice", new_id(), "hi", 123)
    blob = msgspec.msgpack.encode(([entry], [("bob", "phone", 7, 124)], [("bob", 7, 6, 7, 6)]))
    entries, cursors, boxes = fold([blob])
    assert entries == [msgspec.structs.astuple(entry)]
    assert (cursors, boxes) == ([("bob", "phone", 7, 124)], [("bob", 7, 6, 7, 6)])


def test_fold_keeps_each_cursor_at_its_highest_and_each_mailbox_at_its_last() -> None:
    rows = [
        msgspec.msgpack.encode(([], [("bob", "phone", 5, 1)], [("bob", 5, 5, 5, 5)])),
        msgspec.msgpack.encode(([], [("bob", "phone", 3, 2)], [("bob", 6, 5, 6, 5)])),
    ]
    _, cursors, boxes = fold(rows)
    assert cursors == [("bob", "phone", 5, 1)]
    assert boxes == [("bob", 6, 5, 6, 5)]


def test_the_applier_writes_the_tables_and_ends_with_the_store(tmp_path: Path) -> None:
    async def main_() -> int:
        store = SqliteStore(tmp_path / "hub.db")
        await store.open()
        try:
            for i in range(50):
                await store.store_message(NewMessage("alice", "bob", new_id(), f"m{i}", i))
            await store._apply_now()
            assert store._applier is not None
            pid = store._applier.pid
            assert psutil.Process(pid).ppid() == os.getpid()
            assert store.apply_count >= 1
            # Ctrl-C and a service manager's SIGTERM reach every process of the hub:
            # the applier stays for the last apply of a hub that stops cleanly.
            os.kill(pid, signal.SIGINT)
            os.kill(pid, signal.SIGTERM)
            for i in range(50, 60):
                await store.store_message(NewMessage("alice", "bob", new_id(), f"m{i}", i))
            await store._apply_now()
        finally:
            await store.close()
        return pid

    pid = asyncio.run(main_())
    assert not psutil.pid_exists(pid), "the applier outlived its store"
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        bodies = [r[0] for r in conn.execute("SELECT body FROM entries ORDER BY seq")]
    conn.close()
    assert bodies == [f"m{i}" for i in range(60)]


def test_a_killed_applier_is_replaced_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    """The applier is killed (by hand, by the OOM killer): the next apply starts a
    new one, and every message the store acknowledged is in the tables once."""
    db = tmp_path / "hub.db"

    async def body() -> tuple[list[str], list[str]]:
        store = SqliteStore(db)
        await store.open()
        acked: list[str] = []
        try:
            for round_ in range(3):
                for i in range(20):
                    body = f"m{round_}.{i}"
                    await store.store_message(NewMessage("alice", "bob", new_id(), body, i))
                    acked.append(body)
                assert store._applier is not None
                old = store._applier.pid
                os.kill(old, signal.SIGKILL)
                await store._apply_now()  # the apply after the kill: a new applier
                assert store._applier.pid != old
            stored = [e.body for e in await store.fetch("bob", 0, 100)]
        finally:
            await store.close()
        return acked, stored

    acked, stored = asyncio.run(body())
    assert stored == acked
    with sqlite3.connect(db) as conn:
        rows = [r[0] for r in conn.execute("SELECT body FROM entries ORDER BY seq")]
    conn.close()
    assert rows == acked


def test_an_apply_sent_again_skips_what_the_dead_applier_committed(tmp_path: Path) -> None:
    """A killed applier may have committed its last apply before it could answer: the
    store sends it again to the new one as a replay, which writes it once."""
    db = tmp_path / "hub.db"
    _migrated(db)
    entry = Entry("bob", 1, "msg", "alice", new_id(), "hi", 1)
    _journal(db, msgspec.msgpack.encode(([entry], [], [("bob", 1, 0, 1, 0)])))
    applier = ApplierProcess(db, _log(db), "FULL")
    try:
        applier.apply(1, 0, 1)
        with pytest.raises(ApplyFailed, match="UNIQUE"):
            applier.apply(2, 0, 1)
        applier.apply(2, 0, 1, replay=True)
    finally:
        assert applier.close() == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM entries").fetchone() == (1,)
        assert conn.execute("SELECT value FROM meta WHERE key = 'commits'").fetchone() == (2,)
    conn.close()


def _migrated(db: Path) -> None:
    async def body() -> None:
        store = SqliteStore(db)
        await store.open()
        await store.close()

    asyncio.run(body())


def _log(db: Path) -> Path:
    return db.with_name(db.name + ".log")


def _journal(db: Path, *rows: bytes) -> None:
    """Appends ``rows`` to the journal, as the journal writer would (ids 1, 2, ...)."""
    with sqlite3.connect(_log(db)) as log:
        log.executemany("INSERT INTO journal (ops) VALUES (?)", [(row,) for row in rows])
    log.close()


def test_an_apply_of_rows_the_journal_lacks_fails(tmp_path: Path) -> None:
    """The hub names the journal rows to apply; if the last is not there (the journal
    was changed behind its back), nothing is written and the apply fails, saying so."""
    db = tmp_path / "hub.db"
    _migrated(db)
    _journal(db, msgspec.msgpack.encode(([], [], [("bob", 0, 0, 0, 0)])))
    applier = ApplierProcess(db, _log(db), "FULL")
    try:
        with pytest.raises(ApplyFailed, match="the journal has no row 2"):
            applier.apply(1, 0, 2)
        applier.apply(1, 0, 1)  # what is there applies
    finally:
        assert applier.close() == 0


def test_a_hung_applier_is_killed(tmp_path: Path) -> None:
    """A stopped applier must not stop the applies for good: past its timeout it is
    killed, and the store's next apply goes to a new one."""
    db = tmp_path / "hub.db"
    _migrated(db)
    _journal(db, msgspec.msgpack.encode(([], [], [("bob", 0, 0, 0, 0)])))
    applier = ApplierProcess(db, _log(db), "FULL", timeout=0.5)
    try:
        applier.apply(1, 0, 1)
        os.kill(applier.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(ApplierGone, match=r"did not answer within 0.5 s, so it was killed"):
            applier.apply(2, 0, 1, replay=True)
        assert time.monotonic() - started < scaled(5)
        assert not psutil.pid_exists(applier.pid)
    finally:
        applier.close()


def test_a_stopped_applier_holds_up_writes_not_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While an apply hangs (the applier stopped here; a slow disk in life), the
    journal entries that wait for the next one are held in memory: past the bound the
    store takes no more writes, which wait instead. Once the applier answers, every
    write goes through, once and in order."""
    bound = 40
    total = 200

    async def body() -> tuple[int, list[str]]:
        store = SqliteStore(tmp_path / "hub.db", max_unapplied=bound)
        await store.open()
        acked: list[str] = []

        async def sender() -> None:
            for i in range(total):  # one at a time: one entry per journal commit
                text = f"m{i}"
                await store.store_message(NewMessage("alice", "bob", new_id(), text, i))
                acked.append(text)

        try:
            await store.store_message(NewMessage("carol", "bob", new_id(), "first", 0))
            await store._apply_now()  # the applier is up and answering
            assert store._applier is not None
            pid = store._applier.pid
            os.kill(pid, signal.SIGSTOP)
            task = asyncio.create_task(sender())
            try:
                for _ in range(int(scaled(20) / 0.01)):  # until the bound is reached
                    if store._behind:
                        break
                    await asyncio.sleep(0.01)
                assert store._behind, f"never held up: {len(acked)} acked"
                held_at = len(acked)
                await asyncio.sleep(0.5)
                # Nothing more got through, and what waits for an apply is the bound.
                assert len(acked) == held_at < total
                assert store._ready_entries == bound
                assert not task.done()
            finally:
                os.kill(pid, signal.SIGCONT)
            await asyncio.wait_for(task, scaled(30))
            stored = [e.body for e in await store.fetch("bob", 0, total + 10)]
        finally:
            await store.close()
        return held_at, stored

    with caplog.at_level("WARNING", logger="duplex.store.sqlite"):
        held_at, stored = asyncio.run(body())
    assert stored == ["first"] + [f"m{i}" for i in range(total)]
    messages = [r.getMessage() for r in caplog.records]
    assert f"the applier is behind: {bound} journal entries wait for its apply" in "".join(messages)
    assert any("the applier's apply is done: writes waited" in text for text in messages)
    assert held_at >= bound


def test_an_applier_that_cannot_be_replaced_fails_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One replacement per apply: if the new applier fails too, the store stops taking
    writes (as after a failed fsync), with an error that says why; the journal keeps
    everything for the next open."""
    db = tmp_path / "hub.db"

    async def first() -> list[str]:
        store = SqliteStore(db)
        await store.open()
        acked: list[str] = []
        try:
            for i in range(10):
                await store.store_message(NewMessage("alice", "bob", new_id(), f"m{i}", i))
                acked.append(f"m{i}")
            assert store._applier is not None
            # The replacement cannot open the database.
            broken = tmp_path / "missing" / "hub.db"
            monkeypatch.setattr(
                sqlite_store,
                "ApplierProcess",
                lambda *args, **kwargs: ApplierProcess(broken, _log(db), "FULL"),
            )
            os.kill(store._applier.pid, signal.SIGKILL)
            with pytest.raises(StoreError, match="unable to open database"):
                await store._apply_now()
            with pytest.raises(StoreError, match="accepts no more writes"):
                await store.store_message(NewMessage("alice", "bob", new_id(), "late", 99))
        finally:
            await store.close()
        return acked

    async def second() -> list[str]:
        store = SqliteStore(db)
        await store.open()
        try:
            return [e.body for e in await store.fetch("bob", 0, 100)]
        finally:
            await store.close()

    acked = asyncio.run(first())
    assert asyncio.run(second()) == acked


def test_an_applier_that_cannot_open_the_database_says_why(tmp_path: Path) -> None:
    applier = ApplierProcess(tmp_path / "missing" / "hub.db", tmp_path / "hub.db.log", "FULL")
    try:
        with pytest.raises(ApplyFailed, match="unable to open database"):
            applier.apply(1, 0, 1)
    finally:
        assert applier.close() == 1


def test_the_applier_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["hub.db", "hub.db.log", "sometimes"]) == 2
    assert "synchronous must be" in capsys.readouterr().err


def test_the_applier_ends_when_the_hub_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves the hub no chance to stop its applier: the applier sees its
    input close and ends by itself."""

    async def scenario() -> None:
        hub = HubProcess(tmp_path / "hub")
        try:
            await register(hub.address, "alice", "correct horse")
            children = psutil.Process(hub.proc.pid).children()
            appliers = [c for c in children if "applier.py" in " ".join(c.cmdline())]
            assert len(appliers) == 1, children
            applier = appliers[0]
            hub.kill(signal.SIGKILL)
            deadline = time.monotonic() + scaled(10)
            while applier.is_running() and applier.status() != psutil.STATUS_ZOMBIE:
                assert time.monotonic() < deadline, "the applier outlived the hub"
                await asyncio.sleep(0.05)
        finally:
            hub.kill()

    asyncio.run(scenario())


def test_a_killed_hubs_applier_holds_the_store_until_it_ends(tmp_path: Path) -> None:
    """A hub restarted at once after a SIGKILL must not recover the journal while the
    old applier still writes an apply: the applier shares the store's lock, so the
    new store waits for it to end (here it is stopped, so the wait runs out, and the
    refusal names it); once it has ended, the store opens and holds every message."""

    async def scenario() -> None:
        hub = HubProcess(tmp_path / "hub")
        try:
            await register(hub.address, "alice", "correct horse")
            children = psutil.Process(hub.proc.pid).children()
            (applier,) = [c for c in children if "applier.py" in " ".join(c.cmdline())]
            applier.suspend()
            hub.kill(signal.SIGKILL)
            db = tmp_path / "hub" / "duplex.db"
            with pytest.raises(StoreError, match=f"held by process {applier.pid}\\)"):
                await SqliteStore(db, lock_wait=0.5).open()
            applier.resume()  # it reads the end of its input and ends
            store = SqliteStore(db, lock_wait=scaled(10))
            await store.open()
            try:
                assert not applier.is_running() or applier.status() == psutil.STATUS_ZOMBIE
                assert await store.get_user("alice") is not None
            finally:
                await store.close()
        finally:
            hub.kill()

    asyncio.run(scenario())
