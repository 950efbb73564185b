"""The embedded store: SQLite in WAL mode. The event loop keeps the mailboxes; one
thread commits each batch to a journal, another applies the journal to the tables.

Who does what
-------------
What a messenger asks of its store on every message is small: give the message the
next number of its recipient's mailbox, tell whether its id was stored before, and,
when the recipient acks, mark a range of its mailbox delivered and append a receipt to
each sender's mailbox. Done as SQL statements by a writer thread, one relayed message
cost the hub about 80 us of CPU there (lookups, inserts and updates in three
transactions, plus a future, a coroutine step and a thread hop per request): half of
the hub, whose other half is the network.

So the **event loop** keeps the state of the mailboxes in use in memory (last and
acked sequence, counters, and the entries not yet in the tables) and answers those
questions itself, in a few microseconds (:meth:`SqliteStore.stage_message`,
:meth:`SqliteStore.stage_ack`). What it stages joins the *open batch*. The answers
exist at once, but nobody is told them until their batch is durable: the hub
registers what to do then with :meth:`SqliteStore.when_durable`, and the async methods
(:meth:`~SqliteStore.store_message`, :meth:`~SqliteStore.ack`, ...) wait for it. A
mailbox not in memory is read in with one indexed query on the loop's own read
connection the first time it is touched.

Two threads write, each to a file of its own, so neither waits for the other:

* the **journal writer** makes each batch durable as ONE row of the ``journal``
  table in ``<db>.log``: the batch's new entries, cursors and the new state of the
  mailboxes it touched, as a MessagePack blob. That is one B-tree insert and a few
  pages of log per commit, however many messages it carries;
* the **table writer** tells the **applier**, a process of its own
  (:mod:`duplex.store.applier`), which journal rows to apply, every
  :data:`APPLY_AFTER` seconds (sooner past :data:`APPLY_ENTRIES` entries or
  :data:`APPLY_BYTES` bytes); the applier reads them from the journal and writes them
  to the tables of ``<db>`` in one transaction with one ``executemany`` per table. A
  big apply writes each index page it touches once. (Applied with every commit
  instead, in one file, the entries' index spread each commit over about a hundred
  pages of log: the writers took 39 us of CPU per relayed message against 21.) In a
  process, the apply's CPU (the biggest part of the store's) runs beside the event
  loop instead of under its GIL. The table writer also runs the rare account, token
  and contact changes itself, in transactions of their own between applies. The next
  journal commit deletes the rows an apply covered.

An entry is written once and never updated: whether a message is delivered is a fact
about its mailbox (every message at or below ``acked_seq`` is, none above it is), and
when, the ``ts`` of its receipt (migration 4 dropped the entries' ``delivered``).

Durability and its price
------------------------
A batch counts as durable once the transaction that holds it is committed with
``synchronous=FULL``: in WAL mode SQLite then fsyncs the write-ahead log before
``COMMIT`` returns, so neither a crash of the process nor a power cut loses it.
``synchronous=NORMAL`` skips that fsync (the log is synced only at checkpoints): still
safe against a crash of the *process* (the written frames are in the kernel's page
cache), but a power cut or kernel crash can lose the last transactions — messages the
hub already acknowledged. With group commit the two cost about the same, which is why
FULL is the default (``benchmarks/store_commit.py`` gives the figures).

A store opened after a crash replays what the journal holds into the tables before it
serves anything (:meth:`SqliteStore._recover`), then empties it; an entry already
applied is skipped, so a crash during recovery only repeats it. A closed store's
tables are complete and its journal empty.

One hub at a time
-----------------
The loop numbers each mailbox from its own memory, so two hubs on one store would give
out the same sequence numbers. An open store holds a lock (``flock`` on ``<db>.lock``,
which names its holders), and so does its applier process, which inherits it: a second
hub waits :data:`LOCK_WAIT` seconds for it, then refuses to start and names the
processes that hold it. A hub that was killed holds it until its applier has finished
its last apply and ended, so a hub restarted at once does not recover the journal
while the old applier still writes.

Group commit
------------
An fsync costs from tens of microseconds to milliseconds whatever it carries, so one
per message would cap the hub at a few thousand messages per second at best. The loop
hands the journal writer one batch at a time: everything staged while it committed
the previous one (and, when it was idle, everything staged in the current turn of the
event loop, but not sooner than :data:`COMMIT_INTERVAL` after the last handover). So
the batch grows with the load by itself: a lone message pays one fsync, a thousand
concurrent ones share one. Staged but not yet durable work is bounded by
:data:`MAX_PENDING_WRITES` requests: above it the ``stage_*`` methods decline and the
async methods wait, in order, which is the backpressure the hub passes on. Durable
work that waits for an apply while another runs is bounded the same way, by
:data:`MAX_UNAPPLIED` entries: an applier that falls behind slows the writers down
instead of growing the hub.

If a batch or an apply cannot be committed (a failed fsync, a full disk past
:data:`RETRY_FOR` seconds of retries), what the loop staged after it can no longer be
trusted to match the disk: the store fails every waiting caller and accepts no more
writes until it is reopened, which recovers from the journal (PostgreSQL reasons the
same way about a failed fsync and panics). An applier process that ends (killed by
hand or by the kernel's OOM killer) or hangs is replaced once per apply; if the new one
fails too, so does the store. Either way nothing is lost: the journal keeps every row
until an apply has covered it. A request that fails on its own (a contact
naming an unknown user) runs in a savepoint and fails alone.

Reads
-----
Reads of the tables run on a reader thread with its own connection; in WAL mode it
sees the last committed snapshot and never waits for a writer. ``fetch`` serves the
entries not yet applied from memory (only those already durable) and the rest from
the tables; ``history`` and ``stats`` wait for an apply of everything staged, then
read the tables.

Idempotent sends without a read
-------------------------------
A resent ``(sender, id)`` must be found, and a lookup in the ``entries_msg_id`` index
per message would put a query back on the hot path. The store remembers the ids of the
last :data:`RECENT_IDS` messages and keeps a *horizon*: every message ever stored
whose id's first 48 bits (a UUIDv7's millisecond time) are at or above the horizon is
among them. The horizon starts just above the largest id in the tables and rises past
each id that is forgotten (oldest first; ids from a clock far ahead are kept apart
rather than forgotten, so one cannot push the horizon into the future). A new id at
or above the horizon, not remembered, is therefore new without a read; clients
stamp their ids with the time, so that is nearly every id. Anything older is looked up
in the index, as before. (The horizon is kept as the 6 bytes an id starts with, so
that the test is a comparison of bytes, not an int made of every id.)

Integrity
---------
At :meth:`SqliteStore.open`, ``PRAGMA quick_check`` (structure of every page, O(size
of the file)) must answer ``ok``, and a damaged file (``SQLITE_CORRUPT``,
``SQLITE_NOTADB``) is refused with :class:`~duplex.errors.StoreCorrupt`.

That is not enough for a write-ahead log: SQLite ignores a WAL frame whose checksum
is wrong *and every frame after it*, silently, so one flipped byte near the end of the
log makes the last acknowledged commits vanish while the file still passes every
check. So the store keeps a high-water mark in ``<db>.hwm`` next to the database: the
number of write transactions committed to each file (also counted in each file's
``meta``), written after each commit (one ``pwrite`` of 96 bytes per commit, not per
message) and fsync'd when the writers have been idle for 50 ms and at least once a
second under sustained load. At open, a file holding fewer commits than the mark
records — or none, or another store's id — is refused with ``StoreCorrupt`` ("history
is shorter than what was acknowledged") rather than served; so is a journal that
belongs to another database. Being written after the commit, the mark can lag behind
the files but never run ahead of them, so it gives no false alarm.

Residual risks: the mark detects lost *trailing* commits, not altered content (SQLite
keeps no page checksums, so a flipped byte inside a message body in the main file is
served as is); a power cut within a second of the last fsync of the mark may leave it
stale, and damage to the log at that same moment would then go unnoticed; losing the
database and the mark together (a restored directory) is not detected. With
``synchronous=NORMAL``, losing trailing commits on a power cut is the accepted
trade-off, so a shortfall is logged as a warning instead of refused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import functools
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from duplex.errors import StoreCorrupt, StoreError, map_exceptions
from duplex.store.applier import ApplierGone, ApplierProcess, fold, name_thread, write_folded
from duplex.store.base import Entry, EntryKind, NewMessage, Stored, StoreStats, User, validate_batch
from duplex.store.migrate import SCHEMA_VERSION_DDL, load_migrations

__all__ = [
    "APPLIER_NICE",
    "APPLY_AFTER",
    "APPLY_BYTES",
    "APPLY_ENTRIES",
    "BOX_CACHE",
    "BUSY_TIMEOUT",
    "COMMIT_INTERVAL",
    "LOCK_WAIT",
    "MAX_PENDING_READS",
    "MAX_PENDING_WRITES",
    "MAX_UNAPPLIED",
    "MAX_UNAPPLIED_BYTES",
    "RECENT_IDS",
    "RETRY_FOR",
    "SqliteStore",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_PENDING_WRITES: Final = 8192
"""Write requests staged but not yet durable, at most; past it ``stage_*`` declines and
the async methods wait. 8192 messages of a few hundred bytes are a few MB of log,
committed in well under a second, while a hub with thousands of sending connections
still finds room for every in-flight message."""

MAX_PENDING_READS: Final = 1024
"""Reads queued for the reader thread at most; more callers wait in ``await``."""

BUSY_TIMEOUT: Final = 5.0
"""Seconds a connection waits for a lock held by another process (a backup tool, the
``sqlite3`` shell) before failing, rather than failing at once."""

RETRY_FOR: Final = 30.0
"""Seconds the writer keeps retrying a batch that failed for a reason that can pass (a
lock held by another process, a full disk) before the store gives up."""

COMMIT_INTERVAL: Final = 0.002
"""Seconds at least between the starts of two group commits.

A commit with ``synchronous=FULL`` costs this machine about 150 us of CPU (130 of them
in the kernel's fsync path) whatever it carries. Committing whenever the writer is
free makes a moderately loaded hub commit a few messages at a time, thousands of
times a second: at 5,000 messages/s, 90% of a CPU against 72% with 2 ms between
commits, for 1.2 ms more at the median (``benchmarks/hub_relay.py --rate 5000``).
A lone message still goes at once: the wait only applies right after a commit."""

APPLY_AFTER: Final = 0.1
"""Seconds at most between an entry's journal commit and its apply to the tables.

An apply of many entries writes each index page it touches once, but the disk writes
and fsyncs of a big one hold up the journal commits that run meanwhile, and every
message in flight with them: the slowest percent of messages waits for an apply. At
12,000 messages/s (``benchmarks/hub_relay.py --rate 12000``, alternating runs) p99
was 14.6-17.6 ms applying every 0.5 s, 7.8-15.9 every 0.2 s and 7.0-8.4 every 0.1 s,
for about 1 us more CPU per message in the applier and no change in the closed-loop
rate beyond the noise."""

APPLY_ENTRIES: Final = 16384
"""Entries in the journal, not yet in the tables, past which an apply starts at once.
Each is held in memory until then (the mailbox's tail and the apply's list), about
300 bytes with a short body."""

BOX_CACHE: Final = 100_000
"""Mailboxes the event loop keeps in memory (about 200 bytes each, more with entries
not yet applied). Past it, each apply forgets the oldest-loaded of those whose whole
state is in the tables; the next use reads a mailbox back (one indexed read). Without
a bound, a long-running hub would hold every mailbox it ever touched."""

APPLY_BYTES: Final = 1 << 20
"""Message bytes in the journal, not yet in the tables, past which an apply starts at
once: a flood of large messages must not grow the hub by what it stores. (At 4 MiB,
a flood of 16 KB messages on a slow hour held 10-18 MB of bodies between applies,
and ``tests/chaos/test_slow_consumer.py`` measured that instead of the hub's send
queue; at 1 MiB, 0-3 MB. Small messages reach :data:`APPLY_ENTRIES` or
:data:`APPLY_AFTER` first: 25,000 messages/s of 64 bytes make 160 KB per apply.)"""

MAX_UNAPPLIED: Final = 4 * APPLY_ENTRIES
"""Entries in the journal that wait for an apply while another runs, past which the
store takes no more writes until that apply is done and they are handed over (or past
:data:`MAX_UNAPPLIED_BYTES` of their message bytes). The loop holds each of them in
memory until its apply (see :data:`APPLY_ENTRIES`), so an applier that falls behind
or hangs until :data:`~duplex.store.applier.ANSWER_TIMEOUT` must not let them grow
without bound: the writers wait instead, as they wait for room in a commit, and the
hub's senders with them (their reads pause). An apply that keeps up hands over every
:data:`APPLY_AFTER` seconds, far below the bound: at 25,000 messages/s, 5,000 entries."""

MAX_UNAPPLIED_BYTES: Final = 4 * APPLY_BYTES
"""Message bytes in the journal that wait for an apply while another runs: the bound
of :data:`MAX_UNAPPLIED` for large messages."""

APPLIER_NICE: Final = 5
"""How much lower the applier process's scheduling priority is (``nice``, added to the
hub's). An apply is milliseconds of CPU every tenth of a second; where it shares a
CPU with the event loop at the same priority, the kernel splits that CPU half and
half meanwhile, and every message in flight waits that much longer. At nice 5 the
loop gets three quarters of a contended CPU and the apply still keeps up (it needs
about a tenth). ``benchmarks/hub_relay.py`` at 6,000 messages/s, with the apply in a
thread of the hub: p99 17-26 ms at 0, 9-11 ms at 5; closed loop p99 24-25 -> 17-18 ms
at the same rate (nice 10 was no better than 5)."""

LOCK_WAIT: Final = 5.0
"""Seconds :meth:`SqliteStore.open` waits for a store that is still held, before it
fails. One hub at a time may use a store: a second one would number the same
mailboxes from its own memory. A hub that was killed still holds its store until its
applier process has finished its last apply and ended (well under a second), so that
a hub started at once does not recover the journal under it."""

RECENT_IDS: Final = 100_000
"""Message ids remembered after their apply, for resends found without a read."""

_FUTURE_SLACK_MS = 60_000  # an id this far ahead of our clock is kept apart, not forgotten
_HWM_SYNC_INTERVAL = 1.0
_HWM_IDLE = 0.05
_HWM_MAGIC = b"duplex-hwm2"  # store id, the tables' and the journal's commits
_HWM_MAGIC_V1 = b"duplex-hwm1"  # before the journal had a file of its own
_HWM_SIZE = 96
_SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")

# Primary result codes (the low byte of an extended code).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26
# Failures of a whole batch that may pass: retried for RETRY_FOR seconds.
_TRANSIENT = frozenset({_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL})

_MAPPING: dict[type[BaseException], type[StoreError]] = {
    sqlite3.Error: StoreError,
    OSError: StoreError,
}


def _code(exc: BaseException | None) -> int:
    return int(getattr(exc, "sqlite_errorcode", -1)) & 0xFF


@contextlib.contextmanager
def _translated(path: Path) -> Iterator[None]:
    """Maps ``sqlite3.Error``/``OSError`` to ``StoreError`` (``StoreCorrupt`` if damaged)."""
    try:
        with map_exceptions(_MAPPING):
            yield
    except StoreError as exc:
        cause = exc.__cause__
        if cause is None or isinstance(exc, StoreCorrupt):
            raise
        if _code(cause) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            raise StoreCorrupt(
                f"{path}: the database file is damaged ({cause}); "
                "the hub will not serve from it: restore it from a backup"
            ) from cause
        raise StoreError(f"{path}: {cause}") from cause


class _Refused(StoreError):
    """A write request refused on its own, before it changed anything."""


def _clone(exc: BaseException) -> BaseException:
    """A fresh exception per waiting caller, so tracebacks do not pile up on one."""
    if isinstance(exc, StoreError):
        copy = type(exc)(*exc.args)
        copy.__cause__ = exc.__cause__
        return copy
    return exc


def _id_time(msg_id: bytes) -> int:
    """The first 48 bits of a message id: a UUIDv7's milliseconds since the epoch."""
    return int.from_bytes(msg_id[:6], "big")


_ABOVE_ALL = b"\xff" * 17  # compares above every 16-byte id


def _time_key(stamp: int) -> bytes:
    """What a message id compares against for ``_id_time(msg_id) >= stamp``: its
    first 48 bits, big-endian, so that the hot path compares bytes instead of making
    an int of every id (16-byte ids, so a longer id with an equal prefix is above)."""
    return stamp.to_bytes(6, "big") if stamp < 1 << 48 else _ABOVE_ALL


def _meta(conn: sqlite3.Connection) -> tuple[str, int]:
    """A file's ``meta``: its store id and its count of write transactions."""
    values = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('store_id', 'commits')"))
    return str(values.get("store_id") or ""), int(values.get("commits") or 0)


@dataclasses.dataclass(slots=True, eq=False)
class _Box:
    """A mailbox as the event loop knows it.

    Attributes:
        name: the mailbox (its user).
        last_seq: the highest sequence staged.
        acked_seq: the highest sequence any device acked (every message at or below
            it is delivered, every one above it is not).
        messages: messages ever stored in it (not receipts).
        delivered: those of them delivered.
        durable: the highest sequence committed to the journal (``<= last_seq``).
        applied: the highest sequence in the ``entries`` table (``<= durable``).
        tail: the entries above ``applied``, in order (``tail[0].seq == applied + 1``).
        saved: the :meth:`state` the ``mailboxes`` table holds (as loaded, or as the
            last apply wrote it): the mailbox may be forgotten while it is current.
    """

    name: str
    last_seq: int
    acked_seq: int
    messages: int
    delivered: int
    durable: int
    applied: int
    tail: list[Entry] = dataclasses.field(default_factory=list)
    saved: tuple[str, int, int, int, int] | None = None

    def state(self) -> tuple[str, int, int, int, int]:
        """The mailbox's row: (mailbox, last_seq, acked_seq, messages, delivered)."""
        return (self.name, self.last_seq, self.acked_seq, self.messages, self.delivered)

    def clean(self) -> bool:
        """True when the tables hold all of it: forgetting it loses nothing."""
        return not self.tail and self.saved == self.state()


_Done = Callable[[StoreError | None], object]


class _Batch:
    """What was staged between two handovers to the journal writer.

    The loop stages into it (``entries`` ... ``done``); :meth:`SqliteStore._seal`
    encodes its journal row; the journal writer sets ``error``;
    :meth:`SqliteStore._journaled` answers everyone and sets ``finished``.
    """

    __slots__ = (
        "boxes",
        "bytes",
        "cursors",
        "delete_upto",
        "done",
        "entries",
        "error",
        "finished",
        "journal",
        "journal_id",
        "ops",
        "states",
        "tops",
    )

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.cursors: dict[tuple[str, str], tuple[int, int]] = {}
        self.boxes: dict[str, _Box] = {}
        self.done: list[_Done] = []
        self.ops = 0
        self.bytes = 0  # of message bodies
        self.states: list[tuple[str, int, int, int, int]] = []
        self.tops: list[tuple[_Box, int]] = []
        self.journal = b""
        self.journal_id = 0
        self.delete_upto = 0
        self.error: StoreError | None = None
        self.finished = False


class _Request:
    """A write that needs SQL (accounts, tokens, contacts), run by the table writer."""

    __slots__ = ("error", "fn", "future", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]):
        self.fn = fn
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None


class _Apply:
    """What one apply writes to the tables: the journal's rows ``journal_from <
    id <= journal_upto``, which leave these mailbox states (``boxes``)."""

    __slots__ = ("boxes", "journal_from", "journal_upto", "tops", "waiters")

    def __init__(self) -> None:
        self.journal_from = 0
        self.boxes: list[tuple[str, int, int, int, int]] = []
        self.tops: dict[str, int] = {}
        self.journal_upto = 0
        self.waiters: list[asyncio.Future[None]] = []


class _TableWork:
    """One turn of the table writer: requests (one transaction of its own) and at most
    one apply (one transaction of the applier's); ``requested`` once the requests are
    committed, so that a retried apply does not run them again."""

    __slots__ = ("apply", "requested", "requests")

    def __init__(self, requests: list[_Request], apply: _Apply | None) -> None:
        self.requests = requests
        self.apply = apply
        self.requested = False


# What one journal row holds: new entries, (mailbox, device, seq, ts) cursors, and
# (mailbox, last_seq, acked_seq, messages, delivered) mailbox states, in the order they
# happened. (Which messages are delivered is in the states: those up to acked_seq.)
# The applier (duplex.store.applier) decodes and writes them.
_journal_encoder = msgspec.msgpack.Encoder()

_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('store_id', ''), ('commits', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS journal (id INTEGER PRIMARY KEY, ops BLOB NOT NULL);
"""
"""The journal's own file (see the module doc): its rows and its own commit count."""

_LOAD_BOX = "SELECT last_seq, acked_seq, messages, delivered FROM mailboxes WHERE mailbox = ?"
_FIND_MESSAGE = (
    "SELECT mailbox, seq, body, ts FROM entries WHERE msg_id = ? AND peer = ? AND kind = 'msg'"
)
_UNDELIVERED = (
    "SELECT seq, peer, msg_id FROM entries"
    " WHERE mailbox = ? AND seq > ? AND seq <= ? AND kind = 'msg' ORDER BY seq"
)
_FETCH = (
    "SELECT seq, kind, peer, msg_id, body, ts FROM entries"
    " WHERE mailbox = ? AND seq > ? ORDER BY seq LIMIT ?"
)
# One direction of a conversation: newest first on UNIQUE (mailbox, seq), no sort.
_HISTORY = (
    "SELECT id, mailbox, seq, peer, msg_id, body, ts FROM entries"
    " WHERE mailbox = ? AND kind = 'msg' AND peer = ? AND ts < ? ORDER BY seq DESC LIMIT ?"
)


def _lock(path: Path, db: Path, wait: float) -> int:
    """Takes the store's lock (``flock`` on ``path``), waiting up to ``wait`` seconds
    for whoever holds it; returns its descriptor, which holds it until closed.

    Raises:
        StoreError: another hub (or a killed hub's applier) held it all along.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    waited = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _name_holders(fd, os.getpid())
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                if not waited:
                    logger.warning("%s: another hub holds it; waiting up to %g s", db, wait)
                    waited = True
                time.sleep(0.05)
        import psutil  # (only here: a refusal, once)

        holders = os.pread(fd, 256, 0).decode(errors="replace").split()
        alive = [pid for pid in holders if pid.isdigit() and psutil.pid_exists(int(pid))]
        held = f" (held by process {', '.join(alive)})" if alive else ""
        raise StoreError(
            f"{db} is in use by another hub{held}: a store serves one hub at a time. "
            "Stop that hub, or give this one a data directory of its own"
        )
    except BaseException:
        os.close(fd)
        raise


def _name_holders(fd: int, *pids: int) -> None:
    """Writes who holds the lock into its file, for the message of a hub that finds
    it taken."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, b" ".join(b"%d" % pid for pid in pids) + b"\n", 0)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, commits: int) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, counted in the file's ``meta`` as its
    ``commits``-th write transaction (what the high-water mark compares); rolled back
    if the body raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("UPDATE meta SET value = ? WHERE key = 'commits'", (commits,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


class SqliteStore:
    """The :class:`~duplex.store.base.Store` on SQLite (see the module doc).

    Use it from one event loop, the one that awaited :meth:`open`.

    Args:
        path: the database file; its folder is created if missing. Beside it,
            ``<path>.log`` holds the journal (an SQLite file of its own),
            ``<path>.hwm`` the high-water mark, and SQLite keeps the ``-wal`` and
            ``-shm`` files of both while the store is open.
        synchronous: ``"FULL"`` (default: fsync before every commit returns),
            ``"EXTRA"``, or ``"NORMAL"`` (faster; can lose the last acknowledged
            transactions on a power cut, never on a process crash).
        max_batch: the most write requests one journal commit takes. The default takes
            everything staged; 1 gives one commit per request (for benchmarks).
        integrity_check: ``"quick"`` (``PRAGMA quick_check``, default), ``"full"``
            (``PRAGMA integrity_check``, also cross-checks every index: slower) or
            ``"off"``.
        apply_after: seconds at most between an entry's journal commit and its apply
            (see :data:`APPLY_AFTER`); 0 applies after every journal commit.
        commit_interval: seconds at least between the starts of two journal commits
            (see :data:`COMMIT_INTERVAL`); 0 commits as soon as the writer is free.
        box_cache: mailboxes kept in memory (see :data:`BOX_CACHE`).
        max_unapplied: journal entries that may wait for an apply (see
            :data:`MAX_UNAPPLIED`).
        lock_wait: seconds :meth:`open` waits for a store another hub holds (see
            :data:`LOCK_WAIT`).
        recent_ids: message ids remembered after their apply (see
            :data:`RECENT_IDS`).

    Raises:
        ValueError: an unknown ``synchronous`` or ``integrity_check`` value.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        max_batch: int = MAX_PENDING_WRITES,
        integrity_check: str = "quick",
        apply_after: float = APPLY_AFTER,
        commit_interval: float = COMMIT_INTERVAL,
        box_cache: int = BOX_CACHE,
        max_unapplied: int = MAX_UNAPPLIED,
        lock_wait: float = LOCK_WAIT,
        recent_ids: int = RECENT_IDS,
    ) -> None:
        synchronous = synchronous.upper()
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, not {synchronous!r}")
        if integrity_check not in ("quick", "full", "off"):
            raise ValueError(f"integrity_check must be quick, full or off: {integrity_check!r}")
        self.path = Path(path)
        self.log_path = self.path.with_name(self.path.name + ".log")
        self.hwm_path = self.path.with_name(self.path.name + ".hwm")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.synchronous = synchronous
        self._max_batch = max(1, min(max_batch, MAX_PENDING_WRITES))
        self._integrity_check = integrity_check
        self._apply_after = max(0.0, apply_after)
        self._commit_interval = max(0.0, commit_interval)
        self._box_cache = max(1, box_cache)
        self._max_unapplied = max(1, max_unapplied)
        self._lock_wait = max(0.0, lock_wait)
        self._recent_ids = max(1, recent_ids)
        self.commit_count = 0
        """Write transactions committed since :meth:`open`, in either file."""
        self.write_count = 0
        """Write requests committed since :meth:`open` (messages, acks, ...)."""
        self.apply_count = 0
        """Applies of the journal to the tables since :meth:`open`."""
        self.boxes_forgotten = 0
        """Mailboxes dropped from memory since :meth:`open` (see :data:`BOX_CACHE`)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tconn: sqlite3.Connection | None = None  # the table writer's
        self._jconn: sqlite3.Connection | None = None  # the journal writer's
        self._rconn: sqlite3.Connection | None = None  # the reader thread's
        self._lconn: sqlite3.Connection | None = None  # the event loop's point reads
        self._hwm_fd = -1
        self._hwm_lock = threading.Lock()
        self._lock_fd = -1  # holds the store's lock (see LOCK_WAIT); the applier shares it
        self._store_id = ""
        self._commits = 0  # the tables' total, as in their meta
        self._log_commits = 0  # the journal's total, as in its meta
        self._hwm_synced = 0.0
        self._hwm_dirty = False
        # Loop side: staging.
        self._boxes: dict[str, _Box] = {}
        self._open = _Batch()
        self._last = _Batch()  # the batch that holds the last staged request
        self._last.finished = True
        self._inflight = 0  # journal batches handed over, not yet committed
        self._seal_soon = False
        self._sealed_at = 0.0
        self._journal_id = 0  # the last journal row id given out
        self._pending = 0  # write requests staged, not yet durable
        self._waiting = 0  # async callers waiting for room, or woken and not yet staged
        self._woken = 0  # of those, woken
        self._room_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Loop side: what the journal holds and the tables do not yet (_apply_if_due).
        self._ready_entries = 0  # their entries
        self._ready_boxes: dict[str, tuple[str, int, int, int, int]] = {}
        self._ready_bytes = 0
        self._ready_since = 0.0  # 0: nothing ready
        self._ready_upto = 0  # the newest journal row committed
        self._behind = 0.0  # since when the ready entries are past the bound; 0: not
        self._applying: _Apply | None = None
        self._apply_waiters: list[asyncio.Future[None]] = []
        self._apply_timer: asyncio.TimerHandle | None = None
        self._deletable = 0  # journal rows up to this one are in the tables (deletable)
        self._deleted = 0
        self._requests: list[_Request] = []  # for the table writer's next transaction
        # Idempotent sends (see the module doc).
        # (sender, id) -> (mailbox, seq): where it went, not the entry (nor its body).
        self._ids: dict[tuple[str, bytes], tuple[str, int]] = {}
        self._id_order: collections.deque[tuple[str, bytes]] = collections.deque()
        self._far_ids: dict[tuple[str, bytes], tuple[str, int]] = {}
        self._horizon = b""  # a _time_key: every id at or above it is new or remembered
        # The two writer threads: journal commits, and the tables (requests, and the
        # applies, which the applier process writes).
        # (queue.SimpleQueue: a put is one C call that wakes only its own writer.)
        self._jqueue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._tqueue: queue.SimpleQueue[_TableWork | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._applier: ApplierProcess | None = None  # writes the applies (its module doc)
        self._reader: ThreadPoolExecutor | None = None
        self._rsem: asyncio.Semaphore | None = None
        self._failed: StoreError | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r}, synchronous={self.synchronous!r})"

    # -- life cycle -----------------------------------------------------------

    async def open(self) -> None:
        """Opens both files, checks them, applies migrations and what a crash left in
        the journal, and starts the threads.

        Raises:
            StoreCorrupt: a file failed its integrity check, or holds less history
                than the high-water mark records, or the journal is another store's.
            StoreError: a file cannot be opened or migrated, or another hub holds
                the store (past ``lock_wait``).
        """
        if self._loop is not None:
            raise StoreError(f"{self!r} was already opened")
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._open_sync)
        except BaseException:
            self._release_sync()
            raise
        self._rsem = asyncio.Semaphore(MAX_PENDING_READS)
        self._reader = ThreadPoolExecutor(
            1,
            thread_name_prefix="duplex-store-read",
            initializer=name_thread,
            initargs=("duplex-read",),
        )
        journal = (self._jqueue, self.log_path, self._commit_journal, self._journaled)
        tables = (self._tqueue, self.path, self._commit_tables, self._tables_done)
        self._threads = [
            threading.Thread(target=self._writer, args=journal, name="duplex-journal", daemon=True),
            threading.Thread(target=self._writer, args=tables, name="duplex-tables", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    async def close(self) -> None:
        """Commits what is staged, applies the journal, stops the threads and closes
        the files.

        The last connection to each file checkpoints its log into it and removes it.
        Calling it again does nothing.
        """
        if self._closed or self._loop is None:
            self._closed = True
            return
        if self._threads and self._failed is None:
            with contextlib.suppress(StoreError):
                await self._apply_now()
                if self._deletable > self._deleted:
                    await self._journal_cleanup()
        self._closed = True
        self._jqueue.put(None)  # after everything handed over before
        self._tqueue.put(None)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        await asyncio.to_thread(self._stop_applier)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.shutdown, True)
        # Give the loop a turn so the writers' last call_soon_threadsafe is answered.
        await asyncio.sleep(0)
        if self._apply_timer is not None:
            self._apply_timer.cancel()
        self._release_sync()

    def _open_sync(self) -> None:
        with _translated(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock(self.lock_path, self.path, self._lock_wait)
            conn = self._tconn = self._connect(self.path)
            log = self._jconn = self._connect(self.log_path)
            for db, path in ((conn, self.path), (log, self.log_path)):
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"{path}: cannot use WAL mode (got {mode!r})")
                db.execute(f"PRAGMA synchronous = {self.synchronous}")
                # Past a burst the log would otherwise keep its largest size forever.
                db.execute("PRAGMA journal_size_limit = 67108864")
                self._check_integrity(db, path)
            log.executescript(_LOG_SCHEMA)
            self._check_hwm(conn, log)
            self._migrate(conn)
            row = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
            self._store_id = str(row[0])
            self._commits = int(
                conn.execute("SELECT value FROM meta WHERE key = 'commits'").fetchone()[0]
            )
            self._log_commits = self._bind_log(log)
            self._hwm_fd = os.open(self.hwm_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._write_hwm(sync=True)
            self._recover(conn, log)
            top = conn.execute("SELECT max(msg_id) FROM entries WHERE kind = 'msg'").fetchone()
            self._horizon = _time_key(_id_time(top[0]) + 1) if top[0] is not None else b""
            self._journal_id = self._deleted = self._deletable = int(
                log.execute("SELECT coalesce(max(id), 0) FROM journal").fetchone()[0]
            )
            self._rconn = self._connect(self.path)
            self._lconn = self._connect(self.path)
            for reader in (self._rconn, self._lconn):
                reader.execute("PRAGMA query_only = ON")
                # A first read opens the log and its index now, not on the first
                # message (a descriptor count taken at start would seem to leak).
                reader.execute("SELECT count(*) FROM meta").fetchone()
        self._applier = self._start_applier()

    def _start_applier(self) -> ApplierProcess:
        try:
            applier = ApplierProcess(
                self.path, self.log_path, self.synchronous, APPLIER_NICE, hold=self._lock_fd
            )
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot start the applier process: {exc}") from exc
        _name_holders(self._lock_fd, os.getpid(), applier.pid)
        return applier

    def _bind_log(self, log: sqlite3.Connection) -> int:
        """Ties a new journal to this database; refuses another database's. Returns
        the journal's commit count."""
        row = log.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        if not row[0]:
            log.execute("UPDATE meta SET value = ? WHERE key = 'store_id'", (self._store_id,))
        elif row[0] != self._store_id:
            raise StoreCorrupt(
                f"{self.log_path}: this journal belongs to another database (id {row[0]}, "
                f"{self.path.name} is {self._store_id}): its messages cannot be applied "
                "here. Put the right files together, or move the journal away to start "
                "without what it holds"
            )
        return int(log.execute("SELECT value FROM meta WHERE key = 'commits'").fetchone()[0])

    def _recover(self, conn: sqlite3.Connection, log: sqlite3.Connection) -> None:
        """Applies the journal rows a crash left, in order, then empties the journal.

        Replaying is idempotent, so a crash between the two steps only repeats it.
        """
        ids = [r[0] for r in log.execute("SELECT id FROM journal ORDER BY id")]
        if not ids:
            return
        rows = (
            log.execute("SELECT ops FROM journal WHERE id = ?", (row_id,)).fetchone()[0]
            for row_id in ids
        )
        folded = fold(rows)
        entries = len(folded[0])
        with _transaction(conn, self._commits + 1):
            write_folded(conn, folded, replay=True)
        self._commits += 1
        self._write_hwm(sync=True)
        with _transaction(log, self._log_commits + 1):
            log.execute("DELETE FROM journal")
        self._log_commits += 1
        self._write_hwm(sync=True)
        logger.info(
            "%s: applied %d journal rows (%d entries) left by an unclean stop",
            self.path,
            len(ids),
            entries,
        )

    def _connect(self, path: Path) -> sqlite3.Connection:
        # isolation_level=None: we write BEGIN/COMMIT ourselves. check_same_thread=False:
        # each connection is opened here and then used by exactly one thread.
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_integrity(self, conn: sqlite3.Connection, path: Path) -> None:
        if self._integrity_check == "off":
            return
        pragma = "quick_check" if self._integrity_check == "quick" else "integrity_check"
        rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}(20)").fetchall()]
        if rows != ["ok"]:
            detail = "; ".join(rows[:5])
            raise StoreCorrupt(
                f"{path}: the database failed its integrity check ({detail}); "
                "the hub will not serve from it: restore it from a backup"
            )

    def _check_hwm(self, conn: sqlite3.Connection, log: sqlite3.Connection) -> None:
        """Refuses a database or journal that holds fewer commits than were
        acknowledged."""
        try:
            record = self.hwm_path.read_bytes()
        except FileNotFoundError:
            return
        fields = record.rstrip(b"\n ").split(b" ")
        if fields[0] == _HWM_MAGIC_V1 and len(fields) == 4:  # before the journal's file
            fields[3:3] = [b"0"]
        ok = len(fields) == 5 and fields[0] in (_HWM_MAGIC, _HWM_MAGIC_V1)
        if ok:
            body = b" ".join(fields[:3] if fields[0] == _HWM_MAGIC_V1 else fields[:4])
            ok = fields[4] == b"%08x" % zlib.crc32(body)
        if not ok:
            raise StoreCorrupt(
                f"{self.hwm_path}: the high-water-mark file is damaged, so the database "
                "cannot be checked for lost commits; if the database is known to be "
                "good, delete this file and start again"
            )
        hwm_id, marks = fields[1].decode(), (int(fields[2]), int(fields[3]))
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        found = [("", 0), _meta(log)]
        if has_meta:
            found[0] = _meta(conn)
        for (path, kind), (db_id, db_commits), mark in zip(
            ((self.path, "database"), (self.log_path, "journal")), found, marks, strict=True
        ):
            if not mark or (db_id == hwm_id and db_commits >= mark):
                continue
            if db_id != hwm_id:
                what = (
                    "is empty" if not db_id else f"is another store's (id {db_id}, mark {hwm_id})"
                )
            else:
                what = f"holds {db_commits} committed write transactions"
            message = (
                f"{path}: the {kind}'s history is shorter than what was acknowledged: "
                f"it {what}, but {self.hwm_path.name} records {mark}. SQLite drops a "
                "write-ahead-log frame with a bad checksum and every frame after it, so a "
                "damaged log loses the last commits silently; acknowledged messages are "
                "missing. Restore the store from a backup; to serve from it anyway, "
                f"delete {self.hwm_path}"
            )
            if self.synchronous == "NORMAL" and db_id == hwm_id:
                # NORMAL accepts losing the last transactions on a power cut: expected,
                # not corruption (though damage looks the same).
                logger.warning("%s (synchronous=NORMAL: serving anyway)", message)
                continue
            raise StoreCorrupt(message)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(SCHEMA_VERSION_DDL)
        current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        migrations = load_migrations("sqlite")
        if current > len(migrations):
            raise StoreError(
                f"{self.path}: schema version {current} is newer than this duplex "
                f"(which knows up to {len(migrations)}): upgrade duplex"
            )
        for m in migrations[current:]:
            logger.info("%s: applying migration %04d_%s", self.path, m.version, m.name)
            # executescript runs in autocommit; the explicit BEGIN/COMMIT make the
            # file and its schema_version row one transaction.
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{m.sql}\n;"
                    f"INSERT INTO schema_version (version, name, applied) VALUES "
                    f"({m.version}, '{m.name}', {int(time.time() * 1000)});\nCOMMIT;"
                )
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise

    def _write_hwm(self, *, sync: bool) -> None:
        with self._hwm_lock:
            body = b"%s %s %d %d" % (
                _HWM_MAGIC,
                self._store_id.encode(),
                self._commits,
                self._log_commits,
            )
            record = b"%s %08x" % (body, zlib.crc32(body))
            # Fixed size, written at offset 0: each write replaces the whole record.
            os.pwrite(self._hwm_fd, record.ljust(_HWM_SIZE - 1) + b"\n", 0)
            self._hwm_dirty = True
        if sync:
            self._sync_hwm()

    def _sync_hwm(self) -> None:
        if not self._hwm_dirty or self._hwm_fd < 0:
            return
        self._hwm_dirty = False
        if self.synchronous == "NORMAL":
            return
        try:
            os.fdatasync(self._hwm_fd)
            self._hwm_synced = time.monotonic()
        except OSError:
            logger.exception("%s: cannot sync the high-water mark", self.hwm_path)

    def _stop_applier(self) -> None:
        applier, self._applier = self._applier, None
        if applier is not None and applier.close() != 0:
            logger.warning(
                "%s: the applier process (%d) did not end cleanly", self.path, applier.pid
            )

    def _release_sync(self) -> None:
        self._stop_applier()
        # The readers first: the last connection to close checkpoints the log into the
        # database and removes it, and that must be the writing one.
        for conn in (self._lconn, self._rconn, self._tconn, self._jconn):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._lconn = self._rconn = self._tconn = self._jconn = None
        if self._hwm_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._hwm_fd)
            self._hwm_fd = -1
        if self._lock_fd >= 0:  # last: the files are closed, the applier has ended
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1

    # -- the writer threads ---------------------------------------------------

    def _next_work(self, work: queue.SimpleQueue[T | None]) -> T | None:
        """Waits for the next item of ``work`` (None: stop). The mark is synced after a
        short idle, and at least once a second under load (see the module doc)."""
        while True:
            try:
                return work.get(timeout=_HWM_IDLE) if self._hwm_dirty else work.get()
            except queue.Empty:
                self._sync_hwm()

    def _writer(
        self,
        work: queue.SimpleQueue[T | None],
        path: Path,
        commit: Callable[[T], None],
        done: Callable[[T, StoreError | None], None],
    ) -> None:
        """A writer thread: commits each item of ``work``, then ``done`` on the loop."""
        name_thread(threading.current_thread().name)
        while (item := self._next_work(work)) is not None:
            error = self._failed or self._run(path, functools.partial(commit, item))
            if time.monotonic() - self._hwm_synced > _HWM_SYNC_INTERVAL:
                self._sync_hwm()
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(done, item, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass
        self._sync_hwm()

    def _commit_journal(self, batch: _Batch) -> None:
        conn = self._jconn
        assert conn is not None
        with _transaction(conn, self._log_commits + 1):
            if batch.journal:
                conn.execute(
                    "INSERT INTO journal (id, ops) VALUES (?, ?)", (batch.journal_id, batch.journal)
                )
            if batch.delete_upto:
                conn.execute("DELETE FROM journal WHERE id <= ?", (batch.delete_upto,))
        self._log_commits += 1
        self.commit_count += 1
        self.write_count += batch.ops
        self._write_hwm_after_commit()

    def _commit_tables(self, work: _TableWork) -> None:
        """The requests in one transaction, then the apply (in the applier process)."""
        if work.requests and not work.requested:
            self._commit_requests(work.requests)
            work.requested = True
        job = work.apply
        if job is not None:
            assert self._applier is not None
            try:
                self._applier.apply(self._commits + 1, job.journal_from, job.journal_upto)
            except ApplierGone as exc:
                # Killed (by hand, by the OOM killer) or hung: once, a new one takes
                # over. The old one may have committed this apply before it ended, so
                # the new one skips what is there already.
                logger.warning("%s: %s; starting a new one", self.path, exc)
                self._stop_applier()
                self._applier = self._start_applier()
                self._applier.apply(
                    self._commits + 1, job.journal_from, job.journal_upto, replay=True
                )
            self._commits += 1
            self.commit_count += 1
            self._write_hwm_after_commit()

    def _commit_requests(self, requests: list[_Request]) -> None:
        conn = self._tconn
        assert conn is not None
        with _transaction(conn, self._commits + 1):
            for req in requests:
                req.result, req.error = None, None
                conn.execute("SAVEPOINT request")
                try:
                    req.result = req.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO request")
                    req.error = exc
                    if isinstance(exc, sqlite3.Error):
                        try:
                            with _translated(self.path):
                                raise exc
                        except StoreError as translated:
                            req.error = translated
                conn.execute("RELEASE request")
        self._commits += 1
        self.commit_count += 1
        self.write_count += len(requests)
        self._write_hwm_after_commit()

    def _write_hwm_after_commit(self) -> None:
        try:
            self._write_hwm(sync=False)
        except OSError:
            logger.exception("%s: cannot write the high-water mark", self.hwm_path)

    def _run(self, path: Path, commit: Callable[[], None]) -> StoreError | None:
        """Runs ``commit``; on a failure that may pass, retries for RETRY_FOR seconds;
        on any other, fails the store (see the module doc) and returns why."""
        deadline = time.monotonic() + RETRY_FOR
        pause = 0.05
        while True:
            try:
                with _translated(path):
                    commit()
                return None
            except Exception as exc:
                cause = exc.__cause__ if isinstance(exc, StoreError) else exc
                if _code(cause) in _TRANSIENT and time.monotonic() < deadline:
                    logger.warning("%s: commit failed (%s); retrying", path, exc)
                    time.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
                failed = StoreError(
                    f"{path}: a commit failed, so the store accepts no more writes "
                    f"until it is reopened (which recovers from the journal): {exc}"
                )
                failed.__cause__ = cause
                logger.error("%s", failed)
                if self._failed is None:
                    self._failed = failed
                return self._failed

    # -- the loop side: journal batches -----------------------------------------

    def _stage_soon(self, batch: _Batch) -> None:
        """Something was staged in ``batch`` (the open one): arrange its handover."""
        self._last = batch
        if batch.ops >= self._max_batch:
            self._seal()
        elif not self._inflight and not self._seal_soon:
            self._seal_next()

    def _seal_next(self) -> None:
        """Seals the open batch at the end of this turn of the loop, or once
        ``commit_interval`` has passed since the last seal, whichever is later."""
        self._seal_soon = True
        assert self._loop is not None
        wait = self._sealed_at + self._commit_interval - time.monotonic()
        if wait > 0:
            self._loop.call_later(wait, self._seal_if_idle)
        else:
            self._loop.call_soon(self._seal_if_idle)

    def _seal_if_idle(self) -> None:
        self._seal_soon = False
        if not self._inflight:
            self._seal()

    def _seal(self) -> None:
        """Hands the open batch to the journal writer as one journal row."""
        batch = self._open
        if not batch.ops:
            return
        self._open = _Batch()
        self._sealed_at = time.monotonic()
        boxes = batch.boxes.values()
        batch.states = [box.state() for box in boxes]
        batch.tops = [(box, box.last_seq) for box in boxes]
        self._journal_id += 1
        batch.journal_id = self._journal_id
        if batch.entries or batch.cursors or batch.states:
            batch.journal = _journal_encoder.encode(
                (
                    batch.entries,
                    [(*key, seq, ts) for key, (seq, ts) in batch.cursors.items()],
                    batch.states,
                )
            )
        if self._deletable > self._deleted:
            batch.delete_upto = self._deletable
        self._inflight += 1
        self._jqueue.put(batch)

    def _journaled(self, batch: _Batch, error: StoreError | None) -> None:
        """On the loop: ``batch`` is in the journal (or failed); tell everyone who waits,
        and hand what is now durable on towards the tables."""
        self._inflight -= 1
        if error is None:
            for box, top in batch.tops:
                if top > box.durable:
                    box.durable = top
            if batch.delete_upto > self._deleted:
                self._deleted = batch.delete_upto
            if batch.journal:  # (a batch may carry only a deletion)
                if not self._ready_since:
                    self._ready_since = time.monotonic()
                self._ready_entries += len(batch.entries)
                for state in batch.states:
                    self._ready_boxes[state[0]] = state
                self._ready_bytes += batch.bytes
                self._ready_upto = batch.journal_id
                if not self._behind and (
                    self._ready_entries >= self._max_unapplied
                    or self._ready_bytes >= MAX_UNAPPLIED_BYTES
                ):
                    self._behind = time.monotonic()
                    logger.warning(
                        "the applier is behind: %d journal entries wait for its apply; "
                        "writes wait until it is done",
                        self._ready_entries,
                    )
        self._finish(batch, error)
        if error is not None:
            # What was staged after this batch assumed it: it cannot be committed.
            rest, self._open = self._open, _Batch()
            self._finish(rest, error)
            self._fail_waiters(error)
            return
        self._apply_if_due()
        if not self._inflight and not self._seal_soon and self._open.ops:
            self._seal_next()

    def _finish(self, batch: _Batch, error: StoreError | None) -> None:
        """Answers the callbacks of ``batch``."""
        batch.finished = True
        batch.error = error
        self._pending -= batch.ops
        if error is None:
            self._wake()
        for done in batch.done:
            try:
                done(error)
            except Exception:
                logger.exception("a store callback failed")

    def _fail_waiters(self, error: StoreError) -> None:
        waiters, self._room_waiters = self._room_waiters, collections.deque()
        waiters.extend(self._apply_waiters)
        self._apply_waiters = []
        for turn in waiters:
            if not turn.done():
                turn.set_exception(_clone(error))

    # -- the loop side: applying the journal to the tables --------------------------

    def _apply_if_due(self, *, force: bool = False) -> None:
        """Hands what the journal holds to the table writer when it is due: after
        APPLY_AFTER seconds, APPLY_ENTRIES entries or APPLY_BYTES bytes (one apply
        at a time)."""
        if self._applying is not None or not self._ready_since:
            return
        now = time.monotonic()
        if not (
            force
            or self._apply_waiters
            or self._behind
            or now - self._ready_since >= self._apply_after
            or self._ready_entries >= APPLY_ENTRIES
            or self._ready_bytes >= APPLY_BYTES
        ):
            if self._apply_timer is None and self._loop is not None:
                wait = self._ready_since + self._apply_after - now
                self._apply_timer = self._loop.call_later(wait, self._apply_due)
            return
        job = self._applying = _Apply()
        job.journal_from = self._deletable  # the last apply's journal_upto
        job.boxes = list(self._ready_boxes.values())
        # Every entry a box had in the journal at its last state is in this apply.
        job.tops = {name: state[1] for name, state in self._ready_boxes.items()}
        job.journal_upto = self._ready_upto
        job.waiters, self._apply_waiters = self._apply_waiters, []
        self._ready_entries = 0
        self._ready_boxes = {}
        self._ready_bytes = 0
        self._ready_since = 0.0
        requests, self._requests = self._requests, []
        self._tqueue.put(_TableWork(requests, job))
        if self._behind:
            logger.warning(
                "the applier's apply is done: writes waited %.1f s for it",
                time.monotonic() - self._behind,
            )
            self._behind = 0.0
            self._wake()

    def _apply_due(self) -> None:
        self._apply_timer = None
        if not self._closed and self._failed is None:
            self._apply_if_due()

    def _tables_done(self, work: _TableWork, error: StoreError | None) -> None:
        """On the loop: a table transaction committed (or failed)."""
        for req in work.requests:
            future = req.future
            if future.done():  # the caller was cancelled; the write happened anyway
                continue
            failure = req.error if work.requested else error
            if failure is not None:
                future.set_exception(_clone(failure))
            else:
                future.set_result(req.result)
        job = work.apply
        if job is None:
            return
        self._applying = None
        if error is not None:
            for waiter in job.waiters:
                if not waiter.done():
                    waiter.set_exception(_clone(error))
            self._fail_waiters(error)
            return
        self.apply_count += 1
        boxes = self._boxes
        for name, top in job.tops.items():
            box = boxes[name]
            if top > box.applied:
                del box.tail[: top - box.applied]
                box.applied = top
        for state in job.boxes:
            boxes[state[0]].saved = state  # (not forgotten: it was not clean)
        self._deletable = job.journal_upto
        self._forget_ids()
        if len(boxes) > self._box_cache:
            self._forget_boxes()
        for waiter in job.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._apply_if_due()

    def _forget_boxes(self) -> None:
        """Forgets clean mailboxes, oldest-loaded first, down to 90% of the cache
        (a tenth at a time, so that the scan is paid once per many loads)."""
        boxes = self._boxes
        excess = len(boxes) - self._box_cache * 9 // 10
        clean = (name for name, box in boxes.items() if box.clean())
        for name in list(itertools.islice(clean, excess)):
            del boxes[name]
            self.boxes_forgotten += 1

    def _forget_ids(self) -> None:
        """Forgets the oldest applied message ids past RECENT_IDS (see the module doc)."""
        ids, order = self._ids, self._id_order
        recent = self._recent_ids
        if len(ids) <= recent:
            return
        boxes = self._boxes
        far = _time_key(int(time.time() * 1000) + _FUTURE_SLACK_MS + 1)
        top = b""  # the highest id forgotten: the horizon rises past it, once
        while len(ids) > recent:
            key = order[0]
            where = ids[key]
            box = boxes.get(where[0])
            if box is not None and where[1] > box.applied:
                break  # not in the tables yet: a lookup would not find it
            order.popleft()
            del ids[key]
            msg_id = key[1]
            if msg_id >= far:
                # A clock far ahead: keep the id apart instead of raising the horizon
                # there. Past a tenth of the remembered ids of those, give up and
                # raise it.
                self._far_ids[key] = where
                if len(self._far_ids) > recent // 10:
                    top = max(top, max(k[1] for k in self._far_ids))
                    self._far_ids.clear()
            elif msg_id > top:
                top = msg_id
        if top and top >= self._horizon:
            self._horizon = _time_key(_id_time(top) + 1)

    async def _apply_now(self) -> None:
        """Waits until everything staged so far is in the tables."""
        self._check_usable()
        if self._failed is not None:
            raise _clone(self._failed)
        await self._durable()
        assert self._loop is not None
        # Up to the journal row committed last, not "until nothing is left": under a
        # steady load there is always more, and stats() would never return.
        target = self._ready_upto
        while self._deletable < target and (self._ready_since or self._applying):
            waiter: asyncio.Future[None] = self._loop.create_future()
            if self._applying is not None:
                self._applying.waiters.append(waiter)
            else:
                self._apply_waiters.append(waiter)
                self._apply_if_due(force=True)
            await waiter

    async def _journal_cleanup(self) -> None:
        """Deletes the journal rows the tables hold (at close: the journal ends empty)."""
        assert self._loop is not None
        batch = _Batch()  # no row of its own: a commit that carries the deletion
        batch.delete_upto = self._deletable
        self._journal_id += 1
        batch.journal_id = self._journal_id
        done: asyncio.Future[StoreError | None] = self._loop.create_future()
        batch.done.append(done.set_result)
        self._inflight += 1
        self._jqueue.put(batch)
        await done

    # -- the loop side: staging -----------------------------------------------

    def _takes_now(self) -> bool:
        """Whether a write can be staged now, ahead of nobody who waits for room."""
        return (
            not self._waiting
            and self._failed is None
            and not self._closed
            and bool(self._threads)
            and self._pending < MAX_PENDING_WRITES
            and not self._behind
        )

    def _box(self, name: str) -> _Box:
        box = self._boxes.get(name)
        if box is None:
            assert self._lconn is not None
            with _translated(self.path):
                row = self._lconn.execute(_LOAD_BOX, (name,)).fetchone()
            last, acked, messages, delivered = row if row else (0, 0, 0, 0)
            box = _Box(name, last, acked, messages, delivered, last, last)
            box.saved = box.state()
            self._boxes[name] = box
        return box

    def _append(
        self,
        batch: _Batch,
        box: _Box,
        kind: EntryKind,
        peer: str,
        msg_id: bytes,
        body: str,
        ts: int,
    ) -> Entry:
        seq = box.last_seq = box.last_seq + 1
        entry = Entry(box.name, seq, kind, peer, msg_id, body, ts)
        box.tail.append(entry)
        batch.entries.append(entry)
        batch.boxes[box.name] = box
        return entry

    def _find(self, sender: str, msg_id: bytes) -> Entry | None:
        """The stored message ``(sender, msg_id)``, or None (see the module doc)."""
        key = (sender, msg_id)
        where = self._ids.get(key)
        if where is None and self._far_ids:
            where = self._far_ids.get(key)
        if where is not None:
            box = self._box(where[0])
            if where[1] > box.applied:
                return box.tail[where[1] - box.applied - 1]
        elif msg_id >= self._horizon:
            return None
        assert self._lconn is not None
        with _translated(self.path):
            row = self._lconn.execute(_FIND_MESSAGE, (msg_id, sender)).fetchone()
        if row is None:
            return None
        return Entry(row[0], row[1], "msg", sender, msg_id, row[2], row[3])

    def stage_message(self, message: NewMessage) -> Stored | None:
        """Stages ``message`` and returns where it goes, without waiting (the hub's
        hot path); call :meth:`when_durable` before telling anyone.

        Returns:
            Its :class:`Stored` (the original entry for a resent id), or None when the
            store cannot take it now (full, closed or failed): then await
            :meth:`store_message`, which waits or raises.

        Raises:
            ValueError: the message id is not 16 bytes.
            StoreError: the database could not be read.
        """
        if not self._takes_now():
            return None
        return self._stage_message(message)

    def _stage_message(self, message: NewMessage) -> Stored:
        if len(message.msg_id) != 16:
            validate_batch((message,))
        batch = self._open
        original = self._find(message.sender, message.msg_id)
        batch.ops += 1
        self._pending += 1
        if original is not None:
            self._stage_soon(batch)
            return Stored(
                original,
                duplicate=True,
                delivered=original.seq <= self._box(original.user).acked_seq,
            )
        box = self._box(message.recipient)
        box.messages += 1
        batch.bytes += len(message.body)
        entry = self._append(
            batch, box, "msg", message.sender, message.msg_id, message.body, message.ts
        )
        key = (message.sender, message.msg_id)
        self._ids[key] = (box.name, entry.seq)
        self._id_order.append(key)
        self._stage_soon(batch)
        return Stored(entry)

    def stage_ack(self, user: str, device: str, upto: int, ts: int) -> list[Entry] | None:
        """Stages an ack (see :meth:`ack`) without waiting; returns the receipts it
        makes, or None when the store cannot take it now (as :meth:`stage_message`).

        Raises:
            StoreError: the database could not be read.
        """
        if not self._takes_now():
            return None
        return self._stage_ack(user, device, upto, ts)

    def _stage_ack(self, user: str, device: str, upto: int, ts: int) -> list[Entry]:
        batch = self._open
        box = self._box(user)
        upto = max(0, min(upto, box.last_seq))
        key = (user, device)
        old = batch.cursors.get(key)
        batch.cursors[key] = (upto if old is None or upto > old[0] else old[0], ts)
        batch.ops += 1
        self._pending += 1
        receipts: list[Entry] = []
        start = box.acked_seq
        if upto > start:
            if box.messages > box.delivered:
                receipts = self._deliver(batch, box, start, upto, ts)
            box.acked_seq = upto
            batch.boxes[user] = box
        self._stage_soon(batch)
        return receipts

    def _deliver(self, batch: _Batch, box: _Box, start: int, upto: int, ts: int) -> list[Entry]:
        """Marks the messages in ``(start, upto]`` of ``box`` delivered; makes receipts."""
        found: list[tuple[int, str, bytes]] = []
        if start < box.applied:  # the older part is only in the tables
            assert self._lconn is not None
            with _translated(self.path):
                found = self._lconn.execute(
                    _UNDELIVERED, (box.name, start, min(upto, box.applied))
                ).fetchall()
        first = box.applied + 1
        # (Both bounds clamped: a negative one would count from the end of the tail.)
        for entry in box.tail[max(0, start + 1 - first) : max(0, upto + 1 - first)]:
            if entry.kind == "msg":
                found.append((entry.seq, entry.peer, entry.msg_id))
        name = box.name
        receipts = [
            self._append(batch, self._box(sender), "receipt", name, msg_id, "", ts)
            for _seq, sender, msg_id in found
        ]
        box.delivered += len(found)
        return receipts

    def when_durable(self, done: _Done) -> None:
        """Calls ``done(None)`` on the loop once everything staged so far is committed,
        or ``done(error)`` if it cannot be."""
        batch = self._last
        if batch.finished:
            assert self._loop is not None
            self._loop.call_soon(done, batch.error)
        else:
            batch.done.append(done)

    async def _durable(self) -> None:
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()

        def done(error: StoreError | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(None)

        self.when_durable(done)
        await future

    async def _room_now(self) -> None:
        """Waits until a write can be staged, behind everyone who waited first; the
        caller must stage at once, with no ``await`` in between."""
        self._check_usable()
        if self._failed is not None:
            raise _clone(self._failed)
        if self._takes_now():
            return
        assert self._loop is not None
        turn: asyncio.Future[None] = self._loop.create_future()
        self._room_waiters.append(turn)
        self._waiting += 1
        try:
            await turn
        except BaseException:
            self._waiting -= 1
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._woken -= 1  # woken, then cancelled: pass the turn on
                self._wake()
            raise
        self._waiting -= 1
        self._woken -= 1
        self._check_usable()

    def _wake(self) -> None:
        """Gives waiting writers their turn, first come first served, while there is room."""
        waiters = self._room_waiters
        while waiters and self._pending + self._woken < MAX_PENDING_WRITES and not self._behind:
            turn = waiters.popleft()
            if not turn.done():  # not cancelled
                turn.set_result(None)
                self._woken += 1

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Runs ``fn`` on the table writer's connection in its next transaction (in a
        savepoint: if it raises, it alone fails) and returns its result once durable.
        Cancelling the caller does not cancel the write."""
        self._check_usable()
        if self._failed is not None:
            raise _clone(self._failed)
        assert self._loop is not None
        future: asyncio.Future[T] = self._loop.create_future()
        if not self._requests:
            self._loop.call_soon(self._flush_requests)
        self._requests.append(_Request(fn, future))
        return await future

    def _flush_requests(self) -> None:
        """Hands the requests of this turn of the loop to the table writer (an apply
        that leaves meanwhile takes them along)."""
        if self._requests:
            requests, self._requests = self._requests, []
            self._tqueue.put(_TableWork(requests, None))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_usable()
        assert self._rsem is not None and self._loop is not None
        async with self._rsem:
            return await self._loop.run_in_executor(self._reader, self._run_read, fn)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        assert self._rconn is not None
        with _translated(self.path):
            return fn(self._rconn)

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: the store is closed")
        if not self._threads:
            raise StoreError(f"{self.path}: the store is not open (await open() first)")

    # -- accounts -------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str, created: int) -> bool:
        """Creates an account. Returns False when the name is taken (nothing changes)."""

        def write(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT INTO users (name, password_hash, created) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                (name, password_hash, created),
            )
            return cur.rowcount == 1

        return await self._write(write)

    async def get_user(self, name: str) -> User | None:
        """Returns the account, or None."""

        def read(conn: sqlite3.Connection) -> User | None:
            row = conn.execute(
                "SELECT name, password_hash, created FROM users WHERE name = ?", (name,)
            ).fetchone()
            return User(row[0], row[1], row[2]) if row else None

        return await self._read(read)

    async def set_password(self, name: str, password_hash: str) -> None:
        """Replaces a password hash (nothing happens for an unknown user)."""
        sql = "UPDATE users SET password_hash = ? WHERE name = ?"
        await self._write(lambda conn: conn.execute(sql, (password_hash, name)))

    async def save_token(self, token_hash: bytes, user: str, device: str, expires: int) -> None:
        """Records a session token (only its hash) for ``user``'s ``device``.

        Raises:
            StoreError: ``user`` has no account.
        """

        def write(conn: sqlite3.Connection) -> None:
            _require_users(conn, user)
            conn.execute(
                "INSERT INTO tokens (token_hash, user, device, expires) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (token_hash) DO UPDATE SET"
                " user = excluded.user, device = excluded.device, expires = excluded.expires",
                (token_hash, user, device, expires),
            )

        await self._write(write)

    async def token_owner(self, token_hash: bytes, now: int) -> tuple[str, str] | None:
        """Returns ``(user, device)`` of a token that expires after ``now``, or None."""

        def read(conn: sqlite3.Connection) -> tuple[str, str] | None:
            row = conn.execute(
                "SELECT user, device FROM tokens WHERE token_hash = ? AND expires > ?",
                (token_hash, now),
            ).fetchone()
            return (row[0], row[1]) if row else None

        return await self._read(read)

    async def delete_token(self, token_hash: bytes) -> None:
        """Forgets a token (logout)."""
        sql = "DELETE FROM tokens WHERE token_hash = ?"
        await self._write(lambda conn: conn.execute(sql, (token_hash,)))

    # -- contacts -------------------------------------------------------------

    async def add_contact(self, owner: str, contact: str) -> bool:
        """Adds ``contact`` to ``owner``'s list. Returns False if it was there.

        Raises:
            StoreError: ``owner`` or ``contact`` has no account.
        """

        def write(conn: sqlite3.Connection) -> bool:
            _require_users(conn, owner, contact)
            cur = conn.execute(
                "INSERT INTO contacts (owner, contact) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (owner, contact),
            )
            return cur.rowcount == 1

        return await self._write(write)

    async def remove_contact(self, owner: str, contact: str) -> bool:
        """Removes ``contact`` from ``owner``'s list. Returns False if it was not there."""
        sql = "DELETE FROM contacts WHERE owner = ? AND contact = ?"
        return await self._write(lambda conn: conn.execute(sql, (owner, contact)).rowcount == 1)

    async def contacts(self, owner: str) -> list[str]:
        """Returns ``owner``'s contacts, sorted."""
        sql = "SELECT contact FROM contacts WHERE owner = ? ORDER BY contact"
        return await self._read(lambda conn: [r[0] for r in conn.execute(sql, (owner,))])

    async def watchers(self, user: str) -> list[str]:
        """Returns the users who have ``user`` as a contact, sorted."""
        sql = "SELECT owner FROM contacts WHERE contact = ? ORDER BY owner"
        return await self._read(lambda conn: [r[0] for r in conn.execute(sql, (user,))])

    # -- mailboxes ------------------------------------------------------------

    async def store_message(self, message: NewMessage) -> Stored:
        """Appends a message to its recipient's mailbox, durably, with group commit.

        Returns only after the transaction holding it is committed (fsync'd under
        ``synchronous=FULL``). A resent ``(sender, msg_id)`` returns the original entry
        with ``duplicate=True``. Cancelling the call does not cancel the write.

        Raises:
            ValueError: the message id is not 16 bytes.
            StoreError: the database failed.
        """
        validate_batch((message,))
        await self._room_now()
        stored = self._stage_message(message)
        await self._durable()
        return stored

    async def ack(self, user: str, device: str, upto: int, ts: int) -> list[Entry]:
        """Records that ``user``'s ``device`` holds every entry up to ``upto``, durably.

        Messages up to ``upto`` (capped at the mailbox's last sequence) that were not
        delivered yet are marked delivered, and one receipt per message is appended to
        its sender's mailbox, in the same transaction; acking the same range again
        creates nothing.

        Returns:
            The receipt entries created, in the order of the acked messages.
        """
        await self._room_now()
        receipts = self._stage_ack(user, device, upto, ts)
        await self._durable()
        return receipts

    async def fetch(self, user: str, after: int, limit: int) -> list[Entry]:
        """Returns up to ``limit`` committed entries of ``user``'s mailbox with
        ``seq > after``, in order: from memory what is not in the tables yet, the rest
        from the tables."""
        self._check_usable()
        out: list[Entry] = []
        limit = max(0, limit)
        while len(out) < limit:
            box = self._boxes.get(user)
            if box is not None and after >= box.applied:
                first = box.applied + 1
                for entry in box.tail[after + 1 - first : after + 1 - first + limit - len(out)]:
                    if entry.seq > box.durable:
                        break
                    out.append(entry)
                break
            want = limit - len(out)

            def read(conn: sqlite3.Connection, a: int = after, n: int = want) -> list[Entry]:
                return [
                    Entry(user, r[0], r[1], r[2], r[3], r[4], r[5])
                    for r in conn.execute(_FETCH, (user, a, n))
                ]

            rows = await self._read(read)
            out.extend(rows)
            if rows:
                after = rows[-1].seq
            if len(rows) < want:
                box = self._boxes.get(user)
                if box is None or after >= box.durable:
                    break
                # The rest is in memory, or was applied while we read: look again.
        return out

    @property
    def store_id(self) -> str:
        """Names this store: made at its creation (see ``meta`` in its first migration)."""
        return self._store_id

    async def last_seq(self, user: str) -> int:
        """Returns the highest committed sequence number in ``user``'s mailbox (0 when
        empty)."""
        self._check_usable()
        box = self._boxes.get(user)
        if box is not None:
            return box.durable

        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT last_seq FROM mailboxes WHERE mailbox = ?", (user,))
            found = row.fetchone()
            return int(found[0]) if found else 0

        value = await self._read(read)
        box = self._boxes.get(user)  # read in while we waited?
        return box.durable if box is not None else value

    async def history(self, user: str, peer: str, before: int | None, limit: int) -> list[Entry]:
        """Returns up to ``limit`` messages between ``user`` and ``peer``, newest last.

        The journal is applied first. Each direction then walks one mailbox backwards
        on its (mailbox, seq) index and stops at ``limit`` matches (there is no
        history index to keep up on every message: migration 3); a mailbox's ``ts``
        grows with its ``seq``, as the hub stamps messages in the order it stores
        them. The two directions are merged by time.
        """
        bound = (1 << 62) if before is None else before
        limit = max(0, limit)
        if not limit:
            return []
        directions = [(user, peer)] if user == peer else [(user, peer), (peer, user)]
        await self._apply_now()

        def read(conn: sqlite3.Connection) -> list[Entry]:
            conn.execute("BEGIN")  # one snapshot for both directions
            try:
                rows = [
                    row
                    for mailbox, sender in directions
                    for row in conn.execute(_HISTORY, (mailbox, sender, bound, limit))
                ]
            finally:
                conn.execute("COMMIT")
            rows.sort(key=lambda r: (r[6], r[0]))
            return [Entry(r[1], r[2], "msg", r[3], r[4], r[5], r[6]) for r in rows[-limit:]]

        return await self._read(read)

    async def stats(self) -> StoreStats:
        """Returns counts for metrics (the journal is applied first; the counts are
        kept as counters, so cheap at any size)."""
        await self._apply_now()

        def read(conn: sqlite3.Connection) -> StoreStats:
            conn.execute("BEGIN")  # one snapshot for both counts
            try:
                users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
                messages, delivered = conn.execute(
                    "SELECT coalesce(sum(messages), 0), coalesce(sum(delivered), 0) FROM mailboxes"
                ).fetchone()
            finally:
                conn.execute("COMMIT")
            return StoreStats(int(users), int(messages), int(delivered))

        return await self._read(read)


def _require_users(conn: sqlite3.Connection, *names: str) -> None:
    for name in names:
        if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
            raise _Refused(f"no such user: {name!r}")
