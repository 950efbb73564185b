"""The asyncio messenger client: one object, one event stream, no UI.

:class:`Client` keeps a connection to the hub alive (reconnecting with backoff and
jitter), logs in, and turns what arrives into :mod:`~duplex.client.events`:

* ``send(to, text)`` commits the message to the durable outbox *first*, then sends it
  if the hub is reachable; everything still ``queued`` is sent again after every
  login, and the hub's idempotent ids make that safe;
* an incoming message is written to the local history and only then acked, in one
  commit per batch of frames; a duplicate (same sender and id, whatever the path) is
  dropped before the application sees it;
* every sent message moves ``queued -> stored -> delivered`` with the path the hub
  reports (``relayed``/``stored``), or ``direct`` when a peer link carried it.

The direct path (:mod:`duplex.p2p`) plugs in behind :meth:`Client.send` through the
``router`` hook; without it, every message goes through the hub.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, cast

from duplex.client.events import (
    ClientEvent,
    ConnectionState,
    ConnectionStateChanged,
    MessageReceived,
    MessageStateChanged,
    PresenceChanged,
)
from duplex.client.local import LocalStore
from duplex.errors import (
    AuthError,
    BrokenResourceError,
    ClosedResourceError,
    DuplexError,
    RemoteError,
    Unsendable,
)
from duplex.protocol.events import Closed, Event, Received, TimedOut
from duplex.protocol.hub import HubClientSession, SessionConfig
from duplex.timers import LazyTimer
from duplex.tls import PinMismatch, client_context, format_fingerprint, peer_fingerprint
from duplex.wire import messages as m

__all__ = ["Client", "PinStore", "Router", "new_message_id", "register", "unsendable"]

log = logging.getLogger("duplex.client")

EVENTS_SOFT_LIMIT = 10_000
"""Undelivered events after which the client stops reading from the hub until the
application catches up (the hub then holds the rest, or drops us as a slow consumer
and replays it all at the next login)."""

RECEIPT_ACK_DELAY = 0.2
"""Seconds a read that brought only receipts waits before it is acked.

A message is acked as soon as it is in the local history: its sender waits for that
to see "delivered". A receipt changes nothing at the hub once we hold it; acking it
only moves our cursor, which the next login sets anyway (from the local history).
So receipts are acked like TCP's delayed ACK: at most every 200 ms, cumulatively, or
at once with the next message. Under a steady stream of replies that is one frame,
and one store write at the hub, per many receipts instead of one each."""

FATAL_CODES = frozenset({"bad-credentials", "version", "replaced"})
"""Hub refusals that retrying will not fix; the client stops and says why."""


def new_message_id(now_ms: int | None = None) -> bytes:
    """Returns a UUIDv7 (RFC 9562): 48 bits of ms time, then random bits.

    Time-ordered ids keep the hub's index appends local and make ids sortable.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return value.to_bytes(16, "big")


class PinStore:
    """Hub certificate fingerprints pinned on first use (like ssh's known_hosts).

    Args:
        path: the file, one ``host:port fingerprint`` per line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, str]:
        pins: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in self.path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2:
                    pins[parts[0]] = parts[1]
        return pins

    def pinned(self, hub: str) -> str | None:
        """Returns the fingerprint pinned for ``hub`` (``host:port``), or None."""
        return self._load().get(hub)

    def check(self, hub: str, fingerprint: str) -> bool:
        """Pins ``fingerprint`` for ``hub`` on first use; returns True if newly pinned.

        Raises:
            PinMismatch: a different fingerprint is pinned for ``hub``.
        """
        pins = self._load()
        known = pins.get(hub)
        if known == fingerprint:
            return False
        if known is not None:
            shown, pinned = format_fingerprint(fingerprint)[:47], format_fingerprint(known)[:47]
            raise PinMismatch(
                f"the hub at {hub} presented certificate {shown}..., "
                f"but {pinned}... was pinned on first use. Refusing to "
                f"connect: this may be an impostor. If the hub's certificate really changed, "
                f"remove its line from {self.path}."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(f"{hub} {fingerprint}\n")
        return True


class Router(Protocol):
    """Chooses the path of outgoing messages (the P2P layer implements it)."""

    async def start(self, client: Client) -> None:
        """Prepares before the first login (e.g. sets ``client.endpoints``)."""

    def route(self, client: Client, msg_id: bytes, peer: str, body: str, ts: int) -> bool:
        """Takes the message onto a direct path; False leaves it to the hub."""
        ...

    def online(self, client: Client) -> None:
        """The hub connection is up (a place to (re)start listeners and retries)."""

    async def close(self) -> None:
        """Stops every direct link."""

    def on_hub_message(self, client: Client, message: m.Message) -> None:
        """A hub push that is the router's business (``Punch``; ``Presence`` too)."""


class _HubLink(asyncio.Protocol):
    """The asyncio driver of a :class:`HubClientSession` (no logic beyond I/O and timers)."""

    def __init__(self, client: Client, config: SessionConfig, *, tls: bool = False) -> None:
        self.client = client
        self.tls = tls
        self.loop = client.loop
        self.session = HubClientSession(config, self.loop.time())
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[str] = self.loop.create_future()
        self.reason = ""
        self.received = 0  # bytes from the hub
        self._timer = LazyTimer(self.loop, self.session, self._after)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.flush()
        self._timer.arm()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.session.receive_data(data, self.loop.time())
        self._after()

    def why_closed(self, event: Closed) -> str:
        """Why the hub closed the connection, in words (``code: reason``)."""
        if event.code == "eof" and not self.received and not self.tls:
            # Not even its Hello: what a hub that uses TLS does to a client without it.
            return (
                "the hub closed the connection before it said anything: "
                f"if it uses TLS, connect with TLS ({TLS_HINT})"
            )
        return f"{event.code}: {event.reason}" if event.by_peer else event.reason

    def eof_received(self) -> bool:
        self.session.receive_eof()
        self._after()
        # Keep the transport for our own close; TLS transports close by themselves.
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.session.closed:
            self.session.receive_eof()
            events = self.session.events_received()
            if events:
                self.client._on_events(self, events)
        self._timer.cancel()
        if not self.lost.done():
            self.lost.set_result(self.reason or (str(exc) if exc else "connection closed"))

    def send(self, message: m.Message) -> bool:
        if self.session.closed:
            return False
        try:
            self.session.send(message)
        except DuplexError as exc:
            log.debug("not sent: %s", exc)
            return False
        self.flush()
        return True

    def flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.session.data_to_send():
            if chunk:
                transport.write(chunk)
            else:
                transport.close()

    def close(self) -> None:
        if not self.session.closed:
            self.session.close("", "")
            self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _after(self) -> None:
        self.flush()
        events = self.session.events_received()
        if events:
            self.client._on_events(self, events)
            if any(isinstance(e, TimedOut) for e in events):
                self.abort()  # the hub went silent: do not wait for TCP to give up
        self.flush()
        self._timer.arm()


def unsendable(to: str, text: str) -> str:
    """Why the wire cannot carry ``text`` to ``to`` (the hub would close the connection
    over it), or ``""``."""
    if not 1 <= len(to) <= m.MAX_NAME:
        return f"{to!r} cannot be a user name (1 to {m.MAX_NAME} characters)"
    if len(text) > m.MAX_TEXT:
        return f"a message is at most {m.MAX_TEXT:,} characters; this one has {len(text):,}"
    return ""


TLS_HINT = "--tls"
"""How a user turns TLS on, for the messages that suggest it (the CLI's flag)."""


def _why(exc: BaseException) -> str:
    """Why a connection attempt failed, in words (not ``[Errno 111] Connect call ...``)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: no hub listens there"
    if isinstance(exc, ssl.SSLError) and exc.reason == "WRONG_VERSION_NUMBER":
        # Our ClientHello answered by a plain hub's Hello frame.
        return f"the hub does not use TLS: connect without it (no {TLS_HINT})"
    if isinstance(exc, TimeoutError):
        return str(exc) or "no answer in time"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


class Client:
    """A messenger client for one user.

    Args:
        hub: the hub's ``(host, port)``.
        user: the user name.
        password: the password (or give ``token``).
        token: a session token from an earlier login.
        local: the local store; by default a file in ``data_dir``.
        data_dir: where ``local.db`` (and P2P identity) live; default: nothing on disk.
        tls: connect with TLS and pin the hub's certificate (needs ``pins``).
        pins: where pinned hub fingerprints live.
        want_token: ask the hub for a session token (see :attr:`token`).
        transient: a one-shot command's client: its login leaves the device's other
            connections alone (a running chat or inbox of the same device keeps its
            session), where a client's login ends them as half-open.
        session: heartbeat/timeouts before the hub's Welcome overrides them.
        reconnect: keep reconnecting after a loss (False: stop at the first).
        backoff: (first, max) seconds between reconnection attempts.
        router: the direct path, if any.
        agent: our software agent for Hello.
        bind: local address to connect from (e.g. ``127.0.0.2``).
    """

    def __init__(
        self,
        hub: tuple[str, int],
        user: str,
        *,
        password: str | None = None,
        token: str | None = None,
        local: LocalStore | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        tls: bool = False,
        pins: PinStore | None = None,
        want_token: bool = False,
        transient: bool = False,
        session: SessionConfig | None = None,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.2, 10.0),
        router: Router | None = None,
        agent: str = "duplex-client/0.1",
        bind: str | None = None,
    ) -> None:
        self.hub = hub
        self.user = user
        self.password = password
        self.token = token or ""
        if local is None:
            local = LocalStore(Path(data_dir) / "local.db" if data_dir else ":memory:")
        local.bind(f"{hub[0]}:{hub[1]}")
        self.local = local
        self.data_dir = Path(data_dir) if data_dir else None
        self.device = local.device_id()
        self.tls = tls
        self.pins = pins
        self.want_token = want_token
        self.transient = transient
        self.session_config = session or SessionConfig(agent=agent)
        self.reconnect = reconnect
        self.backoff = backoff
        self.router = router
        self.bind = bind
        self.endpoints: list[str] = []
        self.fingerprint = ""
        self.state: ConnectionState = "offline"
        self.session_id = ""
        self.ticket_key = b""
        self.observed = ""
        self.hub_last_seq = 0
        """The hub's last mailbox sequence for us at login: caught up when we hold it."""
        self.last_failure = ""
        """Why the last connection attempt or session ended (e.g. "connection refused:
        no hub listens there"); empty once online. Unlike the detail of the state
        events, it outlives the next attempt's ``connecting``."""
        self.hub_local: tuple[str, int] | None = None
        """Our end of the hub connection (the port hole punching reuses)."""
        self.loop = asyncio.get_running_loop()
        self._link: _HubLink | None = None
        self._queue: collections.deque[ClientEvent] = collections.deque()
        self._queue_event = asyncio.Event()
        self._paused = False
        self._rid = 0
        self._requests: dict[int, asyncio.Future[m.Message]] = {}
        self._ack_message = False  # the read being handled brought a message
        self._ack_later: asyncio.TimerHandle | None = None
        self._waiters: dict[bytes, list[tuple[str, asyncio.Future[str]]]] = {}
        self._online = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._outbox_changed = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._store_closed = False
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.fatal: str = ""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, *, wait_online: float | None = None) -> None:
        """Starts connecting (and reconnecting) in the background.

        Args:
            wait_online: seconds to wait for the first login; None returns at once, so
                that messages can be queued while the hub is unreachable.

        Raises:
            AuthError: the hub refused the credentials (raised if waiting).
            TimeoutError: not online within ``wait_online``.
        """
        if self._runner is not None:
            return
        if self.router is not None:
            await self.router.start(self)
        self._runner = self.loop.create_task(self._run())
        if wait_online is not None:
            await self.wait_online(wait_online)

    async def wait_online(self, timeout: float) -> None:
        """Waits until logged in.

        Raises:
            AuthError: the credentials were refused.
            TimeoutError: not online in time.
        """
        end = self.loop.time() + timeout
        while self.state != "online":
            if self.fatal:
                raise AuthError("fatal", self.fatal)
            remaining = end - self.loop.time()
            if remaining <= 0:
                raise TimeoutError(f"not online within {timeout:g} s")
            self._state_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state_changed.wait(), remaining)

    async def close(self) -> None:
        """Logs off (without forgetting the token) and stops reconnecting."""
        self._closing = True
        self._wake.set()
        if self.router is not None:
            await self.router.close()
        if self._link is not None:
            if self._ack_later is not None:  # a delayed ack of receipts: say it now
                self._send_ack(self._link)
            self._link.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for task in list(self._tasks):
            task.cancel()
        for fut in self._requests.values():
            if not fut.done():
                fut.set_exception(ClosedResourceError("client closed"))
        self._store_closed = True
        self.local.close()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the event stream ---------------------------------------------------------------

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Yields every event, in order, until the client is closed."""
        while not self._closing or self._queue:
            if not self._queue:
                self._queue_event.clear()
                await self._queue_event.wait()
                continue
            event = self._queue.popleft()
            if self._paused and len(self._queue) < EVENTS_SOFT_LIMIT // 2:
                self._paused = False
                if self._link is not None and self._link.transport is not None:
                    self._link.transport.resume_reading()
            yield event

    async def next_event(self, timeout: float | None = None) -> ClientEvent:
        """Returns the next event.

        Raises:
            TimeoutError: none within ``timeout``.
        """
        while not self._queue:
            self._queue_event.clear()
            await asyncio.wait_for(self._queue_event.wait(), timeout)
        return self._queue.popleft()

    def has_events(self) -> bool:
        """True when events are waiting."""
        return bool(self._queue)

    def pending_events(self) -> list[ClientEvent]:
        """Returns and removes every event queued now (for scripts and tests)."""
        events = list(self._queue)
        self._queue.clear()
        return events

    def emit(self, event: ClientEvent) -> None:
        """Queues an event for the application."""
        self._queue.append(event)
        self._queue_event.set()
        if not self._paused and len(self._queue) > EVENTS_SOFT_LIMIT:
            self._paused = True
            if self._link is not None and self._link.transport is not None:
                self._link.transport.pause_reading()

    def _set_state(self, state: ConnectionState, detail: str = "", retry_in: float = 0.0) -> None:
        if state == self.state and not detail:
            return
        self.state = state
        if state == "online":
            self.last_failure = ""
        elif detail and state in ("reconnecting", "offline"):
            self.last_failure = detail
        self._state_changed.set()
        if state == "online":
            self._online.set()
        else:
            self._online.clear()
        self.emit(ConnectionStateChanged(state, detail, retry_in))

    # -- sending -----------------------------------------------------------------------------

    async def send(self, to: str, text: str) -> bytes:
        """Queues ``text`` for ``to`` durably and sends it when it can.

        Returns:
            The message id (UUIDv7); follow it with :meth:`wait_state` or the events.

        Raises:
            Unsendable: the wire cannot carry it (see :func:`unsendable`); nothing is
                queued.
        """
        why = unsendable(to, text)
        if why:
            raise Unsendable(why)
        now = int(time.time() * 1000)
        msg_id = new_message_id(now)
        self.local.add_outgoing(to, text, msg_id, now)
        self.emit(MessageStateChanged(msg_id, to, "queued"))
        if self.router is not None and self.router.route(self, msg_id, to, text, now):
            return msg_id
        if self.state == "online" and self._link is not None:
            self._link.send(m.Send(id=msg_id, to=to, body=text))
        return msg_id

    def send_via_hub(self, msg_id: bytes, to: str, text: str) -> None:
        """Sends (again) a queued message through the hub (the fallback of the direct path)."""
        if self.state == "online" and self._link is not None:
            self._link.send(m.Send(id=msg_id, to=to, body=text))

    async def wait_state(self, msg_id: bytes, state: str, timeout: float) -> str:
        """Waits until our message ``msg_id`` reaches ``state`` (or a later one).

        Returns:
            The state reached (``failed`` ends the wait too).

        Raises:
            TimeoutError: not reached in time.
        """
        order = {"queued": 0, "stored": 2, "delivered": 3}
        current = self.local.state_of(msg_id)
        if current is not None and (
            current[0] == "failed" or order.get(current[0], 0) >= order[state]
        ):
            return current[0]
        fut: asyncio.Future[str] = self.loop.create_future()
        self._waiters.setdefault(msg_id, []).append((state, fut))
        return await asyncio.wait_for(fut, timeout)

    async def drain_outbox(self, timeout: float) -> int:
        """Waits until the hub (or a peer) has taken every queued message.

        Returns:
            How many messages are still queued when the wait ends (0 when drained).
        """
        end = self.loop.time() + timeout
        while True:
            left = len(self.local.queued())
            remaining = end - self.loop.time()
            if not left or remaining <= 0 or self.fatal:
                return left
            self._outbox_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox_changed.wait(), min(remaining, 0.2))

    def state_of(self, msg_id: bytes) -> tuple[str, str | None] | None:
        """(state, path) of our message, or None."""
        return self.local.state_of(msg_id)

    def message_state(
        self, msg_id: bytes, peer: str, state: str, path: str | None, reason: str = ""
    ) -> None:
        """Records and announces a state change of our message (hub or direct path)."""
        if self.local.set_state(msg_id, state, path, reason) is None:
            return
        self._outbox_changed.set()
        self.emit(MessageStateChanged(msg_id, peer, state, path, reason))  # type: ignore[arg-type]
        order = {"queued": 0, "stored": 2, "delivered": 3, "failed": 9}
        waiters = self._waiters.get(msg_id)
        if waiters:
            keep = []
            for wanted, fut in waiters:
                if fut.done():
                    continue
                if order[state] >= order[wanted]:
                    fut.set_result(state)
                else:
                    keep.append((wanted, fut))
            if keep:
                self._waiters[msg_id] = keep
            else:
                del self._waiters[msg_id]

    def message_arrived(self, peer: str, msg_id: bytes, body: str, ts: int, path: str) -> bool:
        """Records an incoming message; announces it unless it is a duplicate.

        Returns:
            True when it was new.
        """
        if self.local.add_incoming(peer, msg_id, body, ts, path, transient=self.transient):
            self.emit(MessageReceived(peer, msg_id, body, ts, path))  # type: ignore[arg-type]
            return True
        return False

    # -- requests ------------------------------------------------------------------------------

    async def request(self, build: Callable[[int], m.Message], timeout: float = 10.0) -> m.Message:
        """Sends a request with a fresh request id and returns the hub's reply.

        Raises:
            RemoteError: the hub refused it.
            TimeoutError: no reply (or not online) in time.
        """
        await self.wait_online(timeout)
        self._rid += 1
        rid = self._rid
        fut: asyncio.Future[m.Message] = self.loop.create_future()
        self._requests[rid] = fut
        try:
            assert self._link is not None
            if not self._link.send(build(rid)):
                raise BrokenResourceError("the connection to the hub closed")
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._requests.pop(rid, None)
        if isinstance(reply, m.Error):
            raise RemoteError(reply.code, reply.message)
        return reply

    async def contacts(self) -> list[m.Contact]:
        """The contact list with presence."""
        reply = await self.request(lambda rid: m.ContactList(rid=rid))
        assert isinstance(reply, m.Contacts)
        return reply.contacts

    async def add_contact(self, user: str) -> None:
        """Adds a contact (the hub checks the user exists)."""
        await self.request(lambda rid: m.ContactAdd(rid=rid, user=user))

    async def remove_contact(self, user: str) -> None:
        """Removes a contact."""
        await self.request(lambda rid: m.ContactRemove(rid=rid, user=user))

    async def hub_history(self, peer: str, before: int = 0, limit: int = 50) -> list[m.Deliver]:
        """Messages with ``peer`` as the hub stored them, newest last."""
        reply = await self.request(
            lambda rid: m.HistoryRequest(rid=rid, peer=peer, before=before, limit=limit)
        )
        assert isinstance(reply, m.History)
        return reply.entries

    async def logout(self) -> None:
        """Ends the session at the hub and invalidates the token."""
        with contextlib.suppress(DuplexError, TimeoutError):
            await self.request(lambda rid: m.Logout(rid=rid), timeout=5)
        self.token = ""

    # -- the connection loop -------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            self._set_state("connecting")
            detail = ""
            try:
                link = await self._connect()
                if self._closed_meanwhile():
                    # close() came while we connected. On Python 3.11 a cancellation that
                    # lands as asyncio.wait_for's connect completes is lost (gh-86296):
                    # the flag, not the cancellation, is what must stop us here, or
                    # close() would wait for a session that never ends.
                    self._link = None
                    link.close()
                    return
                detail = await self._session(link)
                attempt = 0 if self.session_id else attempt
            except PinMismatch as exc:
                self._give_up(str(exc))
                return
            except (OSError, DuplexError, TimeoutError) as exc:
                detail = _why(exc)
            if self.fatal:
                return
            if not self.reconnect or self._closing:
                self.fatal = self.fatal or detail or "disconnected"
                self._set_state("offline", detail)
                return
            first, cap = self.backoff
            delay = min(cap, first * 2**attempt) * random.uniform(0.5, 1.0)
            attempt = min(attempt + 1, 16)
            self._set_state("reconnecting", detail, delay)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _closed_meanwhile(self) -> bool:
        # A method, not an inline check: close() may run while we await, and mypy would
        # narrow ``self._closing`` from the loop condition.
        return self._closing

    def reconnect_now(self) -> None:
        """Skips the rest of the backoff and reconnects at once."""
        self._wake.set()

    def _give_up(self, reason: str) -> None:
        self.fatal = reason
        self._set_state("offline", reason)

    async def _connect(self) -> _HubLink:
        host, port = self.hub
        context: ssl.SSLContext | None = client_context() if self.tls else None
        sock = await self._hub_socket(host, port)
        try:
            transport, link = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _HubLink(self, self.session_config, tls=context is not None),
                    sock=sock,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                ),
                self.session_config.auth_timeout,
            )
        except BaseException:
            sock.close()
            raise
        self.hub_local = transport.get_extra_info("sockname")[:2]
        if context is not None:
            fingerprint = peer_fingerprint(transport.get_extra_info("ssl_object"))
            name = f"{host}:{port}"
            try:
                if self.pins is not None and self.pins.check(name, fingerprint):
                    log.info("pinned the hub %s: %s", name, format_fingerprint(fingerprint))
            except PinMismatch:
                transport.abort()
                raise
        self._link = link
        return link

    async def _hub_socket(self, host: str, port: int) -> socket.socket:
        """A connected socket to the hub whose local port others may bind too.

        SO_REUSEADDR and SO_REUSEPORT let the direct path punch a hole from the same
        local port, which is the one the hub saw and told the peer about.
        """
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        last: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.bind:
                    sock.bind((self.bind, 0))
                await asyncio.wait_for(
                    self.loop.sock_connect(sock, address), self.session_config.auth_timeout
                )
            except (OSError, TimeoutError) as exc:
                sock.close()
                last = (
                    exc
                    if isinstance(exc, OSError)
                    else OSError(f"timed out connecting to {host}:{port}")
                )
                continue
            except BaseException:  # cancelled (close() while connecting): no socket left
                sock.close()
                raise
            return sock
        raise last or OSError(f"cannot resolve {host}")

    async def _session(self, link: _HubLink) -> str:
        """Logs in on ``link`` and serves it until it is lost; returns why it ended."""
        self.session_id = ""
        self._rid += 1
        self._login_rid = self._rid
        link.send(
            m.Login(
                rid=self._login_rid,
                user=self.user,
                device=self.device,
                password="" if self.token else (self.password or ""),
                token=self.token,
                last_seq=self.local.last_seq,
                store=self.local.store,
                endpoints=self.endpoints,
                fingerprint=self.fingerprint,
                want_token=self.want_token and not self.token,
                replace=not self.transient,
            )
        )
        try:
            return await link.lost
        finally:
            self._link = None
            if self.state == "online":
                self._set_state("reconnecting", link.reason or "connection lost")

    def _after_login(self, link: _HubLink, welcome: m.Welcome) -> None:
        self.session_id = welcome.session
        self.ticket_key = welcome.ticket_key
        self.observed = welcome.observed
        self.hub_last_seq = welcome.last_seq
        self.local.welcome(welcome.store)
        if welcome.token:
            self.token = welcome.token
        self._set_state("online")
        # Everything not yet confirmed by the hub goes (again), oldest first.
        for out in self.local.queued():
            why = unsendable(out.peer, out.body)
            if why:  # written before this check existed: it would end every login
                self.message_state(out.id, out.peer, "failed", None, why)
                continue
            if self.router is None or not self.router.route(
                self, out.id, out.peer, out.body, out.ts
            ):
                link.send(m.Send(id=out.id, to=out.peer, body=out.body))
        if self.router is not None:
            self.router.online(self)

    # -- what arrives --------------------------------------------------------------------------

    def _on_events(self, link: _HubLink, events: list[Event]) -> None:
        if self._store_closed:
            return  # the last callbacks of a link that outlived close()
        local = self.local
        ack = 0
        local.begin()
        try:
            for event in events:
                if isinstance(event, Received):
                    ack = self._on_message(link, event.message) or ack
                elif isinstance(event, Closed):
                    link.reason = link.why_closed(event)
                    if event.code in FATAL_CODES and event.code != "bad-credentials":
                        self._give_up(event.reason)
                elif isinstance(event, TimedOut):
                    link.reason = f"{event.what} timeout: the hub went silent"
        finally:
            local.commit()
        if ack:
            # Acked only now that the entries are committed to the local history.
            if self._ack_message:
                self._send_ack(link)
            elif self._ack_later is None:
                self._ack_later = self.loop.call_later(RECEIPT_ACK_DELAY, self._send_ack, link)

    def _send_ack(self, link: _HubLink) -> None:
        """Acks everything the local history holds (see RECEIPT_ACK_DELAY)."""
        self._ack_message = False
        if self._ack_later is not None:
            self._ack_later.cancel()
            self._ack_later = None
        if not self._store_closed:
            link.send(m.Ack(upto=self.local.last_seq))

    def _on_message(self, link: _HubLink, msg: m.Message) -> int:
        kind = type(msg)
        if kind is m.Deliver:
            msg = cast(m.Deliver, msg)
            if msg.seq <= self.local.last_seq:
                # Already held: a replay overlapping a push, or stored by a one-shot
                # command of this device meanwhile, which left it for us to show.
                if msg.kind == "msg" and not self.transient:
                    self.message_arrived(msg.peer, msg.id, msg.body, msg.ts, msg.path or "relayed")
                return 0
            if msg.kind == "msg":
                self._ack_message = True
                self.message_arrived(msg.peer, msg.id, msg.body, msg.ts, msg.path or "relayed")
            else:
                self.message_state(msg.id, msg.peer, "delivered", None)
            self.local.set_last_seq(msg.seq)
            return msg.seq
        if kind is m.Stored:
            msg = cast(m.Stored, msg)
            state = "delivered" if msg.delivered else "stored"
            self.message_state(msg.id, msg.to, state, msg.path)
            return 0
        if kind is m.Presence:
            msg = cast(m.Presence, msg)
            self.emit(PresenceChanged(msg.user, msg.online))
            if self.router is not None:  # a peer that comes online may be dialed now
                self.router.on_hub_message(self, msg)
            return 0
        if kind is m.Welcome:
            self._after_login(link, cast(m.Welcome, msg))
            return 0
        if kind is m.Error:
            self._on_error(link, cast(m.Error, msg))
            return 0
        rid = getattr(msg, "rid", 0)
        fut = self._requests.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(msg)
        elif self.router is not None:
            self.router.on_hub_message(self, msg)
        return 0

    def _on_error(self, link: _HubLink, error: m.Error) -> None:
        if error.rid and error.rid == getattr(self, "_login_rid", -1) and not self.session_id:
            if error.code == "bad-credentials" and self.token and self.password:
                # The token expired: fall back to the password on the next attempt.
                self.token = ""
                link.close()
                return
            if error.code in ("bad-credentials",):
                self._give_up(error.message)
                link.close()
                return
            link.reason = f"{error.code}: {error.message}"
            link.close()  # throttled: retry after the backoff
            return
        if error.rid:
            fut = self._requests.get(error.rid)
            if fut is not None and not fut.done():
                fut.set_result(error)
            return
        if error.id is not None:
            entry = self.local.state_of(error.id)
            if error.code == "rate-limited" and entry is not None:
                self._retry_later(error.id, 1.0)
                return
            peer = self._peer_of(error.id)
            self.message_state(error.id, peer, "failed", None, f"{error.code}: {error.message}")
            return
        # The hub's last word before it closes the connection: "bye" answers our own
        # Logout; the rest (shutdown, replaced, slow-consumer, ...) are worth a line.
        level = logging.DEBUG if error.code == "bye" else logging.WARNING
        log.log(level, "hub error: %s (%s)", error.message, error.code)

    def _peer_of(self, msg_id: bytes) -> str:
        for out in self.local.queued():
            if out.id == msg_id:
                return out.peer
        return "?"

    def _retry_later(self, msg_id: bytes, delay: float) -> None:
        async def retry() -> None:
            await asyncio.sleep(delay)
            for out in self.local.queued():
                if out.id == msg_id:
                    self.send_via_hub(out.id, out.peer, out.body)

        task = self.loop.create_task(retry())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Registration:
    """Stands in for a Client on a link that only registers (no login, no events)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reply: asyncio.Future[m.Message] = loop.create_future()

    def _on_events(self, link: _HubLink, events: list[Event]) -> None:
        for event in events:
            if self.reply.done():
                return
            if isinstance(event, Received) and isinstance(event.message, m.Registered | m.Error):
                self.reply.set_result(event.message)
            elif isinstance(event, Closed):
                self.reply.set_exception(BrokenResourceError(link.why_closed(event)))


async def register(
    hub: tuple[str, int],
    user: str,
    password: str,
    *,
    tls: bool = False,
    pins: PinStore | None = None,
    timeout: float = 10.0,
    bind: str | None = None,
) -> None:
    """Creates an account on the hub.

    Raises:
        RemoteError: the hub refused (name taken, bad name, weak password, throttled).
        BrokenResourceError: the hub could not be reached.
    """
    loop = asyncio.get_running_loop()
    shim = _Registration(loop)
    host, port = hub
    context = client_context() if tls else None
    try:
        transport, link = await asyncio.wait_for(
            loop.create_connection(
                lambda: _HubLink(cast(Client, shim), SessionConfig(), tls=context is not None),
                host,
                port,
                ssl=context,
                local_addr=(bind, 0) if bind else None,
            ),
            timeout,
        )
    except (OSError, TimeoutError) as exc:
        raise BrokenResourceError(f"cannot reach the hub at {host}:{port}: {_why(exc)}") from exc
    try:
        if context is not None and pins is not None:
            pins.check(f"{host}:{port}", peer_fingerprint(transport.get_extra_info("ssl_object")))
        link.send(m.Register(rid=1, user=user, password=password))
        # A lost connection ends the wait too: the link reports it as a Closed event.
        try:
            reply = await asyncio.wait_for(shim.reply, timeout)
        except TimeoutError:
            raise BrokenResourceError(f"no answer from the hub at {host}:{port}") from None
    finally:
        transport.close()
    if isinstance(reply, m.Error):
        raise RemoteError(reply.code, reply.message)
