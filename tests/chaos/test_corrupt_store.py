"""A damaged store: ``duplex serve`` refuses to start, with one clear line, and serves
nothing (a silently shortened history would be worse than no hub).

Two kinds of damage to a store that holds acknowledged messages:

* the database file truncated (a full disk, a bad copy): SQLite's own checks or
  ``PRAGMA quick_check`` find it;
* one flipped byte in a write-ahead log after a crash (the database's, or that of the
  journal beside it, ``duplex.db.log``, where every message is committed first):
  SQLite drops that commit and every later one *silently*, and the file passes every
  check; the store's high-water mark (``duplex.db.hwm``) is what notices the history
  is shorter than what was acknowledged.

In both cases the hub process must exit non-zero before it listens, print a single
``Error: ...`` line that says what is wrong and what to do, and no traceback.
The store-level tests are ``tests/store/test_sqlite.py`` (every page of a database,
the log, the mark itself); this is the same through the command a user runs.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from duplex.testing.chaos import note
from duplex.testing.clients import new_client
from duplex.testing.hubs import HubProcess
from duplex.testing.servers import free_port


def serve(data: Path) -> subprocess.CompletedProcess[str]:
    """``duplex serve`` on a damaged store: must exit by itself."""
    command = [sys.executable, "-m", "duplex", "serve", "--json", "--port", str(free_port())]
    return subprocess.run(
        [*command, "--data-dir", str(data), "--argon2-memory-kib", "64", "--argon2-time-cost", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def fill(data: Path, *, stop: int) -> None:
    """A hub with acknowledged messages in its store, ended by ``stop`` (a signal)."""
    hub = HubProcess(data, args=["--synchronous", "FULL"])

    async def send() -> None:
        bob = await new_client(hub.address, "bob")
        await bob.close()
        alice = await new_client(hub.address, "alice")
        ids = [await alice.send("bob", f"acknowledged {i}") for i in range(40)]
        for msg_id in ids:
            assert await alice.wait_state(msg_id, "stored", 10) == "stored"
        await alice.close()

    try:
        asyncio.run(send())
    finally:
        hub.kill(stop)


def truncate(data: Path) -> None:
    db = data / "duplex.db"
    size = db.stat().st_size
    with db.open("r+b") as fh:
        fh.truncate(size // 2)


def flip_in_last_wal_frame(data: Path, wal_name: str = "duplex.db-wal") -> None:
    """Flips one byte in the page image of the log's last frame (its checksum fails)."""
    wal = data / wal_name
    raw = bytearray(wal.read_bytes())
    page = int.from_bytes(raw[8:12], "big")  # WAL header: page size at offset 8
    frame = 24 + page  # a 24-byte frame header, then the page
    frames = (len(raw) - 32) // frame  # after the 32-byte file header
    assert frames >= 2, f"only {frames} frames in the log"
    raw[32 + (frames - 1) * frame + 24 + page // 2] ^= 0x01
    wal.write_bytes(bytes(raw))


def flip_in_last_journal_frame(data: Path) -> None:
    """The same in the journal's own log, where every message is committed first."""
    flip_in_last_wal_frame(data, "duplex.db.log-wal")


@pytest.mark.parametrize(
    ("damage", "stop", "reason"),
    [
        (truncate, signal.SIGTERM, r"damaged|integrity check"),
        (flip_in_last_wal_frame, signal.SIGKILL, r"history is shorter than what was acknowledged"),
        (flip_in_last_journal_frame, signal.SIGKILL, r"journal's history is shorter"),
    ],
    ids=["truncated database", "flipped byte in the WAL", "flipped byte in the journal's WAL"],
)
def test_a_damaged_store_is_refused_at_start(
    tmp_path: Path, damage: object, stop: int, reason: str
) -> None:
    data = tmp_path / "hub"
    fill(data, stop=stop)
    damage(data)  # type: ignore[operator]
    result = serve(data)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert result.returncode != 0, result.stderr
    assert result.stdout == "", "the hub said it was listening"
    assert len(errors) == 1, result.stderr
    assert re.search(reason, errors[0]), errors[0]
    assert "Traceback" not in result.stderr, result.stderr
    note(f"corrupt store ({damage.__name__})", f"exit {result.returncode}: {errors[0]}")  # type: ignore[attr-defined]
