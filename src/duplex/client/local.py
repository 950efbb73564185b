"""The client's durable local state: device identity, outbox, history, last sequence.

One SQLite file per user in the client's data dir (``:memory:`` for load generators).
What it guarantees:

* a message handed to :meth:`LocalStore.add_outgoing` survives a restart of the
  client: it is committed before :meth:`~duplex.client.Client.send` returns, and it
  stays ``queued`` until the hub says ``stored``, so it is sent again after any crash;
* an incoming message is recorded at most once per ``(peer, id)``
  (:meth:`LocalStore.add_incoming` says whether to show it: once per device, whichever
  of its processes stored it), and the mailbox sequence
  is stored in the same commit, so an ack never runs ahead of what is on disk;
* the mailbox sequence is kept per hub store (a hub names its store in ``Welcome``):
  sequence numbers count within one store, so the cursor of one hub never makes the
  client skip the first entries of another (or of a hub whose data dir was replaced),
  and a message written for one hub never goes out through another
  (:meth:`LocalStore.bind`, :meth:`LocalStore.welcome`).

WAL with ``synchronous=NORMAL``: a commit survives a crash of the process, which is
what "kept across a restart of the client" needs; only a power loss can take the
last commits, and the hub, which fsyncs, still holds everything it acked.
"""

from __future__ import annotations

import array
import dataclasses
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from duplex.errors import StoreError, map_exceptions

__all__ = [
    "HistoryItem",
    "ImportedLine",
    "LocalStore",
    "OutgoingMessage",
    "StoredLine",
    "Unread",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    n         INTEGER PRIMARY KEY AUTOINCREMENT,  -- local order
    peer      TEXT NOT NULL,
    id        BLOB NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    body      TEXT NOT NULL,
    ts        INTEGER NOT NULL,
    state     TEXT NOT NULL,
    path      TEXT,
    reason    TEXT NOT NULL DEFAULT '',
    store     TEXT NOT NULL DEFAULT '',  -- for 'out': the hub store it is for (see bind)
    printed   INTEGER NOT NULL DEFAULT 1,  -- for 'in': 0 until `duplex inbox` printed it
    announced INTEGER NOT NULL DEFAULT 1,  -- for 'in': 0 until a running client showed it
    UNIQUE (peer, id, direction)
);
CREATE INDEX IF NOT EXISTS messages_queued ON messages (state) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS messages_out_id ON messages (id) WHERE direction = 'out';
"""

_ERRORS: dict[type[BaseException], type[StoreError]] = {
    sqlite3.Error: StoreError,
    OSError: StoreError,
}


@dataclasses.dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message of ours not yet stored by the hub."""

    id: bytes
    peer: str
    body: str
    ts: int


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryItem:
    """One line of a conversation, either direction."""

    peer: str
    id: bytes
    outgoing: bool
    body: str
    ts: int
    state: str
    path: str | None


class LocalStore:
    """The client's SQLite file.

    Args:
        path: the database file, or ``":memory:"``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            folder = Path(self.path).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                what = "is not a directory" if isinstance(exc, FileExistsError) else exc.strerror
                raise StoreError(f"cannot use {folder} for the client's data: {what}") from None
        with map_exceptions(_ERRORS):
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            # Columns that files from older clients lack: ''/1 says "as before" (any
            # hub; printed and shown, or lost, by the client of that time).
            self._add_column("store", "TEXT NOT NULL DEFAULT ''")
            self._add_column("printed", "INTEGER NOT NULL DEFAULT 1")
            self._add_column("announced", "INTEGER NOT NULL DEFAULT 1")
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS messages_unprinted ON messages (n) WHERE printed = 0"
            )
        self._in_tx = False
        self._hub = ""
        self._outbox = ""  # what new outgoing messages are bound to ('': any hub)
        self._store = ""  # the store the mailbox sequence counts in ('': not known)
        self._seq_key = "last_seq"

    def _add_column(self, name: str, declaration: str) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        if name in columns:
            return
        try:
            self._db.execute(f"ALTER TABLE messages ADD COLUMN {name} {declaration}")
        except sqlite3.OperationalError as exc:  # another process of the device did it
            if "duplicate column" not in str(exc):
                raise

    def close(self) -> None:
        """Closes the file."""
        self._db.close()

    # -- meta ---------------------------------------------------------------------------

    def _get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def device_id(self) -> str:
        """Returns this device's id, made and stored on first use."""
        with map_exceptions(_ERRORS):
            device = self._get("device")
            if device is None:
                device = uuid.uuid4().hex[:16]
                self._set("device", device)
            return device

    # -- which hub ----------------------------------------------------------------------

    def bind(self, hub: str) -> None:
        """Says which hub (``"host:port"``) the client talks to from now on.

        Sequence numbers count within one hub store, and a user name names a person
        only within one hub. So :attr:`last_seq` is that of the store the last
        ``Welcome`` from ``hub`` named, and new outgoing messages are for that store
        (:meth:`queued` gives only those, and older ones bound to none). For an address
        not seen before, the sequence is the last store's (a guess: the hub knows
        better, see :attr:`store`), and new messages wait for that address's hub.
        """
        with map_exceptions(_ERRORS):
            known = self._get(f"hub:{hub}")
            last = self._get("store")
        self._hub = hub
        self._outbox = known or f"@{hub}"
        self._use_store(known or last or "")

    def _use_store(self, store: str) -> None:
        self._store = store
        self._seq_key = f"last_seq:{store}" if store else "last_seq"

    @property
    def store(self) -> str:
        """The store :attr:`last_seq` counts in, as a ``Welcome`` named it ('' if none
        did): what ``Login`` says, so that a hub with another store does not take the
        sequence for its own."""
        return self._store

    def welcome(self, store: str) -> None:
        """The hub at the bound address said its store is ``store`` (in ``Welcome``;
        empty from a hub too old to say, which changes nothing).

        From now on :attr:`last_seq` is that store's: where the login said another
        store, the hub sends the mailbox from its start, and what this file holds of
        that store already is skipped as held. Messages written for this address
        before its first ``Welcome`` are bound to the store.
        """
        if not store or (store == self._store and self._outbox == store):
            return
        with map_exceptions(_ERRORS):
            in_tx = self._in_tx
            if not in_tx:
                self._db.execute("BEGIN")
            try:
                legacy = self._get("last_seq")
                if not self._store and legacy is not None:
                    # A file from before stores had names: its sequence was the one the
                    # login said, and this hub took it as its own.
                    if self._get(f"last_seq:{store}") is None:
                        self._set(f"last_seq:{store}", legacy)
                    self._db.execute("DELETE FROM meta WHERE key = 'last_seq'")
                if self._hub:
                    self._set(f"hub:{self._hub}", store)
                    self._db.execute(
                        "UPDATE messages SET store = ? WHERE direction = 'out' AND store = ?",
                        (store, f"@{self._hub}"),
                    )
                self._set("store", store)
                if not in_tx:
                    self._db.execute("COMMIT")
            except BaseException:
                if not in_tx:
                    self._db.execute("ROLLBACK")
                raise
        self._outbox = store
        self._use_store(store)

    @property
    def last_seq(self) -> int:
        """The highest mailbox sequence held here, in the store of :attr:`store`."""
        with map_exceptions(_ERRORS):
            value = self._get(self._seq_key)
        return int(value) if value else 0

    # -- batches ------------------------------------------------------------------------

    def begin(self) -> None:
        """Starts a transaction (a batch of incoming frames is one commit)."""
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        """Commits the batch."""
        if self._in_tx:
            with map_exceptions(_ERRORS):
                self._db.execute("COMMIT")
            self._in_tx = False

    # -- outgoing -----------------------------------------------------------------------

    def add_outgoing(self, peer: str, body: str, msg_id: bytes, ts: int) -> None:
        """Records a new message of ours as ``queued`` (committed when this returns,
        unless inside :meth:`begin`)."""
        with map_exceptions(_ERRORS):
            self._db.execute(
                "INSERT OR IGNORE INTO messages (peer, id, direction, body, ts, state, store) "
                "VALUES (?, ?, 'out', ?, ?, 'queued', ?)",
                (peer, msg_id, body, ts, self._outbox),
            )

    def queued(self) -> list[OutgoingMessage]:
        """Messages for the bound hub (see :meth:`bind`) that it has not confirmed yet,
        oldest first."""
        with map_exceptions(_ERRORS):
            rows = self._db.execute(
                "SELECT id, peer, body, ts FROM messages WHERE direction = 'out' "
                "AND state = 'queued' AND store IN ('', ?) ORDER BY n",
                (self._outbox,),
            ).fetchall()
        return [OutgoingMessage(bytes(r[0]), r[1], r[2], r[3]) for r in rows]

    def undelivered(self, peer: str) -> list[OutgoingMessage]:
        """Our messages to ``peer`` on the bound hub that no device of it has
        acknowledged yet (``queued`` or ``stored``), oldest first: what a new path to
        ``peer`` must carry before anything newer, so that nothing overtakes them."""
        with map_exceptions(_ERRORS):
            rows = self._db.execute(
                "SELECT id, peer, body, ts FROM messages WHERE peer = ? AND direction = 'out' "
                "AND state IN ('queued', 'stored') AND store IN ('', ?) ORDER BY n",
                (peer, self._outbox),
            ).fetchall()
        return [OutgoingMessage(bytes(r[0]), r[1], r[2], r[3]) for r in rows]

    def set_state(
        self, msg_id: bytes, state: str, path: str | None = None, reason: str = ""
    ) -> str | None:
        """Moves our message ``msg_id`` forward; never backward (delivered stays delivered).

        Returns:
            The recipient when the state changed, else None.
        """
        order = {"queued": 0, "failed": 1, "stored": 2, "delivered": 3}
        with map_exceptions(_ERRORS):
            row = self._db.execute(
                "SELECT peer, state, path FROM messages WHERE direction = 'out' AND id = ?",
                (msg_id,),
            ).fetchone()
            if row is None:
                return None
            peer, current, _ = row
            if order[state] <= order.get(current, 0):
                return None
            self._db.execute(
                "UPDATE messages SET state = ?, path = coalesce(?, path), reason = ? "
                "WHERE direction = 'out' AND id = ?",
                (state, path, reason, msg_id),
            )
        return str(peer)

    # -- incoming -----------------------------------------------------------------------

    def add_incoming(
        self, peer: str, msg_id: bytes, body: str, ts: int, path: str, *, transient: bool = False
    ) -> bool:
        """Records a message for us; True when it is to be announced (shown) now.

        That is when ``(peer, id)`` is new here, or when a ``transient`` client (a
        one-shot command of the same device, in another process) stored it first and
        this client is not transient: the running client shows what it missed, once.
        A transient client's rows stay unannounced, so that the running one can.
        """
        with map_exceptions(_ERRORS):
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO messages "
                "(peer, id, direction, body, ts, state, path, printed, announced) "
                "VALUES (?, ?, 'in', ?, ?, 'delivered', ?, 0, ?)",
                (peer, msg_id, body, ts, path, 0 if transient else 1),
            )
            if cursor.rowcount == 1:
                return True
            if transient:
                return False
            cursor = self._db.execute(
                "UPDATE messages SET announced = 1 "
                "WHERE peer = ? AND id = ? AND direction = 'in' AND announced = 0",
                (peer, msg_id),
            )
        return cursor.rowcount == 1

    def unprinted(self) -> list[StoredLine]:
        """Messages for us that ``duplex inbox`` has not printed yet, in arrival order:
        whichever command's client received (and acked) them, ``inbox`` prints them,
        not only those that arrive while it runs. (Lines imported from the hub's
        history are not new, and count as printed.)"""
        with map_exceptions(_ERRORS):
            rows = self._db.execute(
                f"SELECT {_LINE_COLUMNS} FROM messages WHERE printed = 0 ORDER BY n"
            ).fetchall()
        return [_line(row) for row in rows]

    def set_printed(self, upto: int) -> None:
        """Records that the messages of :meth:`unprinted` up to row ``upto`` were printed."""
        with map_exceptions(_ERRORS):
            self._db.execute(
                "UPDATE messages SET printed = 1 WHERE printed = 0 AND n <= ?", (upto,)
            )

    def set_last_seq(self, seq: int) -> None:
        """Records the highest mailbox sequence held here."""
        with map_exceptions(_ERRORS):
            self._set(self._seq_key, str(seq))

    # -- reading ------------------------------------------------------------------------

    def history(
        self, peer: str, limit: int = 100, before_n: int | None = None
    ) -> list[HistoryItem]:
        """The last ``limit`` lines with ``peer``, oldest first."""
        with map_exceptions(_ERRORS):
            rows = self._db.execute(
                "SELECT peer, id, direction, body, ts, state, path FROM messages "
                "WHERE peer = ? AND n < ? ORDER BY n DESC LIMIT ?",
                (peer, before_n if before_n is not None else 2**62, limit),
            ).fetchall()
        return [
            HistoryItem(r[0], bytes(r[1]), r[2] == "out", r[3], r[4], r[5], r[6])
            for r in reversed(rows)
        ]

    def state_of(self, msg_id: bytes) -> tuple[str, str | None] | None:
        """(state, path) of our message ``msg_id``, or None."""
        with map_exceptions(_ERRORS):
            row = self._db.execute(
                "SELECT state, path FROM messages WHERE direction = 'out' AND id = ?", (msg_id,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    # -- browsing (user interfaces) -----------------------------------------------------
    #
    # Added for ``duplex chat`` and kept apart from the methods above, which the client
    # itself relies on: nothing below changes how a message is recorded, acked or
    # resent. A conversation is shown in (ts, n) order: the time the hub stored the
    # message (or we sent it), then local arrival for ties. Arrival alone (``n``) is not
    # enough once older history is fetched from the hub: those rows arrive last but
    # belong first. Read markers and drafts live in ``meta`` (``read:<peer>``,
    # ``draft:<peer>``), so they survive a restart with the history they refer to.

    def _browsing(self) -> sqlite3.Connection:
        """The connection, with the conversation index made on first use."""
        if not getattr(self, "_browse_ready", False):
            with map_exceptions(_ERRORS):
                self._db.execute(
                    "CREATE INDEX IF NOT EXISTS messages_peer_ts ON messages (peer, ts, n)"
                )
            self._browse_ready = True
        return self._db

    def timeline_keys(self, peer: str) -> tuple[array.array[int], array.array[int]]:
        """Returns the ``(ts, n)`` keys of every message with ``peer``, in display order.

        Two flat arrays rather than a list of tuples: 100,000 messages cost 1.6 MB, not 12.

        Returns:
            ``(ts, n)``: parallel arrays sorted by ``(ts, n)``.
        """
        db = self._browsing()
        ts: array.array[int] = array.array("q")
        ns: array.array[int] = array.array("q")
        with map_exceptions(_ERRORS):
            cursor = db.execute("SELECT ts, n FROM messages WHERE peer = ? ORDER BY ts, n", (peer,))
            while rows := cursor.fetchmany(8192):
                for row_ts, row_n in rows:
                    ts.append(row_ts)
                    ns.append(row_n)
        return ts, ns

    def lines(self, ns: list[int]) -> list[StoredLine]:
        """Returns the stored messages with local row numbers ``ns``, in ``ns`` order.

        Rows that do not exist are left out.
        """
        db = self._browsing()
        found: dict[int, StoredLine] = {}
        with map_exceptions(_ERRORS):
            for start in range(0, len(ns), 500):  # under SQLite's bound-parameter limit
                chunk = ns[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in db.execute(
                    f"SELECT {_LINE_COLUMNS} FROM messages WHERE n IN ({marks})", chunk
                ):
                    line = _line(row)
                    found[line.n] = line
        return [found[n] for n in ns if n in found]

    def line_of(
        self, msg_id: bytes, *, outgoing: bool, peer: str | None = None
    ) -> StoredLine | None:
        """Returns our message ``msg_id`` (``outgoing``) or ``peer``'s, or None."""
        db = self._browsing()
        sql = f"SELECT {_LINE_COLUMNS} FROM messages WHERE id = ? AND direction = ?"
        args: tuple[object, ...] = (msg_id, "out" if outgoing else "in")
        if peer is not None:
            sql += " AND peer = ?"
            args += (peer,)
        with map_exceptions(_ERRORS):
            row = db.execute(sql, args).fetchone()
        return None if row is None else _line(row)

    def conversations(self) -> dict[str, int]:
        """Returns every peer with local history and the time of its last message."""
        db = self._browsing()
        with map_exceptions(_ERRORS):
            rows = db.execute("SELECT peer, max(ts) FROM messages GROUP BY peer").fetchall()
        return {str(peer): int(ts) for peer, ts in rows}

    def search(self, text: str, peer: str | None = None, limit: int = 200) -> list[StoredLine]:
        """Returns messages whose text contains ``text`` (case-insensitive), newest first.

        Args:
            text: what to look for (a plain substring, no patterns).
            peer: only this conversation; None searches all of them.
            limit: at most this many.
        """
        db = self._browsing()
        sql = f"SELECT {_LINE_COLUMNS} FROM messages WHERE instr(lower(body), lower(?)) > 0"
        args: tuple[object, ...] = (text,)
        if peer is not None:
            sql += " AND peer = ?"
            args += (peer,)
        sql += " ORDER BY ts DESC, n DESC LIMIT ?"
        with map_exceptions(_ERRORS):
            rows = db.execute(sql, (*args, limit)).fetchall()
        return [_line(row) for row in rows]

    def read_marker(self, peer: str) -> tuple[int, int]:
        """Returns the ``(ts, n)`` key of the last message read with ``peer`` ((0, 0): none)."""
        with map_exceptions(_ERRORS):
            value = self._get(f"read:{peer}")
        if not value:
            return (0, 0)
        ts, _, n = value.partition(":")
        return (int(ts), int(n or 0))

    def set_read_marker(self, peer: str, key: tuple[int, int]) -> None:
        """Records that everything with ``peer`` up to ``key`` (``(ts, n)``) was read
        (so ``duplex inbox`` does not print it again)."""
        ts, n = key
        with map_exceptions(_ERRORS):
            self._set(f"read:{peer}", f"{ts}:{n}")
            self._db.execute(
                "UPDATE messages SET printed = 1 WHERE printed = 0 AND peer = ? "
                "AND (ts < ? OR (ts = ? AND n <= ?))",
                (peer, ts, ts, n),
            )

    def unread(self, peer: str, mention: str = "") -> Unread:
        """Counts messages from ``peer`` after the read marker.

        Args:
            peer: the conversation.
            mention: a word (such as ``@alice``) that makes a message a mention
                (case-insensitive); empty counts none.
        """
        db = self._browsing()
        ts, n = self.read_marker(peer)
        with map_exceptions(_ERRORS):
            count, mentions = db.execute(
                "SELECT count(*), coalesce(sum(? != '' AND instr(lower(body), lower(?)) > 0), 0)"
                " FROM messages WHERE peer = ? AND direction = 'in'"
                " AND (ts > ? OR (ts = ? AND n > ?))",
                (mention, mention, peer, ts, ts, n),
            ).fetchone()
        return Unread(int(count), int(mentions))

    def draft(self, peer: str) -> str:
        """Returns the unsent text kept for ``peer`` ("" when none)."""
        with map_exceptions(_ERRORS):
            return self._get(f"draft:{peer}") or ""

    def set_draft(self, peer: str, text: str) -> None:
        """Keeps (or, with "", forgets) the unsent text for ``peer``."""
        with map_exceptions(_ERRORS):
            if text:
                self._set(f"draft:{peer}", text)
            else:
                self._db.execute("DELETE FROM meta WHERE key = ?", (f"draft:{peer}",))

    def import_lines(self, peer: str, lines: list[ImportedLine]) -> int:
        """Adds messages of the conversation with ``peer`` from the hub's history.

        A message already held (same peer, id and direction) is left as it is, so an
        import never duplicates a line or moves a state backwards. Our messages from the
        hub are at least ``stored``; its messages count as ``delivered`` (we hold them).
        Imported messages never count as unread unless they are newer than the marker.

        Returns:
            How many were new.
        """
        db = self._browsing()
        added = 0
        with map_exceptions(_ERRORS):
            db.execute("BEGIN")
            try:
                for line in lines:
                    cursor = db.execute(
                        "INSERT OR IGNORE INTO messages (peer, id, direction, body, ts, state,"
                        " path) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            peer,
                            line.id,
                            "out" if line.outgoing else "in",
                            line.body,
                            line.ts,
                            "stored" if line.outgoing else "delivered",
                            line.path,
                        ),
                    )
                    added += cursor.rowcount
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return added


@dataclasses.dataclass(frozen=True, slots=True)
class StoredLine:
    """One stored message of a conversation, with its local row number.

    Attributes:
        n: the local row number (ties of ``ts`` are ordered by it).
        peer: the other side of the conversation.
        id: the message id.
        outgoing: True for our messages.
        body: the text.
        ts: ms since the epoch (the hub's store time, or our send time).
        state: ``queued``/``stored``/``delivered``/``failed`` (incoming: ``delivered``).
        path: ``direct``/``relayed``/``stored``, or None while unknown.
        reason: why it failed, for ``failed``.
    """

    n: int
    peer: str
    id: bytes
    outgoing: bool
    body: str
    ts: int
    state: str
    path: str | None
    reason: str

    @property
    def key(self) -> tuple[int, int]:
        """Its ``(ts, n)`` position in the conversation."""
        return (self.ts, self.n)


@dataclasses.dataclass(frozen=True, slots=True)
class ImportedLine:
    """A message fetched from the hub's history of a conversation.

    Attributes:
        id: the message id.
        outgoing: True when we sent it.
        body: the text.
        ts: when the hub stored it (ms since the epoch).
        path: how it travelled, as far as the hub knows.
    """

    id: bytes
    outgoing: bool
    body: str
    ts: int
    path: str | None = "stored"


@dataclasses.dataclass(frozen=True, slots=True)
class Unread:
    """Unread messages of one conversation.

    Attributes:
        count: messages after the read marker.
        mentions: how many of them mention us.
    """

    count: int = 0
    mentions: int = 0


_LINE_COLUMNS = "n, peer, id, direction, body, ts, state, path, reason"


def _line(row: Any) -> StoredLine:
    n, peer, msg_id, direction, body, ts, state, path, reason = row
    return StoredLine(n, peer, bytes(msg_id), direction == "out", body, ts, state, path, reason)
