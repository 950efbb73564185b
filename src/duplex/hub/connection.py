"""One client connection of the hub: the asyncio driver of a ``HubServerSession``.

The driver does four things and no protocol logic:

* feeds bytes and EOF into the session with ``loop.time()`` as ``now``, and writes
  what the session wants written (``b""`` closes the transport after the flush);
* arms one timer per connection, *lazily*: activity only ever moves a session's
  deadline later, so the timer stays where it is and, when it fires, re-reads the
  deadline. One timer wake per grace period per connection, not one re-arm per frame;
* passes the session's events to the hub in order (:meth:`Hub.handle`), pausing the
  pipeline while the hub awaits something that later messages depend on (a login);
* bounds what is queued to the client: past ``send_buffer`` bytes the client counts
  as a consumer that stopped reading and is disconnected (its messages stay stored,
  and it gets them on its next login); bulk senders (replay) ``await drain()`` instead.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, cast

from duplex.errors import DuplexError
from duplex.protocol.events import Event, TimedOut
from duplex.protocol.hub import HubServerSession, State
from duplex.timers import LazyTimer
from duplex.wire.messages import Message

if TYPE_CHECKING:
    from duplex.hub.core import Hub, LiveSession

__all__ = ["HubConnection"]

log = logging.getLogger("duplex.hub")

HIGH_WATER = 256 * 1024
"""Write-buffer bytes above which bulk senders wait in :meth:`HubConnection.drain`."""

STORE_BACKLOG = 4 * 1024 * 1024
"""Message bytes of one connection waiting for the store, above which its reads pause."""


class HubConnection(asyncio.Protocol):
    """The hub side of one client connection."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.loop = hub.loop
        self.transport: asyncio.Transport | None = None
        self.session = HubServerSession(hub.session_config, self.loop.time())
        self.live: LiveSession | None = None
        self.peer = "?"
        self.ip = "?"
        self.fingerprint = ""
        self._inbox: collections.deque[Event] = collections.deque()
        self._busy = False
        self._timer = LazyTimer(self.loop, self.session, self._after)
        self._drained: asyncio.Future[None] | None = None
        self._paused = False
        self._flush_scheduled = False
        self._lazy_scheduled = False
        self._bulk = False
        self.storing = 0
        self._held = False
        self.closed = False

    # -- asyncio callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.ip = str(peer[0])
            host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
            self.peer = f"{host}:{peer[1]}"
        if not self.hub.admit(self):
            self.session.close("busy", "the hub is at its connection limit; try again later")
            self._flush()
            return
        self._flush()
        self._timer.arm()

    def data_received(self, data: bytes) -> None:
        # The hot path: no TimedOut can come from data, and in READY data only moves
        # the deadline later (the lazy timer re-reads it when it fires), so neither
        # is looked at here.
        session = self.session
        session.receive_data(data, self.loop.time())
        if session.has_output:  # a Pong, or an Error before closing
            self._flush()
        events = session.events_received()
        if events:
            self._queue(events)
        if session.state is not State.READY:
            self._timer.arm()

    def eof_received(self) -> bool:
        self.session.receive_eof()
        self._after()
        # We close once our own output is flushed; a TLS transport closes by itself.
        return self.hub.config.tls == "off"

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.session.closed:
            self.session.receive_eof()
            self._inbox.extend(self.session.events_received())
        self._timer.cancel()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self.hub.connection_gone(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- sending ----------------------------------------------------------------------

    def send(self, message: Message) -> bool:
        """Sends ``message`` if the connection is still open; returns whether it did."""
        if self.session.closed:
            return False
        try:
            self.session.send(message)
        except DuplexError as exc:
            log.error("not sent to %s: %s", self.peer, exc)
            return False
        self._flush_soon()
        return True

    def send_frame(
        self, kind: type[Message], frame: bytes, *, bulk: bool = False, lazy: bool = False
    ) -> bool:
        """Sends an already encoded frame; returns whether it did.

        A client whose queue is past the hub's ``send_buffer`` has stopped reading:
        it is disconnected (with nothing lost: every pushed entry is in the store).
        ``bulk`` frames (a replay, which waits in :meth:`drain` instead) are exempt.
        A ``lazy`` frame (a receipt) waits for the next frame to this connection, or
        :data:`~duplex.hub.core.RECEIPT_FLUSH_DELAY` at most.
        """
        if self.session.closed:
            return False
        self.session.send_frame(kind, frame)
        self._bulk |= bulk
        if not lazy:
            self._flush_soon()
        elif not self._lazy_scheduled:
            self._lazy_scheduled = True
            self.hub.flush_lazily(self)
        return True

    def _check_backlog(self) -> bool:
        """Cuts off a client whose queue is past ``send_buffer``; True if it did."""
        if self._bulk:
            self._bulk = False
            return False
        transport = self.transport
        if (
            transport is not None
            and transport.get_write_buffer_size() > self.hub.config.send_buffer
        ):
            self.hub.metrics.refused.labels("slow-consumer").inc()
            log.info(
                "disconnecting %s: it stopped reading (%d bytes queued)",
                self.peer,
                transport.get_write_buffer_size(),
            )
            self.abort()
            return True
        return False

    def hold(self, nbytes: int) -> None:
        """Counts message bytes handed to the store; pauses reading past STORE_BACKLOG.

        The store's queue is bounded by requests, not bytes: without this, one client
        sending large messages faster than they are committed grows the hub's memory.
        """
        self.storing += nbytes
        if not self._held and self.storing > STORE_BACKLOG and self.transport is not None:
            self._held = True
            self.transport.pause_reading()

    def release(self, nbytes: int) -> None:
        """The store answered for ``nbytes``; reads resume below half the backlog."""
        self.storing -= nbytes
        if self._held and self.storing <= STORE_BACKLOG // 2:
            self._held = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    async def drain(self) -> None:
        """Waits until the write buffer is below the high-water mark (or closed)."""
        if not self._paused or self.closed:
            return
        if self._drained is None or self._drained.done():
            self._drained = self.loop.create_future()
        await self._drained

    def close(self, code: str, message: str) -> None:
        """Tells the client why, then closes after the flush."""
        self.session.close(code, message)
        self._after()

    def abort(self) -> None:
        """Drops the connection at once, discarding what is queued."""
        if self.transport is not None:
            self.transport.abort()

    # -- internals ----------------------------------------------------------------------

    def _flush_soon(self) -> None:
        # Frames produced while the loop works through its ready callbacks (Stored
        # answers, pushed entries, receipts) leave in one writev at the end of the
        # iteration rather than one send() each: a third of the hub's time went into
        # those system calls. The hub flushes every such connection from one callback.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.hub.flush_later(self)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._lazy_scheduled = False  # (a receipt queued for later leaves now too)
        transport = self.transport
        if transport is None:
            return
        out = self.session.data_to_send()
        if not out:
            return
        if out[-1]:
            transport.writelines(out)
            self._check_backlog()
            return
        for chunk in out:
            if chunk:
                transport.write(chunk)
            else:
                transport.close()

    def _after(self) -> None:
        self._flush()
        events = self.session.events_received()
        if events and any(isinstance(e, TimedOut) for e in events):
            # A silent client may be unreachable (half-open, partitioned): a graceful
            # close would keep the session, and its presence, until TCP gives up on our
            # unsent bytes, minutes later. The grace is the verdict: drop it now.
            self.abort()
        if events:
            self._queue(events)
        self._timer.arm()

    def _queue(self, events: list[Event]) -> None:
        """Queues ``events`` behind any still waiting; pumps unless the hub is busy."""
        self._inbox.extend(events)
        if not self._busy:
            self._pump()

    def _pump(self) -> None:
        """Hands events to the hub in order; waits when the hub must finish one first."""
        inbox = self._inbox
        handle = self.hub.handle
        while inbox:
            pending = handle(self, inbox.popleft())
            if pending is not None:
                self._busy = True
                task = self.loop.create_task(self._wait(pending))
                self.hub.track(task)
                return
        self._busy = False

    async def _wait(self, pending: Awaitable[None]) -> None:
        try:
            await pending
        except DuplexError as exc:
            log.warning("request from %s failed: %s", self.peer, exc)
            if not self.session.closed:
                self.close("internal", "the hub could not complete the request")
        except Exception:
            log.exception("request from %s failed", self.peer)
            if not self.session.closed:
                self.close("internal", "the hub could not complete the request")
        finally:
            self._busy = False
            self._flush()
            if self._inbox:
                self._pump()
            self._timer.arm()  # a login may have moved the deadline
