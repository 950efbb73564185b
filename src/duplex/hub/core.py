"""The hub: accounts, sessions, presence, relay, offline store, end-to-end acks.

Data flow of one message (DESIGN.md section 3)::

    alice  --Send{id, to=bob}-->  hub  --store_message (group commit, fsync)-->  store
    alice  <--Stored{id, seq, path}--  hub                               (durable now)
                                  hub  --Deliver{seq, id}-->  each bob session online
                                  hub  <--Ack{upto}--  bob     (in bob's local history)
                                  hub  --ack: delivered + receipt in alice's mailbox-->
    alice  <--Deliver{kind=receipt, id}--  hub                           ("delivered")

Every push is a *mailbox entry* with a per-user sequence number, and a session
receives its user's entries strictly in sequence. :meth:`Hub.deliver` keeps that
invariant with a cursor per session: an entry that is next is sent; one already sent
is dropped; one after a gap sends the session back to *replay*, which reads the
gap from the store. A login starts in replay from the sequence the device says it
holds. So nothing reaches a device twice or out of order, whatever the path, and
nothing is lost: the store is the source of truth and pushes are only a shortcut.

The hub knows the ``Store`` and ``Broker`` protocols only, never a backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec

from duplex.broker.base import Broker, Routed, SessionInfo
from duplex.config import HubConfig
from duplex.errors import DuplexError, StoreError
from duplex.hub.accounts import (
    MIN_PASSWORD,
    NAME_RULE,
    LoginThrottle,
    PasswordHasher,
    TokenBucket,
    hash_token,
    new_token,
    valid_name,
)
from duplex.hub.connection import HubConnection
from duplex.hub.metrics import HubMetrics
from duplex.protocol.events import Closed, Event, Received, TimedOut
from duplex.protocol.hub import SessionConfig
from duplex.protocol.tickets import mint_ticket
from duplex.store.base import Entry, NewMessage, Store, Stored
from duplex.wire import messages as m

__all__ = ["Hub", "LiveSession"]

log = logging.getLogger("duplex.hub")

REPLAY_PAGE = 256
"""Entries read from the store per replay step."""

KNOWN_USERS_LIMIT = 100_000
"""User names remembered as existing, so a Send to them needs no store read."""

RECEIPT_FLUSH_DELAY = 0.01
"""Seconds a receipt pushed to its sender may wait for company before it is written.

A receipt ("your message was delivered") changes a tick on the sender's screen, which
nobody can tell 10 ms late; a write of its own costs the hub a system call, and the
sender a wake-up, for every message. So a receipt leaves with the next frame for that
connection (the next message's Stored, most often) or after this delay, whichever
comes first, as TCP's delayed ACK waits for data to ride on (the client acks its
receipts the same way: :data:`duplex.client.core.RECEIPT_ACK_DELAY`). Without it, a
sender writing every few milliseconds cost the hub three writes per message instead
of two (``benchmarks/hub_relay.py --rate 13500``, counted with ``perf stat``)."""


@dataclasses.dataclass(slots=True, eq=False)
class LiveSession:
    """A logged-in session on this node.

    Attributes:
        info: what the broker publishes about it.
        conn: its connection.
        cursor: the highest sequence sent to it (or held by it at login).
        acked: the highest sequence it acked.
        replaying: True while entries are read from the store; pushes wait in ``pending``.
        pending: entries pushed during a replay.
        ticket_key: the key of its introduction tickets.
        token_hash: the hash of the token it logged in with, if any.
        ack_written: the highest ack the store has recorded for it.
        acking: True while a store.ack for it is under way.
    """

    info: SessionInfo
    conn: HubConnection
    cursor: int
    acked: int = 0
    replaying: bool = True
    pending: list[Entry] = dataclasses.field(default_factory=list)
    ticket_key: bytes = b""
    token_hash: bytes | None = None
    ack_written: int = 0
    acking: bool = False

    @property
    def user(self) -> str:
        """The session's user."""
        return self.info.user


def _deliver_message(entry: Entry, path: str = "relayed") -> m.Deliver:
    return m.Deliver(
        seq=entry.seq,
        kind=entry.kind,
        peer=entry.peer,
        id=entry.msg_id,
        body=entry.body,
        ts=entry.ts,
        path=path,  # type: ignore[arg-type]
    )


def _behind_nat(info: SessionInfo) -> bool:
    """True when the address the hub saw is none of the addresses the client reported."""
    if not info.endpoints:
        return False
    observed = info.endpoints[-1].rpartition(":")[0]
    return all(e.rpartition(":")[0] != observed for e in info.endpoints[:-1])


def _gone(conn: HubConnection) -> bool:
    # A function, not an inline check: the connection can close while we await.
    return conn.session.closed


def _entry_from(payload: Any) -> Entry:
    return Entry(*payload)


class Hub:
    """The messenger server of one node.

    Args:
        config: the hub configuration.
        store: durable state.
        broker: presence and cross-node routing.
        hasher: password hashing (tests pass a cheap one).
        clock: wall-clock milliseconds (message timestamps, token expiry).
    """

    def __init__(
        self,
        config: HubConfig,
        store: Store,
        broker: Broker,
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.config = config
        self.store = store
        self.broker = broker
        self.node = broker.node
        self.hasher = hasher or PasswordHasher(config.argon2_time_cost, config.argon2_memory_kib)
        self.clock = clock
        self.loop = asyncio.get_running_loop()
        self.session_config = SessionConfig(
            max_frame=config.max_frame,
            auth_timeout=config.auth_timeout,
            heartbeat=config.heartbeat,
            grace=config.grace,
        )
        self.metrics = HubMetrics()
        self.connections: set[HubConnection] = set()
        self.local: dict[str, LiveSession] = {}
        self.by_user: dict[str, dict[str, LiveSession]] = {}
        self.throttle = LoginThrottle(
            config.login_rate, config.login_burst, config.ip_login_rate, config.ip_login_burst
        )
        self._send_buckets: dict[str, TokenBucket] = {}
        self._known_users: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dirty: list[HubConnection] = []  # connections with frames to write
        self._lazy: list[HubConnection] = []  # connections with only receipts to write
        self._lazy_due: list[HubConnection] = []  # of those, written at the next tick
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._storing = 0  # writes (messages, acks) handed to the store, not answered yet
        self._handlers: dict[
            type[m.Message], Callable[[HubConnection, Any], Awaitable[None] | None]
        ] = {
            m.Register: self._on_register,
            m.Login: self._on_login,
            m.Send: self._on_send,
            m.Ack: self._on_ack,
            m.ContactAdd: self._on_contact_add,
            m.ContactRemove: self._on_contact_remove,
            m.ContactList: self._on_contact_list,
            m.Introduce: self._on_introduce,
            m.HistoryRequest: self._on_history,
            m.Logout: self._on_logout,
            m.DirectReport: self._on_direct_report,
        }
        # Optional fast paths of the backends (see _store_and_route_soon).
        self._stage_message: Callable[[NewMessage], Stored | None] | None = getattr(
            store, "stage_message", None
        )
        self._stage_ack: Callable[[str, str, int, int], list[Entry] | None] | None = getattr(
            store, "stage_ack", None
        )
        self._when_durable: Callable[[Callable[[StoreError | None], object]], None] | None = (
            getattr(store, "when_durable", None)
        )
        self._sessions_now: Callable[[str], list[SessionInfo]] | None = getattr(
            broker, "sessions_now", None
        )
        self._refresher: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the broker and the periodic tasks."""
        await self.broker.start(self._on_routed)
        self._refresher = self.loop.create_task(self._refresh_presence())
        self._stats_task = self.loop.create_task(self._refresh_stats())

    def flush_later(self, conn: HubConnection) -> None:
        """Writes what ``conn`` queued at the end of this turn of the loop, with every
        other connection that queued something (one callback for all of them)."""
        if not self._dirty:
            self.loop.call_soon(self._flush_dirty)
        self._dirty.append(conn)

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn._flush()

    def flush_lazily(self, conn: HubConnection) -> None:
        """Writes what ``conn`` queued after :data:`RECEIPT_FLUSH_DELAY` (up to twice
        that), unless something else is written to it first and takes it along."""
        if self._lazy_timer is None:
            self._lazy_timer = self.loop.call_later(RECEIPT_FLUSH_DELAY, self._flush_lazy)
        self._lazy.append(conn)

    def _flush_lazy(self) -> None:
        # Two generations, one timer: what was queued before the last tick is written
        # now, what came since waits for the next one. (One list flushed at each tick
        # would give a receipt queued just before it no time to find company.)
        due, self._lazy_due, self._lazy = self._lazy_due, self._lazy, []
        self._lazy_timer = None
        if self._lazy_due:
            self._lazy_timer = self.loop.call_later(RECEIPT_FLUSH_DELAY, self._flush_lazy)
        for conn in due:
            if conn._lazy_scheduled and not conn.closed:
                conn._flush()

    def protocol_factory(self) -> HubConnection:
        """Makes the protocol of a new connection (for ``loop.create_server``)."""
        return HubConnection(self)

    async def close(self, reason: str = "the hub is shutting down") -> None:
        """Closes every connection (clients will reconnect) and waits for pending work."""
        for task in (self._refresher, self._stats_task):
            if task is not None:
                task.cancel()
        if self._lazy_timer is not None:  # (closing a connection flushes its receipts)
            self._lazy_timer.cancel()
            self._lazy_timer = None
        for conn in list(self.connections):
            conn.close("shutdown", reason)
        for _ in range(100):  # ten seconds at most
            if not self._tasks and not self._storing:
                break
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=0.1)
            else:
                await asyncio.sleep(0.1)  # stores in flight answer through callbacks
        await self.broker.close()

    def track(self, task: asyncio.Task[Any]) -> None:
        """Keeps a reference to a task until it ends (asyncio keeps only weak ones)."""
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("hub task failed: %s", exc, exc_info=exc)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Runs ``coro`` as a tracked task."""
        self.track(self.loop.create_task(coro))

    # -- connections --------------------------------------------------------------------

    def admit(self, conn: HubConnection) -> bool:
        """Counts a new connection; False when the hub is full."""
        if len(self.connections) >= self.config.max_connections:
            self.metrics.refused.labels("busy").inc()
            return False
        self.connections.add(conn)
        self.metrics.connections.set(len(self.connections))
        return True

    def connection_gone(self, conn: HubConnection) -> None:
        """Forgets a closed connection and, if it was logged in, its session."""
        self.connections.discard(conn)
        self.metrics.connections.set(len(self.connections))
        while conn._inbox:  # the Closed event; requests still queued go with it
            event = conn._inbox.popleft()
            if isinstance(event, Closed):
                self.handle(conn, event)
        live = conn.live
        if live is None:
            return
        conn.live = None
        self.local.pop(live.info.session, None)
        mine = self.by_user.get(live.user)
        if mine is not None:
            mine.pop(live.info.session, None)
            if not mine:
                del self.by_user[live.user]
        self.metrics.sessions.set(len(self.local))
        self.metrics.users_online.set(len(self.by_user))
        self.spawn(self._session_down(live.info))

    async def _session_down(self, info: SessionInfo) -> None:
        if await self.broker.session_down(info):
            await self._notify_presence(info.user, False)

    # -- dispatch -------------------------------------------------------------------------

    def handle(self, conn: HubConnection, event: Event) -> Awaitable[None] | None:
        """Acts on one session event; returns an awaitable when later events must wait."""
        if isinstance(event, Received):
            handler = self._handlers.get(type(event.message))
            if handler is not None:
                return handler(conn, event.message)
            return None
        if isinstance(event, TimedOut):
            log.info("%s: %s timeout, closing", conn.peer, event.what)
            return None
        if isinstance(event, Closed) and event.by_peer and event.code not in ("eof",):
            self.metrics.refused.labels(event.code).inc()
            log.info("%s: closed: %s", conn.peer, event.reason)
        return None

    def _refuse(
        self,
        conn: HubConnection,
        code: str,
        message: str,
        *,
        rid: int = 0,
        msg_id: bytes | None = None,
    ) -> None:
        self.metrics.refused.labels(code).inc()
        conn.send(m.Error(code, message, rid=rid, id=msg_id))

    # -- accounts -------------------------------------------------------------------------

    async def _on_register(self, conn: HubConnection, msg: m.Register) -> None:
        wait = self.throttle.check(conn.ip, "", self.loop.time())
        self.throttle.registered(conn.ip, self.loop.time())
        if wait:
            self._refuse(
                conn,
                "throttled",
                f"too many attempts; try again in {math.ceil(wait)} s",
                rid=msg.rid,
            )
            return
        if not valid_name(msg.user):
            self._refuse(conn, "bad-name", f"a user name is {NAME_RULE}", rid=msg.rid)
            return
        if len(msg.password) < MIN_PASSWORD:
            reason = f"a password needs at least {MIN_PASSWORD} characters"
            self._refuse(conn, "weak-password", reason, rid=msg.rid)
            return
        digest = await self.loop.run_in_executor(None, self.hasher.hash, msg.password)
        if not await self.store.create_user(msg.user, digest, self.clock()):
            self._refuse(conn, "name-taken", f"the name {msg.user!r} is taken", rid=msg.rid)
            return
        self._known_users.add(msg.user)
        log.info("registered %s from %s", msg.user, conn.peer)
        conn.send(m.Registered(rid=msg.rid, user=msg.user))

    async def _on_login(self, conn: HubConnection, msg: m.Login) -> None:
        session = conn.session
        now = self.loop.time()
        wait = self.throttle.check(conn.ip, msg.user, now)
        if wait:
            self.metrics.logins.labels("throttled").inc()
            session.refuse_login(
                "throttled", f"too many login attempts; try again in {math.ceil(wait)} s", msg.rid
            )
            conn._flush()
            return
        token_hash: bytes | None = None
        if msg.token:
            token_hash = hash_token(msg.token)
            owner = await self.store.token_owner(token_hash, self.clock())
            ok = owner is not None and owner[0] == msg.user
        else:
            user = await self.store.get_user(msg.user)
            ok = await self.loop.run_in_executor(
                None, self.hasher.verify, user.password_hash if user else None, msg.password
            )
        if _gone(conn):
            return
        if not ok:
            self.throttle.failed(conn.ip, msg.user, now)
            self.metrics.logins.labels("refused").inc()
            log.info("login refused: %s from %s", msg.user, conn.peer)
            reason = "the session token is invalid or expired; log in with your password"
            session.refuse_login(
                "bad-credentials", reason if msg.token else "wrong user name or password", msg.rid
            )
            conn._flush()
            return
        self.throttle.succeeded(conn.ip, msg.user)
        self._known_users.add(msg.user)
        token = ""
        if msg.want_token:
            token = new_token()
            token_hash = hash_token(token)
            expires = self.clock() + int(self.config.token_days * 86_400_000)
            await self.store.save_token(token_hash, msg.user, msg.device, expires)
        # The hub adds the address it saw the client come from: behind a NAT that is
        # the public mapping, which is what a peer must dial (or punch towards).
        endpoints = tuple(dict.fromkeys([*msg.endpoints, conn.peer]))
        ticket_key = os.urandom(32)
        info = SessionInfo(
            session=secrets.token_hex(8),
            user=msg.user,
            device=msg.device,
            node=self.node,
            endpoints=endpoints,
            fingerprint=msg.fingerprint,
            since=self.clock(),
            ticket_key=ticket_key,
        )
        # One connection per device: a new login of the same device replaces the old
        # one, which is probably half-open (the device lost its network and came back).
        # (Not when a one-shot command of a device says so: its running client stays.)
        if msg.replace:
            for old in list(self.by_user.get(msg.user, {}).values()):
                if old.info.device == msg.device:
                    old.conn.close("replaced", "this device logged in again on another connection")
        live = LiveSession(
            info,
            conn,
            cursor=msg.last_seq,
            acked=msg.last_seq,
            # What the device holds may not be acked in the store: its Ack can have been
            # lost with its last connection. Below ``acked``, the first _ack writes it
            # again (acking a range twice creates nothing), so its receipts are not lost.
            ack_written=0,
            ticket_key=ticket_key,
            token_hash=token_hash,
        )
        last_seq = await self.store.last_seq(msg.user)
        if _gone(conn):
            return
        if msg.store and msg.store != self.store.store_id:
            # The device's sequence counts in another store (another hub's, or this
            # hub's before its data dir was replaced): taken here, it would skip that
            # many entries of this mailbox. It gets all of them.
            log.info(
                "%s (device %s) holds sequence %d of another store: sending its mailbox "
                "from the start",
                msg.user,
                msg.device,
                msg.last_seq,
            )
            live.cursor = live.acked = live.ack_written = 0
        elif live.cursor > last_seq:
            # The device claims more than the store has: trust the store.
            live.cursor = live.acked = live.ack_written = last_seq
        conn.live = live
        self.local[info.session] = live
        self.by_user.setdefault(msg.user, {})[info.session] = live
        self.metrics.sessions.set(len(self.local))
        self.metrics.users_online.set(len(self.by_user))
        self.metrics.logins.labels("ok").inc()
        conn.send(
            m.Welcome(
                rid=msg.rid,
                user=msg.user,
                session=info.session,
                device=msg.device,
                last_seq=last_seq,
                heartbeat=self.config.heartbeat,
                grace=self.config.grace,
                ticket_key=live.ticket_key,
                token=token,
                observed=conn.peer,
                store=self.store.store_id,
            )
        )
        log.info("%s logged in (device %s) from %s", msg.user, msg.device, conn.peer)
        first = await self.broker.session_up(info)
        self.spawn(self._replay(live))
        if live.acked > live.ack_written and not live.acking:
            live.acking = True
            self.spawn(self._ack(live))
        if first:
            self.spawn(self._notify_presence(msg.user, True))

    def _on_logout(self, conn: HubConnection, msg: m.Logout) -> Awaitable[None] | None:
        live = conn.live
        conn.send(m.Ok(rid=msg.rid))
        if live is not None and live.token_hash is not None:
            token_hash = live.token_hash

            async def forget() -> None:
                await self.store.delete_token(token_hash)
                conn.close("bye", "logged out")

            return forget()
        conn.close("bye", "logged out")
        return None

    # -- messages -----------------------------------------------------------------------

    def _on_send(self, conn: HubConnection, msg: m.Send) -> Awaitable[None] | None:
        live = conn.live
        assert live is not None
        bucket = self._send_buckets.get(live.user)
        now = self.loop.time()
        if bucket is None:
            bucket = self._send_buckets[live.user] = TokenBucket(
                self.config.send_rate, self.config.send_burst, now
            )
        if not bucket.take(now):
            self._refuse(
                conn,
                "rate-limited",
                f"more than {self.config.send_rate:g} messages/s; retry in "
                f"{bucket.wait_time(now):.1f} s",
                msg_id=msg.id,
            )
            return None
        if msg.to in self._known_users:
            # The hot path: no suspension before the store call, so the store sees
            # this connection's messages in the order they came.
            self._store_and_route_soon(conn, live, msg)
            return None
        return self._send_to_unknown(conn, live, msg)

    def _store_and_route_soon(self, conn: HubConnection, live: LiveSession, msg: m.Send) -> None:
        message = NewMessage(live.user, msg.to, msg.id, msg.body, self.clock())
        # A sender may not have more than STORE_BACKLOG bytes waiting for the store:
        # past that its reads pause, so a flood cannot grow the hub's memory.
        conn.hold(len(msg.body))
        self._storing += 1
        if self._stage_message is not None and self._sessions_now is not None:
            # Without a task, coroutine or future per message when the backends allow
            # it (an embedded store and the in-process broker): the store answers at
            # once, and we act on the answer once it is durable.
            assert self._when_durable is not None
            try:
                stored = self._stage_message(message)
            except DuplexError as exc:
                self._stored(conn, msg, None, exc)
                return
            if stored is not None:
                self._when_durable(functools.partial(self._stored, conn, msg, stored))
                return
        self.spawn(self._store_and_route(conn, message, msg))

    def _stored(
        self,
        conn: HubConnection,
        msg: m.Send,
        stored: Stored | None,
        error: DuplexError | None,
    ) -> None:
        self._storing -= 1
        conn.release(len(msg.body))
        if error is not None or stored is None:
            log.error("storing a message from %s failed: %s", conn.peer, error)
            if not conn.session.closed:
                conn.close("internal", "the hub could not store the message; it will be resent")
            return
        assert self._sessions_now is not None
        sessions = self._sessions_now(stored.entry.user)
        self._answer_stored(conn, msg, stored, sessions)
        if not stored.duplicate:
            self._deliver_here(stored.entry, sessions)

    def _deliver_here(self, entry: Entry, sessions: list[SessionInfo]) -> None:
        """:meth:`_push` for the in-process broker, whose sessions are all on this node."""
        for info in sessions:
            target = self.local.get(info.session)
            if target is not None:
                self.deliver(target, entry)

    async def _send_to_unknown(self, conn: HubConnection, live: LiveSession, msg: m.Send) -> None:
        if await self.store.get_user(msg.to) is None:
            self._refuse(conn, "no-such-user", f"there is no user {msg.to!r}", msg_id=msg.id)
            return
        if len(self._known_users) >= KNOWN_USERS_LIMIT:
            self._known_users.clear()
        self._known_users.add(msg.to)
        self._store_and_route_soon(conn, live, msg)

    async def _store_and_route(self, conn: HubConnection, message: NewMessage, msg: m.Send) -> None:
        # What _stored does on the fast path: without it, every message that waited
        # for room in the store stayed counted against its sender's backlog, whose
        # reads then stayed paused until the heartbeat grace dropped it.
        try:
            stored = await self.store.store_message(message)
        finally:
            self._storing -= 1
            conn.release(len(msg.body))
        sessions = await self.broker.sessions(stored.entry.user)
        self._answer_stored(conn, msg, stored, sessions)
        if not stored.duplicate:
            await self._push(stored.entry, sessions)

    def _answer_stored(
        self, conn: HubConnection, msg: m.Send, stored: Stored, sessions: list[SessionInfo]
    ) -> None:
        entry = stored.entry
        path: m.PATH = "relayed" if sessions else "stored"
        conn.send(
            m.Stored(id=msg.id, to=msg.to, seq=entry.seq, path=path, delivered=stored.delivered)
        )
        if stored.duplicate:
            # Stored once already, and pushed then (or replayed at the next login).
            self.metrics.duplicates.inc()
        else:
            self.metrics.stored.inc()

    def _on_ack(self, conn: HubConnection, msg: m.Ack) -> None:
        live = conn.live
        assert live is not None
        upto = min(msg.upto, live.cursor)  # cannot ack what was never sent
        if upto <= live.acked:
            return
        live.acked = upto
        if not live.acking:
            live.acking = True
            self._ack_soon(live)

    def _ack_soon(self, live: LiveSession) -> None:
        """Writes ``live``'s ack: staged at once when the backends allow (as
        :meth:`_store_and_route_soon`), else as a task."""
        if self._stage_ack is not None and self._sessions_now is not None:
            assert self._when_durable is not None
            upto = live.acked
            try:
                receipts = self._stage_ack(live.user, live.info.device, upto, self.clock())
            except DuplexError as exc:
                self._storing += 1
                self._acked(live, upto, [], exc)
                return
            if receipts is not None:
                self._storing += 1
                self._when_durable(functools.partial(self._acked, live, upto, receipts))
                return
        self.spawn(self._ack(live))

    def _acked(
        self, live: LiveSession, upto: int, receipts: list[Entry], error: DuplexError | None
    ) -> None:
        self._storing -= 1
        if error is not None:
            live.acking = False  # the next Ack retries; the device keeps its cursor
            log.error("writing an ack of %s failed: %s", live.user, error)
            return
        live.ack_written = upto
        if receipts:
            self.metrics.delivered.inc(len(receipts))
            assert self._sessions_now is not None
            for receipt in receipts:
                self._deliver_here(receipt, self._sessions_now(receipt.user))
        if live.ack_written < live.acked:
            self._ack_soon(live)
        else:
            live.acking = False

    async def _ack(self, live: LiveSession) -> None:
        # One store.ack at a time per session: acks are cumulative, so the ones that
        # arrive meanwhile fold into the next write (one write for a burst, not one each).
        try:
            while live.ack_written < live.acked:
                upto = live.acked
                receipts = await self.store.ack(live.user, live.info.device, upto, self.clock())
                live.ack_written = upto
                if receipts:
                    self.metrics.delivered.inc(len(receipts))
                for receipt in receipts:
                    await self._push(receipt)
        finally:
            live.acking = False

    # -- delivery -------------------------------------------------------------------------

    async def _push(self, entry: Entry, sessions: list[SessionInfo] | None = None) -> None:
        """Sends a new mailbox entry to every session of its user, wherever it is."""
        if sessions is None:
            sessions = await self.broker.sessions(entry.user)
        for info in sessions:
            if info.node == self.node:
                live = self.local.get(info.session)
                if live is not None:
                    self.deliver(live, entry)
            else:
                await self.broker.route(
                    info.node,
                    Routed(
                        entry.user, "entry", msgspec.structs.astuple(entry), session=info.session
                    ),
                )

    def deliver(self, live: LiveSession, entry: Entry) -> None:
        """Sends ``entry`` to ``live`` if it is the next one; otherwise see the module doc."""
        if live.replaying:
            live.pending.append(entry)
            return
        if entry.seq <= live.cursor:
            return  # already sent (a replay got there first)
        if entry.seq != live.cursor + 1:
            live.replaying = True  # a gap: read it from the store
            live.pending.append(entry)
            self.spawn(self._replay(live))
            return
        frame = m.encode(_deliver_message(entry))
        if live.conn.send_frame(m.Deliver, frame, lazy=entry.kind == "receipt"):
            live.cursor = entry.seq
            self.metrics.pushed.inc()

    async def _replay(self, live: LiveSession) -> None:
        """Sends ``live`` every stored entry after its cursor, then the pushed ones."""
        conn = live.conn
        while not conn.closed:
            entries = await self.store.fetch(live.user, live.cursor, REPLAY_PAGE)
            for entry in entries:
                if entry.seq != live.cursor + 1:
                    break
                frame = m.encode(_deliver_message(entry, "stored"))
                if not conn.send_frame(m.Deliver, frame, bulk=True):
                    return
                live.cursor = entry.seq
                self.metrics.pushed.inc()
            if len(entries) < REPLAY_PAGE:
                # Caught up with the store; now what was pushed meanwhile, in order.
                # No suspension from here to the end: nothing can slip in between.
                pending, live.pending = sorted(live.pending, key=lambda e: e.seq), []
                gap = False
                for entry in pending:
                    if entry.seq <= live.cursor:
                        continue
                    if entry.seq != live.cursor + 1:
                        gap = True
                        break
                    if not conn.send_frame(m.Deliver, m.encode(_deliver_message(entry))):
                        return
                    live.cursor = entry.seq
                if not gap:
                    live.replaying = False
                    return
            try:
                await asyncio.wait_for(conn.drain(), self.config.grace)
            except TimeoutError:
                # Not a byte read for a whole grace period: a consumer that stopped.
                self.metrics.refused.labels("slow-consumer").inc()
                conn.abort()
                return

    async def _on_routed(self, item: Routed) -> None:
        """An item another node routed here."""
        if item.kind == "entry":
            entry = _entry_from(item.payload)
            targets = (
                [self.local[item.session]]
                if item.session in self.local
                else list(self.by_user.get(item.user, {}).values())
                if not item.session
                else []
            )
            for live in targets:
                self.deliver(live, entry)
        elif item.kind == "punch":
            peer, endpoint = item.payload
            target = self.local.get(item.session)
            if target is not None:
                target.conn.send(m.Punch(peer=peer, endpoint=endpoint))
        elif item.kind == "presence":
            user, online = item.payload
            for live in list(self.by_user.get(item.user, {}).values()):
                live.conn.send(m.Presence(user=user, online=online))
        elif item.kind == "resync":
            # The broker may have lost entries routed to these sessions (a reconnect to
            # Redis): each re-reads the store from its cursor, so nothing waits for the
            # next entry or login. No user means every session of this node.
            targets = (
                list(self.local.values())
                if not item.user
                else [self.local[item.session]]
                if item.session in self.local
                else list(self.by_user.get(item.user, {}).values())
                if not item.session
                else []
            )
            for live in targets:
                if not live.replaying and not live.conn.closed:
                    live.replaying = True
                    self.spawn(self._replay(live))

    # -- presence -------------------------------------------------------------------------

    async def _notify_presence(self, user: str, online: bool) -> None:
        watchers = await self.store.watchers(user)
        for watcher in watchers:
            for info in await self.broker.sessions(watcher):
                if info.node == self.node:
                    live = self.local.get(info.session)
                    if live is not None:
                        live.conn.send(m.Presence(user=user, online=online))
                else:
                    await self.broker.route(
                        info.node, Routed(watcher, "presence", (user, online), session=info.session)
                    )

    async def _refresh_presence(self) -> None:
        # Brokers with TTLs (Redis) need a sign of life for every session.
        while True:
            await asyncio.sleep(self.config.heartbeat)
            try:
                gone = await self.broker.refresh([live.info for live in self.local.values()])
            except DuplexError as exc:
                log.warning("presence refresh failed: %s", exc)
                continue
            # Users whose node died: nobody told their watchers, this node does.
            for user in gone:
                self.spawn(self._notify_presence(user, False))

    async def _refresh_stats(self) -> None:
        while True:
            try:
                stats = await self.store.stats()
                self.metrics.pending.set(stats.pending)
                self.metrics.messages_total.set(stats.messages)
            except DuplexError as exc:
                log.warning("store stats failed: %s", exc)
            await asyncio.sleep(5)

    # -- contacts ---------------------------------------------------------------------------

    async def _on_contact_add(self, conn: HubConnection, msg: m.ContactAdd) -> None:
        live = conn.live
        assert live is not None
        if msg.user == live.user:
            self._refuse(conn, "bad-contact", "you cannot add yourself", rid=msg.rid)
            return
        if await self.store.get_user(msg.user) is None:
            self._refuse(conn, "no-such-user", f"there is no user {msg.user!r}", rid=msg.rid)
            return
        await self.store.add_contact(live.user, msg.user)
        conn.send(m.Ok(rid=msg.rid))
        online = bool(await self.broker.sessions(msg.user))
        conn.send(m.Presence(user=msg.user, online=online))

    async def _on_contact_remove(self, conn: HubConnection, msg: m.ContactRemove) -> None:
        live = conn.live
        assert live is not None
        if not await self.store.remove_contact(live.user, msg.user):
            self._refuse(conn, "no-such-contact", f"{msg.user!r} is not a contact", rid=msg.rid)
            return
        conn.send(m.Ok(rid=msg.rid))

    async def _on_contact_list(self, conn: HubConnection, msg: m.ContactList) -> None:
        live = conn.live
        assert live is not None
        contacts = [
            m.Contact(user=name, online=bool(await self.broker.sessions(name)))
            for name in await self.store.contacts(live.user)
        ]
        conn.send(m.Contacts(rid=msg.rid, contacts=contacts))

    async def _on_history(self, conn: HubConnection, msg: m.HistoryRequest) -> None:
        live = conn.live
        assert live is not None
        entries = await self.store.history(live.user, msg.peer, msg.before or None, msg.limit)
        conn.send(m.History(rid=msg.rid, entries=[_deliver_message(e, "stored") for e in entries]))

    # -- introductions (direct peer-to-peer) ------------------------------------------

    async def _on_introduce(self, conn: HubConnection, msg: m.Introduce) -> None:
        live = conn.live
        assert live is not None
        sessions = await self.broker.sessions(msg.peer)
        if len(sessions) != 1 or not sessions[0].fingerprint:
            # Offline, several devices (every device must get the message: relay), or
            # a client that has no peer listener.
            conn.send(m.PeerOffline(rid=msg.rid, peer=msg.peer, sessions=len(sessions)))
            return
        target = sessions[0]
        key = await self._ticket_key(target)
        if key is None:
            conn.send(m.PeerOffline(rid=msg.rid, peer=msg.peer, sessions=0))
            return
        ticket = mint_ticket(
            key, live.user, target.user, target.device, self.clock(), os.urandom(16)
        )
        self.metrics.introductions.inc()
        endpoints = list(target.endpoints)
        punch = _behind_nat(live.info) and _behind_nat(target)
        if punch:
            # Both behind NAT: neither can accept, so both dial each other at once from
            # the mappings this hub observed (the last endpoint of each session).
            endpoints = [target.endpoints[-1]]
            request = m.Punch(peer=live.user, endpoint=live.info.endpoints[-1])
            if target.node == self.node:
                peer_live = self.local.get(target.session)
                if peer_live is not None:
                    peer_live.conn.send(request)
            else:
                await self.broker.route(
                    target.node,
                    Routed(target.user, "punch", (request.peer, request.endpoint), target.session),
                )
        conn.send(
            m.Introduction(
                rid=msg.rid,
                peer=target.user,
                device=target.device,
                endpoints=endpoints,
                fingerprint=target.fingerprint,
                ticket=ticket,
                punch=punch,
            )
        )

    def _on_direct_report(self, conn: HubConnection, msg: m.DirectReport) -> None:
        self.metrics.direct.labels(msg.outcome).inc()

    async def _ticket_key(self, target: SessionInfo) -> bytes | None:
        local = self.local.get(target.session)
        if local is not None:
            return local.ticket_key
        return target.ticket_key or None
