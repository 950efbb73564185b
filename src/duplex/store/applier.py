"""The embedded store's applier: a process of its own that writes the journal to the
tables.

Why a process
-------------
Applying the journal is the SQLite store's biggest piece of work per message: two
entry rows (the message and its receipt), each an insert into three B-trees, plus the
mailbox and cursor rows, about 9 us of CPU per relayed message on this machine. As a
thread of the hub it ran under the hub's GIL: on the hub's CPU it took that time from
the event loop (``benchmarks/hub_relay.py``: 21,400 msg/s at 44 us per message with
the thread, 27,900 at 35 us with no apply at all), and on another CPU it was slower
still, the GIL crossing between the CPUs. A process has its own interpreter, so the
apply runs beside the loop on a second CPU and costs it only the hand-over: in
alternating runs of the same hour, 18,500-22,000 msg/s with the thread and
21,200-25,100 with the process.

What crosses the pipe
---------------------
Which journal rows to apply, not the rows: the applier reads them from the journal's
file (``<db>.log``), where they stay until an apply has covered them. (Sent over the
pipe, the rows had to be kept in the hub's memory until their apply, a second copy of
every message body there.) One request::

    commit number (u64) | after (u64) | upto (u64) | flags (u8)

makes one transaction of the journal rows ``after < id <= upto`` (MessagePack blobs,
see :mod:`duplex.store.sqlite`; row ``upto`` must be there): every entry of those
rows, each cursor at its highest sequence, each mailbox at its last state, and the
tables' commit counter set to the commit number (what the high-water mark compares).
The answer is one byte, 0 for committed, or an SQLite error code, then the length
(u32) and text of the error (empty on success). After an error the transaction is
rolled back, so the same request can be sent again. The applier's first answer comes
unasked: whether it could open the database. The flag ``1`` (replay) skips entries
that are in the tables already: the hub sets it when it sends an apply again to a new
applier, because the one that died may have committed it before it could answer.

The applier writes nothing else: accounts, tokens and contacts stay with the hub's
table-writer thread, which also sends the applies, one thing at a time, so the two
writers of the tables never wait for each other's lock. The applier ends when its
input closes: when the store closes, and when the hub dies, however it dies; signals
meant for the hub (Ctrl-C, a service manager's SIGTERM) do not end it.

This file runs as a script (``python -I applier.py DB LOG SYNCHRONOUS``), without the
duplex package: it imports only the standard library and msgspec, starts in about
40 ms, and holds none of the hub's memory.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Final

import msgspec

__all__ = [
    "ANSWER_TIMEOUT",
    "INSERT_ENTRY",
    "UPSERT_BOX",
    "UPSERT_CURSOR",
    "ApplierGone",
    "ApplierProcess",
    "ApplyFailed",
    "Folded",
    "JournalGap",
    "fold",
    "name_thread",
    "write_folded",
]

BUSY_TIMEOUT: Final = 5.0
"""Seconds the applier waits for a lock held by another connection (as the store's)."""

INSERT_ENTRY: Final = (
    "INSERT INTO entries (mailbox, seq, kind, peer, msg_id, body, ts) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
UPSERT_BOX: Final = (
    "INSERT INTO mailboxes (mailbox, last_seq, acked_seq, messages, delivered)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (mailbox) DO UPDATE SET"
    " last_seq = excluded.last_seq, acked_seq = excluded.acked_seq,"
    " messages = excluded.messages, delivered = excluded.delivered"
)
UPSERT_CURSOR: Final = (
    "INSERT INTO cursors (mailbox, device, seq, ts) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (mailbox, device) DO UPDATE SET"
    " seq = max(seq, excluded.seq), ts = excluded.ts"
)

ANSWER_TIMEOUT: Final = 30.0
"""Seconds the hub waits for an apply's answer before it kills the applier as hung and
starts another, which applies the same rows again.

A hung applier stalls the hub's writes once the store's bound on entries waiting for
an apply is reached (``MAX_UNAPPLIED``), so the wait is a stall users see, and should
be no longer than it must. An apply of 12,768 entries (what ``APPLY_ENTRIES`` lets
gather) took 0.07 s on the machine this was built on, so one of the most an apply
takes (``MAX_UNAPPLIED``, 65,536) about 0.35 s; waiting for a lock held by another
program lasts :data:`BUSY_TIMEOUT` at most, after which the apply fails and is tried
again. 30 s leaves a slow disk two orders of magnitude. (It was 120 s, a guess.)"""

_REQUEST = struct.Struct("!QQQB")
_REPLAY = 1  # request flag: some entries may be in the tables already
_ANSWER = struct.Struct("!BI")


class _Row(msgspec.Struct, frozen=True, gc=False):
    """An entry as the journal holds it: the fields of
    :class:`duplex.store.base.Entry`, by name (a test keeps the two the same)."""

    user: str
    seq: int
    kind: str
    peer: str
    msg_id: bytes
    body: str
    ts: int


# One journal row: entries, (mailbox, device, seq, ts) cursors and (mailbox,
# last_seq, acked_seq, messages, delivered) mailbox states, in the order they happened.
_JournalRow = tuple[
    list[_Row],
    list[tuple[str, str, int, int]],
    list[tuple[str, int, int, int, int]],
]
_decoder = msgspec.msgpack.Decoder(_JournalRow)
_ROWS = "SELECT id, ops FROM journal WHERE id > ? AND id <= ? ORDER BY id"

Folded = tuple[
    list[tuple[str, int, str, str, bytes, str, int]],
    list[tuple[str, str, int, int]],
    list[tuple[str, int, int, int, int]],
]
"""What journal rows write: entry rows, cursor rows, mailbox rows."""


def fold(blobs: Iterable[bytes]) -> Folded:
    """The changes of journal rows, in order, as one set of table rows: every entry,
    each cursor at its highest sequence, each mailbox at its last state."""
    entries: list[tuple[str, int, str, str, bytes, str, int]] = []
    cursors: dict[tuple[str, str], tuple[int, int]] = {}
    boxes: dict[str, tuple[str, int, int, int, int]] = {}
    astuple = msgspec.structs.astuple
    for blob in blobs:
        rows, row_cursors, states = _decoder.decode(blob)
        entries += map(astuple, rows)
        for mailbox, device, seq, ts in row_cursors:
            old = cursors.get((mailbox, device))
            if old is None or seq >= old[0]:
                cursors[mailbox, device] = (seq, ts)
        for state in states:
            boxes[state[0]] = state
    return (
        entries,
        [(mailbox, device, seq, ts) for (mailbox, device), (seq, ts) in cursors.items()],
        list(boxes.values()),
    )


def write_folded(conn: sqlite3.Connection, folded: Folded, *, replay: bool = False) -> None:
    """Writes folded journal rows to the tables, in the caller's transaction.

    ``replay``: some entries may be there already (journal rows that an apply covered
    before a crash): an entry is its (mailbox, seq), so those are skipped.
    """
    entries, cursors, boxes = folded
    if entries:
        conn.executemany(INSERT_ENTRY.replace("INSERT", "INSERT OR IGNORE", replay), entries)
    if cursors:
        conn.executemany(UPSERT_CURSOR, cursors)
    if boxes:
        conn.executemany(UPSERT_BOX, boxes)


def name_thread(name: str) -> None:
    """Names the calling thread for the OS (what ``top -H``, ``ps -L`` and
    ``benchmarks/hub_relay.py`` show; Linux keeps 15 characters), where it can."""
    with (
        contextlib.suppress(OSError),
        open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm,
    ):
        comm.write(name[:15])


class ApplyFailed(sqlite3.OperationalError):
    """An apply the applier could not commit (``sqlite_errorcode`` says why: a busy or
    full database can pass), or the applier itself failed."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.sqlite_errorcode = code


class ApplierGone(ApplyFailed):
    """The applier ended, or stopped answering and was killed."""

    def __init__(self, message: str) -> None:
        super().__init__(-1, message)


class ApplierProcess:
    """The hub's side of the applier: starts it, tells it what to apply, stops it.

    One thread uses it (the store's table writer): :meth:`apply` blocks without the
    GIL while the applier works.

    Args:
        path: the tables' database (migrated: the applier only writes rows).
        log: the journal's database.
        synchronous: the store's ``PRAGMA synchronous``.
        nice: added to this process's scheduling niceness for the applier.
        timeout: seconds to wait for an answer (see :data:`ANSWER_TIMEOUT`).
        hold: a descriptor the applier keeps open until it ends (the store's lock:
            the store stays taken while a killed hub's applier finishes an apply).
    """

    def __init__(
        self,
        path: Path,
        log: Path,
        synchronous: str,
        nice: int = 0,
        timeout: float = ANSWER_TIMEOUT,
        hold: int = -1,
    ) -> None:
        self.path = path
        self.timeout = timeout
        script = str(Path(__file__).resolve())
        self._proc = subprocess.Popen(
            [sys.executable, "-I", script, str(path), str(log), synchronous],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(hold,) if hold >= 0 else (),
        )
        self.pid = self._proc.pid
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._out: IO[bytes] = self._proc.stdin
        self._in: IO[bytes] = self._proc.stdout
        self._greeted = False
        if nice:
            with contextlib.suppress(OSError):  # (raising a child's nice is allowed)
                mine = os.getpriority(os.PRIO_PROCESS, 0)
                os.setpriority(os.PRIO_PROCESS, self.pid, min(19, mine + nice))

    def apply(self, commit: int, after: int, upto: int, *, replay: bool = False) -> None:
        """Writes the journal rows ``after < id <= upto`` to the tables as their
        ``commit``-th write transaction; returns once it is committed. ``replay``: some
        of their entries may be in the tables already (skip them).

        Raises:
            ApplierGone: the applier ended, or did not answer within ``timeout`` and
                was killed (the apply may or may not be committed).
            ApplyFailed: it was not committed (rolled back; it may be sent again).
        """
        if not self._greeted:  # it opened the database (or says why it could not)
            self._answer()
            self._greeted = True
        try:
            os.write(self._out.fileno(), _REQUEST.pack(commit, after, upto, replay))
        except OSError as exc:
            raise self._gone(f"cannot write to it: {exc}") from None
        self._answer()

    def _answer(self) -> None:
        deadline = time.monotonic() + self.timeout
        code, length = _ANSWER.unpack(self._read(_ANSWER.size, deadline))
        if code:
            text = self._read(length, deadline).decode(errors="replace")
            raise ApplyFailed(code, text)

    def _read(self, n: int, deadline: float) -> bytes:
        """``n`` bytes of the applier's output, by ``deadline``."""
        fd = self._in.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        data = b""
        while len(data) < n:
            wait = deadline - time.monotonic()
            if wait <= 0 or not poller.poll(wait * 1000):
                self._proc.kill()
                raise self._gone(f"it did not answer within {self.timeout:g} s, so it was killed")
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise self._gone("it closed its output")
            data += chunk
        return data

    def _gone(self, detail: str) -> ApplierGone:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(1.0)
        status = self._proc.returncode
        return ApplierGone(
            f"the applier process ({self.pid}) ended: {detail} (exit status {status})"
        )

    def close(self, timeout: float = 30.0) -> int | None:
        """Closes the applier's input, so it ends, and waits for it; returns its exit
        status (None if it had to be killed)."""
        with contextlib.suppress(OSError):
            self._out.close()
        try:
            status = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            status = None
        with contextlib.suppress(OSError):
            self._in.close()
        return status


# -- the applier process ------------------------------------------------------


def _read_exactly(source: IO[bytes], n: int) -> bytes | None:
    data = source.read(n)
    if len(data) < n:
        return None  # the hub closed its end (or died): stop
    return data


def _answer(sink: IO[bytes], exc: BaseException | None) -> None:
    if exc is None:
        sink.write(_ANSWER.pack(0, 0))
    else:
        code = int(getattr(exc, "sqlite_errorcode", -1)) & 0xFF or 0xFF
        text = f"{type(exc).__name__}: {exc}".encode()
        sink.write(_ANSWER.pack(code, len(text)) + text)
    sink.flush()


class JournalGap(sqlite3.DatabaseError):
    """The journal lacks a row the hub says it committed."""


def _serve(
    conn: sqlite3.Connection, log: sqlite3.Connection, source: IO[bytes], sink: IO[bytes]
) -> None:
    while (header := _read_exactly(source, _REQUEST.size)) is not None:
        commit, after, upto, flags = _REQUEST.unpack(header)
        try:
            ids, rows = [], []
            for row_id, row in log.execute(_ROWS, (after, upto)):
                ids.append(row_id)
                rows.append(row)
            if not ids or ids[-1] != upto:
                raise JournalGap(
                    f"the journal has no row {upto} (rows {after + 1} to {upto} hold "
                    f"{len(ids)}): it was changed behind the hub's back"
                )
            conn.execute("BEGIN IMMEDIATE")
            write_folded(conn, fold(rows), replay=bool(flags & _REPLAY))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'commits'", (commit,))
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            _answer(sink, exc)
        else:
            _answer(sink, None)


def main(argv: list[str]) -> int:
    """The applier: ``applier.py DB LOG SYNCHRONOUS``, requests on stdin, answers on
    stdout."""
    if len(argv) != 3:
        print("usage: applier.py DB LOG SYNCHRONOUS (started by the SQLite store)", file=sys.stderr)
        return 2
    path, log_path, synchronous = argv
    if synchronous not in ("NORMAL", "FULL", "EXTRA"):
        print(f"applier: synchronous must be NORMAL, FULL or EXTRA: {synchronous}", file=sys.stderr)
        return 2
    # It ends when its input closes, not on a signal meant for the hub: Ctrl-C reaches
    # the whole process group, and a service manager's SIGTERM the whole cgroup, while
    # the hub, stopping, still hands it the last apply.
    name_thread("duplex-applier")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        log = sqlite3.connect(log_path, timeout=BUSY_TIMEOUT, isolation_level=None)
        log.execute("PRAGMA query_only = ON")
        log.execute("SELECT count(*) FROM journal").fetchone()  # it is a journal
    except Exception as exc:  # the store hears why at its first apply
        with contextlib.suppress(BrokenPipeError):
            _answer(sink, exc)
        return 1
    with contextlib.suppress(BrokenPipeError):
        _answer(sink, None)  # ready
        _serve(conn, log, source, sink)
    # Out without closing the connection: the last connection to close checkpoints the
    # log into the database and deletes it, and if the hub died, that would rewrite
    # what the crash left behind before the hub's next start had checked it. (No
    # transaction is open here; the hub's own connection checkpoints at its close.)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
