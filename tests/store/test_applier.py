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
from duplex.store.applier import ApplierProcess, ApplyFailed, _Row, fold, main
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


def test_a_dead_applier_fails_the_store_and_a_reopen_recovers_everything(tmp_path: Path) -> None:
    """The applier is killed: the next apply fails, the store stops taking writes
    with an error that names the applier, and a reopen applies the journal, so every
    message the store acknowledged is there, once."""
    db = tmp_path / "hub.db"

    async def first() -> list[str]:
        store = SqliteStore(db)
        await store.open()
        acked: list[str] = []
        try:
            for i in range(20):
                await store.store_message(NewMessage("alice", "bob", new_id(), f"m{i}", i))
                acked.append(f"m{i}")
            await store._apply_now()
            assert store._applier is not None
            os.kill(store._applier.pid, signal.SIGKILL)
            for i in range(20, 40):  # durable in the journal: the apply is what fails
                await store.store_message(NewMessage("alice", "bob", new_id(), f"m{i}", i))
                acked.append(f"m{i}")
            with pytest.raises(StoreError, match="applier process"):
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
    applier = ApplierProcess(tmp_path / "missing" / "hub.db", "FULL")
    try:
        with pytest.raises(ApplyFailed, match="unable to open database"):
            applier.apply(1, [])
    finally:
        assert applier.close() == 1


def test_the_applier_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["hub.db", "sometimes"]) == 2
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
