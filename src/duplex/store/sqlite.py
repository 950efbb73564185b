"""The embedded store: SQLite in WAL mode, one writer thread, group commit.

Durability and its price
------------------------
A message is acknowledged (``store_message`` returns) only after the transaction that
holds it is committed with ``synchronous=FULL``: in WAL mode SQLite then fsyncs the
write-ahead log before ``COMMIT`` returns, so neither a crash of the process nor a
power cut loses it. ``synchronous=NORMAL`` skips that fsync (the log is synced only
at checkpoints): still safe against a crash of the *process* (the written frames are
in the kernel's page cache), but a power cut or kernel crash can lose the last
transactions — messages the hub already acknowledged. It is several times faster
with one commit per message and roughly the same with group commit, which is why FULL
is the default (``benchmarks/store_commit.py`` gives the figures).

Group commit
------------
An fsync costs milliseconds whatever it carries, so one fsync per message would cap
the hub at a few hundred messages per second. Instead every write (``store_message``,
``ack`` and the rare account, token and contact changes) becomes a request on a queue
that one writer thread, owning the only writing connection, drains *entirely*: it runs
every queued request in ONE transaction, commits once (one fsync), then wakes all the
callers with one ``call_soon_threadsafe``. While that fsync runs, the next requests
queue up, so the batch grows with the load by itself: a lone message pays one fsync,
and a hundred concurrent ones share one. The queue is bounded by
:data:`MAX_PENDING_WRITES` requests (an :class:`asyncio.Semaphore` taken before a
request is queued and given back when it is answered): above it, callers wait in
``await``, which is the backpressure the hub passes on to its connections.

A request that fails on its own (e.g. a contact naming an unknown user) is refused
before it changes anything and does not disturb the others. If the transaction fails
on a constraint or a bug, it is rolled back and its requests are retried one per
transaction, so one bad request cannot fail a hundred good ones; a failure of the
database itself (busy past :data:`BUSY_TIMEOUT`, disk full) fails the batch at once. An I/O error
(``SQLITE_IOERR``, e.g. a failed fsync) is not retried: after a failed fsync the
kernel may have dropped the dirty pages, so the store stops accepting writes until
it is reopened (PostgreSQL reasons the same way and panics).

Reads
-----
Reads run on a second connection on a reader thread. In WAL mode a reader sees the
last committed snapshot and never waits for the writer, so a ``fetch`` at login is
not queued behind a group commit (measured on this machine, 200 concurrent senders
in flight: a ``fetch`` of 20 entries took 0.3 ms at p50 and 2.5-6 ms at p99 on the
reader thread, against 6 ms at p50 and 21 ms at p99 when it shared the writer thread
and waited for the batch ahead of it). A write is visible to every read that starts
after the write returned.

Integrity
---------
At :meth:`SqliteStore.open`, ``PRAGMA quick_check`` (structure of every page, O(size
of the file)) must answer ``ok``, and a damaged file (``SQLITE_CORRUPT``,
``SQLITE_NOTADB``) is refused with :class:`~duplex.errors.StoreCorrupt`.

That is not enough for the write-ahead log: SQLite ignores a WAL frame whose checksum
is wrong *and every frame after it*, silently, so one flipped byte near the end of the
log makes the last acknowledged commits vanish while the database still passes every
check. So the store keeps a high-water mark in ``<db>.hwm`` next to the database: the
number of write transactions committed (also counted in the database, in ``meta``),
written after each commit (one ``pwrite`` of 96 bytes per group commit, not per
message) and fsync'd when the writer goes idle and at least once a second under
sustained load. At open, a database holding fewer commits than the file records — or
none, or another database's id — is refused with ``StoreCorrupt`` ("history is shorter
than what was acknowledged") rather than served. Being written after the commit, the
mark can lag behind the database but never run ahead of it, so it gives no false alarm.

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
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

from duplex.errors import StoreCorrupt, StoreError, map_exceptions
from duplex.store.base import Entry, EntryKind, NewMessage, Stored, StoreStats, User, validate_batch
from duplex.store.migrate import SCHEMA_VERSION_DDL, load_migrations

__all__ = [
    "BUSY_TIMEOUT",
    "MAX_PENDING_READS",
    "MAX_PENDING_WRITES",
    "SqliteStore",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_PENDING_WRITES: Final = 8192
"""Write requests queued for the writer at most; more callers wait in ``await``.

One transaction takes all of them: 8192 messages of a few hundred bytes are a few MB
of log, committed in well under a second, while a hub with thousands of sending
connections still finds room for every in-flight message."""

MAX_PENDING_READS: Final = 1024
"""Reads queued for the reader thread at most; more callers wait in ``await``."""

BUSY_TIMEOUT: Final = 5.0
"""Seconds a connection waits for a lock held by another process (a backup tool, the
``sqlite3`` shell) before failing, rather than failing at once."""

_HWM_SYNC_INTERVAL = 1.0
_HWM_MAGIC = b"duplex-hwm1"
_HWM_SIZE = 96
_SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")

# Primary result codes (the low byte of an extended code).
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
# Codes one request can cause by itself (its data); only these make a failed batch
# retry its requests one by one. BUSY, LOCKED, FULL, IOERR, CORRUPT... would fail each
# retry the same way, and BUSY after waiting BUSY_TIMEOUT each time.
_SQLITE_REQUEST_CODES = frozenset({18, 19, 20, 25})  # TOOBIG, CONSTRAINT, MISMATCH, RANGE
_SQLITE_NOTADB = 26

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


@dataclasses.dataclass(slots=True)
class _Box:
    """A mailbox row as the current transaction sees it.

    ``messages`` and ``delivered`` are this transaction's additions to the row's
    counters; ``undelivered`` is the mailbox's count of messages not yet delivered
    (all above ``acked_seq``), with this transaction's changes.
    """

    last_seq: int
    acked_seq: int
    undelivered: int = 0
    messages: int = 0
    delivered: int = 0
    dirty: bool = False


_INSERT_ENTRY = (
    "INSERT INTO entries (mailbox, seq, kind, peer, msg_id, body, ts) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_BOX = (
    "INSERT INTO mailboxes (mailbox, last_seq, acked_seq, messages, delivered)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (mailbox) DO UPDATE SET"
    " last_seq = excluded.last_seq, acked_seq = excluded.acked_seq,"
    " messages = messages + excluded.messages, delivered = delivered + excluded.delivered"
)
# The CTE form makes SQLite probe entries_msg_id once per key (an IN list of row
# values would scan instead).
_FIND_MESSAGES = (
    "WITH k(sender, msg_id) AS (VALUES {})"
    " SELECT e.peer, e.msg_id, e.mailbox, e.seq, e.body, e.ts, e.delivered"
    " FROM k JOIN entries e ON e.kind = 'msg' AND e.peer = k.sender AND e.msg_id = k.msg_id"
)
_UPSERT_CURSOR = (
    "INSERT INTO cursors (mailbox, device, seq, ts) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (mailbox, device) DO UPDATE SET"
    " seq = max(seq, excluded.seq), ts = excluded.ts"
)
_LOAD_BOXES = (
    "SELECT mailbox, last_seq, acked_seq, messages - delivered FROM mailboxes WHERE mailbox IN ({})"
)
# One direction of a conversation: newest first on UNIQUE (mailbox, seq), no sort.
_HISTORY = (
    "SELECT id, mailbox, seq, peer, msg_id, body, ts FROM entries"
    " WHERE mailbox = ? AND kind = 'msg' AND peer = ? AND ts < ? ORDER BY seq DESC LIMIT ?"
)
# Host parameters per statement, below SQLite's limit of 32766.
_CHUNK = 16000


class _Txn:
    """The state of one group-commit transaction, on the writer thread only.

    Mailbox counters and the devices' cursors are read or written once per
    transaction; new entries are buffered and inserted with one ``executemany`` at the
    end, or earlier when an ack must see a message still in the buffer
    (``unflushed`` names the mailboxes holding one): each statement costs a few
    microseconds of Python and SQLite however little it does.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.boxes: dict[str, _Box] = {}
        self.rows: list[tuple[str, int, str, str, bytes, str, int]] = []
        self.unflushed: set[str] = set()
        self.cursors: dict[tuple[str, str], tuple[int, int]] = {}
        self.new: dict[tuple[str, bytes], Entry] = {}
        self.acked: set[tuple[str, bytes]] = set()
        self.existing: dict[tuple[str, bytes], tuple[Any, ...]] = {}

    def prefetch(self, messages: list[NewMessage]) -> None:
        """Looks up every message's duplicate and every recipient's mailbox at once.

        A few set-based statements per batch instead of two per message: the
        writer's Python work (which holds the GIL the hub's event loop needs) then
        hardly grows with the batch, while SQLite's own work runs without the GIL.
        """
        for i in range(0, len(messages), _CHUNK // 2):
            chunk = messages[i : i + _CHUNK // 2]
            values = ",".join(["(?,?)"] * len(chunk))
            args = [x for m in chunk for x in (m.sender, m.msg_id)]
            for row in self.conn.execute(_FIND_MESSAGES.format(values), args):
                self.existing[(row[0], row[1])] = row
        names = list({m.recipient for m in messages} - self.boxes.keys())
        for i in range(0, len(names), _CHUNK):
            part = names[i : i + _CHUNK]
            marks = ",".join("?" * len(part))
            for row in self.conn.execute(_LOAD_BOXES.format(marks), part):
                self.boxes[row[0]] = _Box(row[1], row[2], row[3])
            for name in part:
                self.boxes.setdefault(name, _Box(0, 0))

    def box(self, name: str) -> _Box:
        box = self.boxes.get(name)
        if box is None:
            row = self.conn.execute(_LOAD_BOXES.format("?"), (name,)).fetchone()
            box = _Box(row[1], row[2], row[3]) if row else _Box(0, 0)
            self.boxes[name] = box
        return box

    def append(
        self, mailbox: str, kind: EntryKind, peer: str, msg_id: bytes, body: str, ts: int
    ) -> Entry:
        box = self.box(mailbox)
        box.last_seq += 1
        box.dirty = True
        if kind == "msg":
            box.messages += 1
            box.undelivered += 1
            self.unflushed.add(mailbox)
        self.rows.append((mailbox, box.last_seq, kind, peer, msg_id, body, ts))
        return Entry(mailbox, box.last_seq, kind, peer, msg_id, body, ts)

    def flush(self) -> None:
        if self.rows:
            self.conn.executemany(_INSERT_ENTRY, self.rows)
            self.rows.clear()
            self.unflushed.clear()

    def set_cursor(self, mailbox: str, device: str, seq: int, ts: int) -> None:
        key = (mailbox, device)
        old = self.cursors.get(key)
        self.cursors[key] = (seq if old is None else max(seq, old[0]), ts)

    def finish(self, commits: int) -> None:
        self.flush()
        dirty = [
            (name, b.last_seq, b.acked_seq, b.messages, b.delivered)
            for name, b in self.boxes.items()
            if b.dirty
        ]
        if dirty:
            self.conn.executemany(_UPSERT_BOX, dirty)
        if self.cursors:
            cursors = [(*key, seq, ts) for key, (seq, ts) in self.cursors.items()]
            self.conn.executemany(_UPSERT_CURSOR, cursors)
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'commits'", (commits,))


def _apply_store(txn: _Txn, m: NewMessage) -> Stored:
    key = (m.sender, m.msg_id)
    entry = txn.new.get(key)
    if entry is not None:  # the same message twice in one batch
        return Stored(entry, duplicate=True, delivered=key in txn.acked)
    row = txn.existing.get(key)
    if row is not None:
        original = Entry(row[2], row[3], "msg", m.sender, m.msg_id, row[4], row[5])
        return Stored(original, duplicate=True, delivered=row[6] is not None or key in txn.acked)
    entry = txn.append(m.recipient, "msg", m.sender, m.msg_id, m.body, m.ts)
    txn.new[key] = entry
    return Stored(entry)


def _apply_ack(txn: _Txn, user: str, device: str, upto: int, ts: int) -> list[Entry]:
    if user in txn.unflushed:  # the UPDATE below reads this mailbox's messages
        txn.flush()
    conn = txn.conn
    box = txn.box(user)
    upto = max(0, min(upto, box.last_seq))
    txn.set_cursor(user, device, upto, ts)
    if upto <= box.acked_seq:
        return []
    # With nothing undelivered (a sender acking its receipts, typically) the statement
    # would find no message in the range: skip it.
    rows = (
        conn.execute(
            "UPDATE entries SET delivered = ? WHERE mailbox = ? AND seq > ? AND seq <= ?"
            " AND kind = 'msg' AND delivered IS NULL RETURNING seq, peer, msg_id",
            (ts, user, box.acked_seq, upto),
        ).fetchall()
        if box.undelivered > 0
        else []
    )
    box.acked_seq = upto
    box.delivered += len(rows)
    box.undelivered -= len(rows)
    box.dirty = True
    receipts = []
    # RETURNING gives no order guarantee; receipts follow the recipient's order.
    for _seq, sender, msg_id in sorted(rows):
        txn.acked.add((sender, msg_id))
        receipts.append(txn.append(sender, "receipt", user, msg_id, "", ts))
    return receipts


def _apply_create_user(txn: _Txn, name: str, password_hash: str, created: int) -> bool:
    cur = txn.conn.execute(
        "INSERT INTO users (name, password_hash, created) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO NOTHING",
        (name, password_hash, created),
    )
    return cur.rowcount == 1


def _require_users(txn: _Txn, *names: str) -> None:
    for name in names:
        if txn.conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
            raise _Refused(f"no such user: {name!r}")


def _apply_add_contact(txn: _Txn, owner: str, contact: str) -> bool:
    _require_users(txn, owner, contact)
    cur = txn.conn.execute(
        "INSERT INTO contacts (owner, contact) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (owner, contact),
    )
    return cur.rowcount == 1


def _apply_save_token(txn: _Txn, token_hash: bytes, user: str, device: str, expires: int) -> None:
    _require_users(txn, user)
    txn.conn.execute(
        "INSERT INTO tokens (token_hash, user, device, expires) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (token_hash) DO UPDATE SET"
        " user = excluded.user, device = excluded.device, expires = excluded.expires",
        (token_hash, user, device, expires),
    )


def _apply_sql(txn: _Txn, sql: str, args: tuple[Any, ...]) -> int:
    return txn.conn.execute(sql, args).rowcount


class _Request:
    __slots__ = ("error", "fn", "future", "message", "result")

    def __init__(
        self,
        fn: Callable[[_Txn], Any],
        future: asyncio.Future[Any],
        message: NewMessage | None = None,
    ) -> None:
        self.fn = fn
        self.future = future
        self.message = message  # set for store_message, so the batch can prefetch
        self.result: Any = None
        self.error: BaseException | None = None


class SqliteStore:
    """The :class:`~duplex.store.base.Store` on one SQLite file (see the module doc).

    Use it from one event loop, the one that awaited :meth:`open`.

    Args:
        path: the database file; its folder is created if missing. ``<path>.hwm``
            beside it holds the high-water mark, and SQLite keeps ``<path>-wal`` and
            ``<path>-shm`` there while the store is open.
        synchronous: ``"FULL"`` (default: fsync before every commit returns),
            ``"EXTRA"``, or ``"NORMAL"`` (faster; can lose the last acknowledged
            transactions on a power cut, never on a process crash).
        max_batch: the most write requests one transaction takes. The default takes
            everything queued; 1 gives one commit per request (for benchmarks).
        integrity_check: ``"quick"`` (``PRAGMA quick_check``, default), ``"full"``
            (``PRAGMA integrity_check``, also cross-checks every index: slower) or
            ``"off"``.

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
    ) -> None:
        synchronous = synchronous.upper()
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, not {synchronous!r}")
        if integrity_check not in ("quick", "full", "off"):
            raise ValueError(f"integrity_check must be quick, full or off: {integrity_check!r}")
        self.path = Path(path)
        self.hwm_path = self.path.with_name(self.path.name + ".hwm")
        self.synchronous = synchronous
        self._max_batch = max(1, min(max_batch, MAX_PENDING_WRITES))
        self._integrity_check = integrity_check
        self.commit_count = 0
        """Write transactions committed since :meth:`open` (one per group commit)."""
        self.write_count = 0
        """Write requests committed since :meth:`open` (messages, acks, ...)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._hwm_fd = -1
        self._store_id = ""
        self._commits = 0  # the database's total, as in meta
        self._hwm_synced = 0.0
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._writer: threading.Thread | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._pending = 0  # write requests queued or running (bounded by MAX_PENDING_WRITES)
        self._idle = False  # the writer sleeps on _cond (set and read under it)
        self._room: asyncio.Event | None = None  # set while _pending is below the bound
        self._rsem: asyncio.Semaphore | None = None
        self._failed: StoreError | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r}, synchronous={self.synchronous!r})"

    # -- life cycle -----------------------------------------------------------

    async def open(self) -> None:
        """Opens the database, checks it, applies migrations and starts the threads.

        Raises:
            StoreCorrupt: the file failed its integrity check, or holds less history
                than its high-water mark records.
            StoreError: the file cannot be opened or migrated.
        """
        if self._loop is not None:
            raise StoreError(f"{self!r} was already opened")
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._open_sync)
        except BaseException:
            self._release_sync()
            raise
        self._room = asyncio.Event()
        self._room.set()
        self._rsem = asyncio.Semaphore(MAX_PENDING_READS)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="duplex-store-read")
        self._writer = threading.Thread(
            target=self._writer_main, name="duplex-store-write", daemon=True
        )
        self._writer.start()

    async def close(self) -> None:
        """Commits the queued writes, stops the threads and closes the files.

        The last connection to close checkpoints the log into the database and removes
        it. Calling it again does nothing.
        """
        if self._closed or self._loop is None:
            self._closed = True
            return
        self._closed = True
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.shutdown, True)
        # Give the loop a turn so the writer's last call_soon_threadsafe is answered.
        await asyncio.sleep(0)
        self._release_sync()

    def _open_sync(self) -> None:
        with _translated(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._wconn = self._connect()
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # Past a burst the log would otherwise keep its largest size forever.
            conn.execute("PRAGMA journal_size_limit = 67108864")
            self._check_integrity(conn)
            self._check_hwm(conn)
            self._migrate(conn)
            row = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
            self._store_id = str(row[0])
            self._commits = int(
                conn.execute("SELECT value FROM meta WHERE key = 'commits'").fetchone()[0]
            )
            self._hwm_fd = os.open(self.hwm_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._write_hwm(sync=True)
            self._rconn = self._connect()
            self._rconn.execute("PRAGMA query_only = ON")

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we write BEGIN/COMMIT ourselves. check_same_thread=False:
        # each connection is opened here and then used by exactly one thread.
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        if self._integrity_check == "off":
            return
        pragma = "quick_check" if self._integrity_check == "quick" else "integrity_check"
        rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}(20)").fetchall()]
        if rows != ["ok"]:
            detail = "; ".join(rows[:5])
            raise StoreCorrupt(
                f"{self.path}: the database failed its integrity check ({detail}); "
                "the hub will not serve from it: restore it from a backup"
            )

    def _check_hwm(self, conn: sqlite3.Connection) -> None:
        """Refuses a database that holds fewer commits than were acknowledged."""
        try:
            record = self.hwm_path.read_bytes()
        except FileNotFoundError:
            return
        fields = record.rstrip(b"\n ").split(b" ")
        ok = len(fields) == 4 and fields[0] == _HWM_MAGIC
        if ok:
            body = b" ".join(fields[:3])
            ok = fields[3] == b"%08x" % zlib.crc32(body)
        if not ok:
            raise StoreCorrupt(
                f"{self.hwm_path}: the high-water-mark file is damaged, so the database "
                "cannot be checked for lost commits; if the database is known to be "
                "good, delete this file and start again"
            )
        hwm_id, hwm_commits = fields[1].decode(), int(fields[2])
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        db_id, db_commits = "", 0
        if has_meta:
            db_id = str(conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0])
            db_commits = int(
                conn.execute("SELECT value FROM meta WHERE key = 'commits'").fetchone()[0]
            )
        if db_id == hwm_id and db_commits >= hwm_commits:
            return
        if db_id != hwm_id:
            what = "is empty" if not db_id else f"is another database (id {db_id}, mark {hwm_id})"
        else:
            what = f"holds {db_commits} committed write transactions"
        message = (
            f"{self.path}: the database's history is shorter than what was acknowledged: "
            f"it {what}, but {self.hwm_path.name} records {hwm_commits}. SQLite drops a "
            "write-ahead-log frame with a bad checksum and every frame after it, so a "
            "damaged log loses the last commits silently; acknowledged messages are "
            "missing. Restore the database from a backup; to serve from it anyway, "
            f"delete {self.hwm_path}"
        )
        if self.synchronous == "NORMAL" and db_id == hwm_id:
            # NORMAL accepts losing the last transactions on a power cut: expected, not
            # corruption (though damage looks the same).
            logger.warning("%s (synchronous=NORMAL: serving anyway)", message)
            return
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
        body = b"%s %s %d" % (_HWM_MAGIC, self._store_id.encode(), self._commits)
        record = b"%s %08x" % (body, zlib.crc32(body))
        # Fixed size, written at offset 0: each write replaces the whole record.
        os.pwrite(self._hwm_fd, record.ljust(_HWM_SIZE - 1) + b"\n", 0)
        if sync and self.synchronous != "NORMAL":
            os.fdatasync(self._hwm_fd)
            self._hwm_synced = time.monotonic()

    def _release_sync(self) -> None:
        # The reader first: the last connection to close checkpoints the log into the
        # database and removes it, and that must be the writing one.
        for conn in (self._rconn, self._wconn):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._rconn = self._wconn = None
        if self._hwm_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._hwm_fd)
            self._hwm_fd = -1

    # -- the writer thread ----------------------------------------------------

    def _writer_main(self) -> None:
        try:
            while True:
                with self._cond:
                    self._idle = True
                    while not self._queue and not self._stopping:
                        self._cond.wait()
                    self._idle = False
                    if not self._queue:
                        break  # stopping, and everything queued is done
                # Producers append without the lock: take requests one popleft at a
                # time (atomic), never list() then clear(), which could drop one.
                batch: list[_Request] = []
                queue = self._queue
                while queue and len(batch) < self._max_batch:
                    batch.append(queue.popleft())
                self._run_batch(batch)
                self._answer(batch)
                if (
                    self._hwm_fd >= 0
                    and self.synchronous != "NORMAL"
                    and (
                        not self._queue or time.monotonic() - self._hwm_synced > _HWM_SYNC_INTERVAL
                    )
                ):
                    try:
                        os.fdatasync(self._hwm_fd)
                        self._hwm_synced = time.monotonic()
                    except OSError:
                        logger.exception("%s: cannot sync the high-water mark", self.hwm_path)
        except BaseException as exc:  # a bug: fail everything rather than hang callers
            logger.exception("%s: writer thread failed", self.path)
            self._failed = StoreError(f"{self.path}: the writer thread failed: {exc!r}")
            with self._cond:
                rest = list(self._queue)
                self._queue.clear()
            for req in rest:
                req.error = self._failed
            self._answer(rest)

    def _run_batch(self, batch: list[_Request]) -> None:
        if self._failed is not None:
            for req in batch:
                req.error = self._failed
            return
        conn = self._wconn
        assert conn is not None
        try:
            with _translated(self.path):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    txn = _Txn(conn)
                    txn.prefetch([r.message for r in batch if r.message is not None])
                    for req in batch:
                        try:
                            req.result = req.fn(txn)
                        except _Refused as exc:
                            req.error = StoreError(*exc.args)
                    txn.finish(self._commits + 1)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, StoreError) else exc
            code = _code(cause)
            if code == _SQLITE_IOERR:
                self._failed = StoreError(
                    f"{self.path}: I/O error, the store accepts no more writes until it "
                    f"is reopened: {cause}"
                )
                self._failed.__cause__ = cause
                logger.error("%s", self._failed)
            own = code in _SQLITE_REQUEST_CODES or not isinstance(cause, sqlite3.Error | OSError)
            if len(batch) > 1 and own:
                logger.warning("%s: group commit failed (%s); retrying one by one", self.path, exc)
                for req in batch:
                    req.result, req.error = None, None
                    self._run_batch([req])
                return
            for req in batch:
                req.result, req.error = None, exc
            return
        self._commits += 1
        self.commit_count += 1
        self.write_count += len(batch)
        try:
            self._write_hwm(sync=False)
        except OSError:
            logger.exception("%s: cannot write the high-water mark", self.hwm_path)

    def _answer(self, batch: list[_Request]) -> None:
        if not batch:
            return
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._resolve, batch)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _resolve(self, batch: list[_Request]) -> None:
        assert self._room is not None
        self._pending -= len(batch)
        if self._pending < MAX_PENDING_WRITES:
            self._room.set()
        for req in batch:
            future = req.future
            if future.done():  # the caller was cancelled; the write happened anyway
                continue
            if req.error is not None:
                future.set_exception(_clone(req.error))
            else:
                future.set_result(req.result)

    async def _write(self, fn: Callable[[_Txn], T], message: NewMessage | None = None) -> T:
        self._check_usable()
        assert self._room is not None
        if self._failed is not None:
            raise _clone(self._failed)
        while self._pending >= MAX_PENDING_WRITES:
            self._room.clear()
            await self._room.wait()
        # Cancelling the caller from here on does not cancel the write: it is queued
        # and will be committed; resending is safe because sends are idempotent.
        return await self._submit(fn, message)

    def _submit(
        self, fn: Callable[[_Txn], T], message: NewMessage | None = None
    ) -> asyncio.Future[T]:
        assert self._loop is not None
        self._pending += 1
        future: asyncio.Future[T] = self._loop.create_future()
        # deque.append is atomic; the lock is taken only to wake a writer that sleeps.
        # (The writer sets _idle under the lock *before* it looks at the queue, so an
        # append it did not see is always followed by a notify it will get.)
        self._queue.append(_Request(fn, future, message))
        if self._idle:
            with self._cond:
                self._cond.notify()
        return future

    def submit_message(self, message: NewMessage) -> asyncio.Future[Stored] | None:
        """:meth:`store_message` without a coroutine, for the hub's hot path.

        Queues the message at once and returns the future of its :class:`Stored`, or
        None when the store cannot take it now (the queue is full, or the store is
        closed or failed): then await :meth:`store_message`, which waits or raises.
        """
        if not self._takes_now():
            return None
        validate_batch((message,))
        return self._submit(lambda txn: _apply_store(txn, message), message)

    def submit_ack(
        self, user: str, device: str, upto: int, ts: int
    ) -> asyncio.Future[list[Entry]] | None:
        """:meth:`ack` without a coroutine, for the hub's hot path (see :meth:`submit_message`)."""
        if not self._takes_now():
            return None
        return self._submit(lambda txn: _apply_ack(txn, user, device, upto, ts))

    def _takes_now(self) -> bool:
        """Whether a write can be queued without waiting (the ``submit_*`` methods)."""
        return not self._closed and self._failed is None and self._pending < MAX_PENDING_WRITES

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
        if self._writer is None:
            raise StoreError(f"{self.path}: the store is not open (await open() first)")

    # -- accounts -------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str, created: int) -> bool:
        """Creates an account. Returns False when the name is taken (nothing changes)."""
        return await self._write(lambda txn: _apply_create_user(txn, name, password_hash, created))

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
        await self._write(lambda txn: _apply_sql(txn, sql, (password_hash, name)))

    async def save_token(self, token_hash: bytes, user: str, device: str, expires: int) -> None:
        """Records a session token (only its hash) for ``user``'s ``device``.

        Raises:
            StoreError: ``user`` has no account.
        """
        await self._write(lambda txn: _apply_save_token(txn, token_hash, user, device, expires))

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
        await self._write(lambda txn: _apply_sql(txn, sql, (token_hash,)))

    # -- contacts -------------------------------------------------------------

    async def add_contact(self, owner: str, contact: str) -> bool:
        """Adds ``contact`` to ``owner``'s list. Returns False if it was there.

        Raises:
            StoreError: ``owner`` or ``contact`` has no account.
        """
        return await self._write(lambda txn: _apply_add_contact(txn, owner, contact))

    async def remove_contact(self, owner: str, contact: str) -> bool:
        """Removes ``contact`` from ``owner``'s list. Returns False if it was not there."""
        sql = "DELETE FROM contacts WHERE owner = ? AND contact = ?"
        return await self._write(lambda txn: _apply_sql(txn, sql, (owner, contact)) == 1)

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
        with ``duplicate=True``.

        Raises:
            ValueError: the message id is not 16 bytes.
            StoreError: the database failed.
        """
        validate_batch((message,))
        return await self._write(lambda txn: _apply_store(txn, message), message)

    async def fetch(self, user: str, after: int, limit: int) -> list[Entry]:
        """Returns up to ``limit`` entries of ``user``'s mailbox with ``seq > after``, in order."""
        sql = (
            "SELECT seq, kind, peer, msg_id, body, ts FROM entries"
            " WHERE mailbox = ? AND seq > ? ORDER BY seq LIMIT ?"
        )
        return await self._read(
            lambda conn: [
                Entry(user, r[0], r[1], r[2], r[3], r[4], r[5])
                for r in conn.execute(sql, (user, after, max(0, limit)))
            ]
        )

    async def last_seq(self, user: str) -> int:
        """Returns the highest sequence number in ``user``'s mailbox (0 when empty)."""

        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT last_seq FROM mailboxes WHERE mailbox = ?", (user,))
            found = row.fetchone()
            return int(found[0]) if found else 0

        return await self._read(read)

    async def ack(self, user: str, device: str, upto: int, ts: int) -> list[Entry]:
        """Records that ``user``'s ``device`` holds every entry up to ``upto``, durably.

        Messages up to ``upto`` (capped at the mailbox's last sequence) that were not
        delivered yet are marked delivered, and one receipt per message is appended to
        its sender's mailbox, in the same transaction; acking the same range again
        creates nothing.

        Returns:
            The receipt entries created, in the order of the acked messages.
        """
        return await self._write(lambda txn: _apply_ack(txn, user, device, upto, ts))

    async def history(self, user: str, peer: str, before: int | None, limit: int) -> list[Entry]:
        """Returns up to ``limit`` messages between ``user`` and ``peer``, newest last.

        Each direction walks one mailbox backwards on its (mailbox, seq) index and
        stops at ``limit`` matches (there is no history index to keep up on every
        message: migration 3); a mailbox's ``ts`` grows with its ``seq``, as the hub
        stamps messages in the order it stores them. The two directions are merged by
        time.
        """
        bound = (1 << 62) if before is None else before
        limit = max(0, limit)
        directions = [(user, peer)] if user == peer else [(user, peer), (peer, user)]

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

        return await self._read(read) if limit else []

    async def stats(self) -> StoreStats:
        """Returns counts for metrics (kept as counters, so cheap at any size)."""

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
