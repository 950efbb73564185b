"""The cluster store: PostgreSQL through asyncpg, with group commit.

Same tables, migrations and meaning as the SQLite store (read
:mod:`duplex.store.sqlite` and ``migrations/postgres/0001_initial.sql``); what differs
is how several hub nodes writing at once are kept consistent.

Durable before acknowledged
    Every session runs with ``synchronous_commit = on``, forced by the store rather
    than left to the server's configuration: ``COMMIT`` returns after the WAL record is
    flushed (and, with synchronous replication, after the standby has it).

Group commit
    Each commit is a WAL flush, so this store batches like the SQLite one: requests go
    to a queue bounded by :data:`MAX_PENDING_WRITES`, and one batching task per store
    takes everything queued and runs it as ONE transaction with a fixed number of
    set-based statements (arrays through ``unnest``), whatever the batch size. While
    that transaction commits, the next batch gathers.

Sequences without gaps across nodes
    A batch first locks, in name order, the ``mailboxes`` rows it appends to (``SELECT
    ... ORDER BY mailbox FOR UPDATE``); each new entry takes ``last_seq + 1`` under
    that lock, and ``last_seq`` is written back in the same transaction, so two nodes
    appending to one mailbox take turns and never reuse or skip a number. Receipts go
    to the senders' mailboxes, known only after the acked range is read, so those are
    locked in a second step; two batches can then wait on each other, which PostgreSQL
    detects (after ``deadlock_timeout``) by aborting one: that batch is simply run
    again. The duplicate check runs after the lock on the recipient's mailbox, so two
    nodes given the same resent message store it once.

Idempotent ids
    ``(sender, msg_id)`` is unique (a partial unique index on message entries); a
    resend returns the original entry.

Migrations
    Applied at :meth:`PostgresStore.open` under ``pg_advisory_lock``, so nodes that
    start together apply each file exactly once: the others wait, then find it done.

Errors of asyncpg, PostgreSQL and the network are raised as
:class:`~duplex.errors.StoreError`. A batch that fails for a reason other than the
connection is rolled back and its requests retried one per transaction, so one bad
request does not fail its neighbours.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import asyncpg

from duplex.errors import StoreError, map_exceptions
from duplex.store.base import Entry, EntryKind, NewMessage, Stored, StoreStats, User, validate_batch
from duplex.store.migrate import SCHEMA_VERSION_DDL, load_migrations

__all__ = ["MAX_PENDING_WRITES", "PostgresStore"]

logger = logging.getLogger(__name__)

MAX_PENDING_WRITES: Final = 8192
"""Write requests queued for the batching task at most; more callers wait in ``await``."""

_DEADLOCK_RETRIES = 5
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_MAPPING: dict[type[BaseException], type[StoreError]] = {
    asyncpg.PostgresError: StoreError,
    asyncpg.InterfaceError: StoreError,
    OSError: StoreError,
    asyncio.TimeoutError: StoreError,
}
# Failures of the connection rather than of the batch: retrying requests one by one on
# the same broken path would only repeat the failure.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    OSError,
    asyncio.TimeoutError,
)
_RETRYABLE: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        with map_exceptions(_MAPPING):
            yield
    except StoreError as exc:
        if exc.__cause__ is None:
            raise
        cause = exc.__cause__
        raise StoreError(f"PostgreSQL store: {type(cause).__name__}: {cause}") from cause


@dataclasses.dataclass(slots=True)
class _Box:
    last_seq: int
    acked_seq: int
    messages: int = 0
    delivered: int = 0
    dirty: bool = False


Op = Callable[[Any], Awaitable[Any]]


@dataclasses.dataclass(slots=True, eq=False)
class _Request:
    future: asyncio.Future[Any]
    message: NewMessage | None = None
    ack: tuple[str, str, int, int] | None = None
    op: Op | None = None
    result: Any = None
    error: BaseException | None = None


_ENSURE_BOXES = "INSERT INTO mailboxes (mailbox) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"
_LOCK_BOXES = (
    "SELECT mailbox, last_seq, acked_seq FROM mailboxes"
    " WHERE mailbox = ANY($1::text[]) ORDER BY mailbox FOR UPDATE"
)
_FIND_MESSAGES = (
    "SELECT e.peer, e.msg_id, e.mailbox, e.seq, e.body, e.ts, e.delivered IS NOT NULL"
    " FROM unnest($1::text[], $2::bytea[]) AS k(sender, msg_id)"
    " JOIN entries e ON e.kind = 'msg' AND e.peer = k.sender AND e.msg_id = k.msg_id"
)
_MARK_DELIVERED = (
    "UPDATE entries AS e SET delivered = r.ts"
    " FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS r(mailbox, lo, hi, ts)"
    " WHERE e.mailbox = r.mailbox AND e.seq > r.lo AND e.seq <= r.hi"
    " AND e.kind = 'msg' AND e.delivered IS NULL"
    " RETURNING e.mailbox, e.seq, e.peer, e.msg_id"
)
# The senders whose mailboxes this batch's acks will append receipts to. Read without
# a lock, before any lock is taken: an ack never reaches past entries that are already
# committed, so the set can only be a superset of what the locked pass will touch.
_ACK_SENDERS = (
    "SELECT DISTINCT e.peer"
    " FROM unnest($1::text[], $2::bigint[]) AS a(mailbox, upto)"
    " JOIN entries e ON e.mailbox = a.mailbox AND e.seq <= a.upto"
    " AND e.kind = 'msg' AND e.delivered IS NULL"
)
_UPSERT_CURSORS = (
    "INSERT INTO cursors (mailbox, device, seq, ts)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])"
    " ON CONFLICT (mailbox, device) DO UPDATE SET"
    " seq = GREATEST(cursors.seq, EXCLUDED.seq), ts = EXCLUDED.ts"
)
_INSERT_ENTRIES = (
    "INSERT INTO entries (mailbox, seq, kind, peer, msg_id, body, ts)"
    " SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[],"
    " $5::bytea[], $6::text[], $7::bigint[])"
)
_UPDATE_BOXES = (
    "UPDATE mailboxes AS m SET last_seq = v.last_seq, acked_seq = v.acked_seq,"
    " messages = m.messages + v.dm, delivered = m.delivered + v.dd"
    " FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])"
    " AS v(mailbox, last_seq, acked_seq, dm, dd) WHERE m.mailbox = v.mailbox"
)


class _Batch:
    """Seq allocation and buffered rows of one batch transaction."""

    def __init__(self) -> None:
        self.boxes: dict[str, _Box] = {}
        self.rows: list[tuple[str, int, str, str, bytes, str, int]] = []

    async def lock(self, conn: Any, names: set[str]) -> None:
        todo = sorted(names - self.boxes.keys())
        if not todo:
            return
        await conn.execute(_ENSURE_BOXES, todo)
        for row in await conn.fetch(_LOCK_BOXES, todo):
            self.boxes[row[0]] = _Box(int(row[1]), int(row[2]))

    def append(
        self, mailbox: str, kind: EntryKind, peer: str, msg_id: bytes, body: str, ts: int
    ) -> Entry:
        box = self.boxes[mailbox]
        box.last_seq += 1
        box.dirty = True
        if kind == "msg":
            box.messages += 1
        self.rows.append((mailbox, box.last_seq, kind, peer, msg_id, body, ts))
        return Entry(mailbox, box.last_seq, kind, peer, msg_id, body, ts)

    async def finish(self, conn: Any) -> None:
        if self.rows:
            await conn.execute(
                _INSERT_ENTRIES, *(list(col) for col in zip(*self.rows, strict=True))
            )
        dirty = [
            (n, b.last_seq, b.acked_seq, b.messages, b.delivered)
            for n, b in self.boxes.items()
            if b.dirty
        ]
        if dirty:
            await conn.execute(_UPDATE_BOXES, *(list(col) for col in zip(*dirty, strict=True)))


class PostgresStore:
    """The :class:`~duplex.store.base.Store` on PostgreSQL (see the module doc).

    Use it from one event loop, the one that awaited :meth:`open`.

    Args:
        dsn: a libpq-style URL, ``postgresql://user@host:port/database``.
        pool_size: the most connections held; one is the batching task's while a batch
            runs, the others serve reads.
        schema: put the tables in this schema (created if missing) instead of the
            connection's default ``search_path``; lower-case letters, digits and ``_``.
        max_batch: the most write requests one transaction takes (1: one commit per
            request, for benchmarks).

    Raises:
        ValueError: a bad ``schema`` name or ``pool_size``.
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        schema: str | None = None,
        max_batch: int = MAX_PENDING_WRITES,
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema must match {_SCHEMA_NAME.pattern}: {schema!r}")
        if pool_size < 2:
            raise ValueError(f"pool_size must be at least 2 (writes and reads): {pool_size}")
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self._max_batch = max(1, min(max_batch, MAX_PENDING_WRITES))
        self.commit_count = 0
        """Write transactions committed since :meth:`open` (one per group commit)."""
        self.write_count = 0
        """Write requests committed since :meth:`open`."""
        self._pool: Any = None
        self._queue: collections.deque[_Request] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._wsem: asyncio.Semaphore | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        self._store_id = ""

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r}, pool_size={self.pool_size})"

    # -- life cycle -----------------------------------------------------------

    async def open(self) -> None:
        """Connects the pool, applies pending migrations under an advisory lock, and
        starts the batching task.

        Raises:
            StoreError: the server is unreachable, refuses us, or a migration fails.
        """
        if self._pool is not None or self._closed:
            raise StoreError(f"{self!r} was already opened")
        settings = {"synchronous_commit": "on"}
        if self.schema is not None:
            settings["search_path"] = self.schema
        with _translated():
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                server_settings=settings,
            )
            try:
                async with pool.acquire() as conn:
                    await self._migrate(conn)
                    self._store_id = str(
                        await conn.fetchval("SELECT value FROM meta WHERE key = 'store_id'")
                    )
            except BaseException:
                await pool.close()
                raise
        self._pool = pool
        self._wakeup = asyncio.Event()
        self._wsem = asyncio.Semaphore(MAX_PENDING_WRITES)
        self._batcher = asyncio.create_task(self._batch_loop(), name="duplex-store-batcher")

    async def close(self) -> None:
        """Commits the queued writes, stops the batching task and closes the pool."""
        if self._closed:
            return
        self._closed = True
        if self._batcher is not None:
            self._stopping = True
            assert self._wakeup is not None
            self._wakeup.set()
            await self._batcher
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.close()

    @property
    def store_id(self) -> str:
        """Names this store: made by its migration 0002 (one id for the whole cluster)."""
        return self._store_id

    async def _migrate(self, conn: Any) -> None:
        key = f"duplex.store.migrate:{self.schema or ''}"
        # A session-level lock: released by unlock below or when the connection dies.
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)
        try:
            if self.schema is not None:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            await conn.execute(SCHEMA_VERSION_DDL)
            current = int(
                await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            )
            migrations = load_migrations("postgres")
            if current > len(migrations):
                raise StoreError(
                    f"PostgreSQL schema version {current} is newer than this duplex "
                    f"(which knows up to {len(migrations)}): upgrade duplex"
                )
            for m in migrations[current:]:
                logger.info("PostgreSQL: applying migration %04d_%s", m.version, m.name)
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_version (version, name, applied) VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        int(time.time() * 1000),
                    )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)

    # -- the batching task ----------------------------------------------------

    async def _batch_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                n = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
                try:
                    await self._run_batch(batch)
                except BaseException as exc:  # a bug: fail the batch rather than hang
                    logger.exception("PostgreSQL store: batch failed")
                    for req in batch:
                        req.error = exc if isinstance(exc, Exception) else StoreError(repr(exc))
                    self._answer(batch)
                    if not isinstance(exc, Exception):
                        raise
            if self._stopping and not self._queue:
                return

    async def _run_batch(self, batch: list[_Request]) -> None:
        for attempt in range(_DEADLOCK_RETRIES + 1):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    await self._apply(conn, batch)
            except _RETRYABLE as exc:
                if attempt == _DEADLOCK_RETRIES:
                    return self._fail(batch, exc)
                logger.info("PostgreSQL store: %s; running the batch again", exc)
                continue
            except _CONNECTION_ERRORS as exc:
                return self._fail(batch, exc)
            except asyncpg.PostgresError as exc:
                if len(batch) == 1:
                    return self._fail(batch, exc)
                logger.warning("PostgreSQL store: group commit failed (%s); one by one", exc)
                for req in batch:
                    await self._run_batch([req])
                return None
            self.commit_count += 1
            self.write_count += len(batch)
            self._answer(batch)
            return None
        return None  # pragma: no cover - the loop always returns

    def _fail(self, batch: list[_Request], exc: BaseException) -> None:
        for req in batch:
            error = StoreError(f"PostgreSQL store: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            req.result, req.error = None, error
        self._answer(batch)

    def _answer(self, batch: list[_Request]) -> None:
        assert self._wsem is not None
        for req in batch:
            self._wsem.release()
            if req.future.done():  # the caller was cancelled; the write happened anyway
                continue
            if req.error is not None:
                req.future.set_exception(req.error)
            else:
                req.future.set_result(req.result)

    async def _apply(self, conn: Any, batch: list[_Request]) -> None:
        txn = _Batch()
        stores: list[_Request] = []
        acks: list[_Request] = []
        for req in batch:
            req.result, req.error = None, None
            if req.op is not None:
                # Rare requests (accounts, tokens, contacts) each in a savepoint: a
                # constraint it breaks fails it alone.
                try:
                    async with conn.transaction():
                        req.result = await req.op(conn)
                except asyncpg.IntegrityConstraintViolationError as exc:
                    detail = getattr(exc, "detail", None) or ""
                    req.error = StoreError(f"refused by PostgreSQL: {exc} {detail}".strip())
                    req.error.__cause__ = exc
            elif req.message is not None:
                stores.append(req)
            else:
                acks.append(req)
        if not stores and not acks:
            return
        names = {r.message.recipient for r in stores if r.message}
        senders: set[str] = set()
        if acks:
            uptos: dict[str, int] = {}
            for r in acks:
                if r.ack is not None:
                    uptos[r.ack[0]] = max(uptos.get(r.ack[0], 0), r.ack[2])
            names |= uptos.keys()
            rows = await conn.fetch(_ACK_SENDERS, list(uptos), list(uptos.values()))
            senders = {str(row[0]) for row in rows}
        # Every mailbox of the batch, locked at once in name order. Locking the receipt
        # senders in a second step made two nodes deadlock (each holding a mailbox the
        # other's second step wanted), and each deadlock cost deadlock_timeout (1 s).
        await txn.lock(conn, names | senders)
        if acks:
            await self._apply_acks(conn, txn, acks)
        if stores:
            await self._apply_stores(conn, txn, stores)
        await txn.finish(conn)

    async def _apply_acks(self, conn: Any, txn: _Batch, acks: list[_Request]) -> None:
        # Acks are clamped to each mailbox's last_seq before this batch's stores, as if
        # they ran first: a device cannot have seen what is being stored right now.
        cursors: dict[tuple[str, str], tuple[int, int]] = {}
        ranges: list[tuple[str, int, int, int, _Request]] = []
        for req in acks:
            assert req.ack is not None
            user, device, upto, ts = req.ack
            req.result = []
            box = txn.boxes[user]
            hi = max(0, min(upto, box.last_seq))
            old = cursors.get((user, device), (0, 0))[0]
            cursors[(user, device)] = (max(old, hi), ts)
            if hi > box.acked_seq:
                ranges.append((user, box.acked_seq, hi, ts, req))
                box.acked_seq = hi
                box.dirty = True
        if cursors:
            keys = list(cursors)
            await conn.execute(
                _UPSERT_CURSORS,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [cursors[k][0] for k in keys],
                [cursors[k][1] for k in keys],
            )
        if not ranges:
            return
        rows = await conn.fetch(
            _MARK_DELIVERED,
            [r[0] for r in ranges],
            [r[1] for r in ranges],
            [r[2] for r in ranges],
            [r[3] for r in ranges],
        )
        delivered: dict[str, list[tuple[int, str, bytes]]] = collections.defaultdict(list)
        for row in rows:
            delivered[row[0]].append((int(row[1]), str(row[2]), bytes(row[3])))
        await txn.lock(conn, {peer for items in delivered.values() for _, peer, _ in items})
        for user, lo, hi, ts, req in ranges:
            for seq, sender, msg_id in sorted(delivered[user]):
                if lo < seq <= hi:
                    txn.boxes[user].delivered += 1
                    req.result.append(txn.append(sender, "receipt", user, msg_id, "", ts))

    async def _apply_stores(self, conn: Any, txn: _Batch, stores: list[_Request]) -> None:
        messages = [r.message for r in stores if r.message is not None]
        found = await conn.fetch(
            _FIND_MESSAGES, [m.sender for m in messages], [m.msg_id for m in messages]
        )
        existing = {(str(r[0]), bytes(r[1])): r for r in found}
        new: dict[tuple[str, bytes], Entry] = {}
        for req, m in zip(stores, messages, strict=True):
            key = (m.sender, m.msg_id)
            entry = new.get(key)
            if entry is not None:
                req.result = Stored(entry, duplicate=True, delivered=False)
                continue
            row = existing.get(key)
            if row is not None:
                original = Entry(
                    str(row[2]), int(row[3]), "msg", m.sender, m.msg_id, row[4], row[5]
                )
                req.result = Stored(original, duplicate=True, delivered=bool(row[6]))
                continue
            entry = txn.append(m.recipient, "msg", m.sender, m.msg_id, m.body, m.ts)
            new[key] = entry
            req.result = Stored(entry)

    async def _write(self, req: _Request) -> Any:
        self._check_usable()
        assert self._wsem is not None and self._wakeup is not None
        await self._wsem.acquire()
        self._queue.append(req)
        self._wakeup.set()
        return await req.future

    def _new_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _op(self, op: Op) -> Any:
        return await self._write(_Request(self._new_future(), op=op))

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreError("PostgreSQL store: the store is closed")
        if self._pool is None:
            raise StoreError("PostgreSQL store: not open (await open() first)")

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        self._check_usable()
        with _translated():
            return list(await self._pool.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        self._check_usable()
        with _translated():
            return await self._pool.fetchrow(sql, *args)

    # -- accounts -------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str, created: int) -> bool:
        """Creates an account. Returns False when the name is taken (nothing changes)."""

        async def op(conn: Any) -> bool:
            status = await conn.execute(
                "INSERT INTO users (name, password_hash, created) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO NOTHING",
                name,
                password_hash,
                created,
            )
            return bool(status == "INSERT 0 1")

        return bool(await self._op(op))

    async def get_user(self, name: str) -> User | None:
        """Returns the account, or None."""
        row = await self._fetchrow(
            "SELECT name, password_hash, created FROM users WHERE name = $1", name
        )
        return User(row[0], row[1], int(row[2])) if row else None

    async def set_password(self, name: str, password_hash: str) -> None:
        """Replaces a password hash (nothing happens for an unknown user)."""

        async def op(conn: Any) -> None:
            await conn.execute(
                "UPDATE users SET password_hash = $2 WHERE name = $1", name, password_hash
            )

        await self._op(op)

    async def save_token(self, token_hash: bytes, user: str, device: str, expires: int) -> None:
        """Records a session token (only its hash) for ``user``'s ``device``.

        Raises:
            StoreError: ``user`` has no account.
        """

        async def op(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO tokens (token_hash, username, device, expires)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (token_hash) DO UPDATE SET"
                " username = EXCLUDED.username, device = EXCLUDED.device,"
                " expires = EXCLUDED.expires",
                token_hash,
                user,
                device,
                expires,
            )

        await self._op(op)

    async def token_owner(self, token_hash: bytes, now: int) -> tuple[str, str] | None:
        """Returns ``(user, device)`` of a token that expires after ``now``, or None."""
        row = await self._fetchrow(
            "SELECT username, device FROM tokens WHERE token_hash = $1 AND expires > $2",
            token_hash,
            now,
        )
        return (str(row[0]), str(row[1])) if row else None

    async def delete_token(self, token_hash: bytes) -> None:
        """Forgets a token (logout)."""

        async def op(conn: Any) -> None:
            await conn.execute("DELETE FROM tokens WHERE token_hash = $1", token_hash)

        await self._op(op)

    # -- contacts -------------------------------------------------------------

    async def add_contact(self, owner: str, contact: str) -> bool:
        """Adds ``contact`` to ``owner``'s list. Returns False if it was there.

        Raises:
            StoreError: ``owner`` or ``contact`` has no account.
        """

        async def op(conn: Any) -> bool:
            status = await conn.execute(
                "INSERT INTO contacts (owner, contact) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                owner,
                contact,
            )
            return bool(status == "INSERT 0 1")

        return bool(await self._op(op))

    async def remove_contact(self, owner: str, contact: str) -> bool:
        """Removes ``contact`` from ``owner``'s list. Returns False if it was not there."""

        async def op(conn: Any) -> bool:
            status = await conn.execute(
                "DELETE FROM contacts WHERE owner = $1 AND contact = $2", owner, contact
            )
            return bool(status == "DELETE 1")

        return bool(await self._op(op))

    async def contacts(self, owner: str) -> list[str]:
        """Returns ``owner``'s contacts, sorted."""
        rows = await self._fetch(
            'SELECT contact FROM contacts WHERE owner = $1 ORDER BY contact COLLATE "C"', owner
        )
        return [str(r[0]) for r in rows]

    async def watchers(self, user: str) -> list[str]:
        """Returns the users who have ``user`` as a contact, sorted."""
        rows = await self._fetch(
            'SELECT owner FROM contacts WHERE contact = $1 ORDER BY owner COLLATE "C"', user
        )
        return [str(r[0]) for r in rows]

    # -- mailboxes ------------------------------------------------------------

    async def store_message(self, message: NewMessage) -> Stored:
        """Appends a message to its recipient's mailbox, durably, with group commit.

        Raises:
            ValueError: the message id is not 16 bytes.
            StoreError: the database failed.
        """
        validate_batch((message,))
        result = await self._write(_Request(self._new_future(), message=message))
        assert isinstance(result, Stored)
        return result

    async def fetch(self, user: str, after: int, limit: int) -> list[Entry]:
        """Returns up to ``limit`` entries of ``user``'s mailbox with ``seq > after``, in order."""
        rows = await self._fetch(
            "SELECT seq, kind, peer, msg_id, body, ts FROM entries"
            " WHERE mailbox = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            user,
            after,
            max(0, limit),
        )
        return [Entry(user, int(r[0]), r[1], r[2], bytes(r[3]), r[4], int(r[5])) for r in rows]

    async def last_seq(self, user: str) -> int:
        """Returns the highest sequence number in ``user``'s mailbox (0 when empty)."""
        row = await self._fetchrow("SELECT last_seq FROM mailboxes WHERE mailbox = $1", user)
        return int(row[0]) if row else 0

    async def ack(self, user: str, device: str, upto: int, ts: int) -> list[Entry]:
        """Records that ``user``'s ``device`` holds every entry up to ``upto``, durably.

        Returns:
            The receipt entries created, in the order of the acked messages.
        """
        result = await self._write(_Request(self._new_future(), ack=(user, device, upto, ts)))
        assert isinstance(result, list)
        return result

    async def history(self, user: str, peer: str, before: int | None, limit: int) -> list[Entry]:
        """Returns up to ``limit`` messages between ``user`` and ``peer``, newest last."""
        bound = (1 << 62) if before is None else before
        one_way = (
            "SELECT id, mailbox, seq, peer, msg_id, body, ts FROM entries"
            " WHERE kind = 'msg' AND mailbox = {} AND peer = {} AND ts < $3"
        )
        if user == peer:
            sql = one_way.format("$1", "$2")
        else:
            sql = f"{one_way.format('$1', '$2')} UNION ALL {one_way.format('$2', '$1')}"
        rows = await self._fetch(
            f"{sql} ORDER BY ts DESC, id DESC LIMIT $4", user, peer, bound, max(0, limit)
        )
        return [
            Entry(r[1], int(r[2]), "msg", r[3], bytes(r[4]), r[5], int(r[6]))
            for r in reversed(rows)
        ]

    async def stats(self) -> StoreStats:
        """Returns counts for metrics (kept as counters per mailbox, so cheap)."""
        row = await self._fetchrow(
            "SELECT (SELECT count(*) FROM users),"
            " coalesce(sum(messages), 0), coalesce(sum(delivered), 0) FROM mailboxes"
        )
        return StoreStats(int(row[0]), int(row[1]), int(row[2]))
