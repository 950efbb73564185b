"""One direct link between two clients: the asyncio driver of a peer session."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from duplex.errors import DuplexError
from duplex.protocol.events import Closed, Event, Received, TimedOut
from duplex.protocol.handler import Endpoint, SocketPair
from duplex.protocol.hub import SessionConfig
from duplex.protocol.peer import PeerDialerSession, PeerListenerSession
from duplex.timers import LazyTimer
from duplex.wire import messages as m

if TYPE_CHECKING:
    from duplex.p2p.router import DirectRouter

__all__ = ["PeerLink"]

log = logging.getLogger("duplex.p2p")


class PeerLink(asyncio.Protocol):
    """A direct link, either end; the router does everything but I/O and timers.

    Attributes:
        peer: the user at the other end (known at once when dialing; once the ticket
            is checked when accepting).
        dialer: True if we dialed.
        unacked: our messages sent on this link and not yet acknowledged, in order:
            they go through the hub if the link dies.
        ready: resolved when the link is up (PeerAccept sent or received).
        reason: why the link ended.
    """

    def __init__(
        self, router: DirectRouter, config: SessionConfig, *, dialer: bool, peer: str = ""
    ) -> None:
        self.router = router
        self.loop = router.loop
        self.dialer = dialer
        self.peer = peer
        now = self.loop.time()
        self.session: PeerDialerSession | PeerListenerSession = (
            PeerDialerSession(config, now) if dialer else PeerListenerSession(config, now)
        )
        self.transport: asyncio.Transport | None = None
        self.unacked: dict[bytes, tuple[str, int]] = {}
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.reason = ""
        self.refusal = ""  # the Error code the other side closed with, if any
        self.pair: SocketPair | None = None
        self.since = time.time()
        self.sent = 0
        self.received = 0
        self._timer = LazyTimer(self.loop, self.session, self._after)
        self.closed = False

    @property
    def is_ready(self) -> bool:
        """True while messages can flow."""
        return self.ready.done() and not self.ready.exception() and not self.closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        try:
            local = Endpoint.from_sockaddr(self.transport.get_extra_info("sockname"))
            remote = Endpoint.from_sockaddr(self.transport.get_extra_info("peername"))
            # Written as the socket texts do: client end first.
            self.pair = SocketPair(local, remote) if self.dialer else SocketPair(remote, local)
        except (TypeError, IndexError, ValueError):
            self.pair = None
        self.flush()
        self._timer.arm()

    def data_received(self, data: bytes) -> None:
        self.session.receive_data(data, self.loop.time())
        self._after()

    def eof_received(self) -> bool:
        self.session.receive_eof()
        self._after()
        return False  # links are TLS: the transport closes itself after an EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.session.closed:
            self.session.receive_eof()
            self._events(self.session.events_received())
        self._timer.cancel()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(self.reason or "link closed"))
            self.ready.exception()  # retrieved: the router reads `reason` instead
        self.router.link_lost(self, self.reason or (str(exc) if exc else "closed"))

    def send(self, message: m.Message) -> bool:
        """Sends ``message`` if the link is open; returns whether it did."""
        if self.session.closed:
            return False
        try:
            self.session.send(message)
        except DuplexError as exc:
            log.debug("not sent to %s: %s", self.peer, exc)
            return False
        self.flush()
        return True

    def send_message(self, msg_id: bytes, body: str, ts: int) -> bool:
        """Sends one chat message and remembers it until the peer acknowledges it."""
        self.unacked[msg_id] = (body, ts)
        self.sent += 1
        return self.send(m.PeerSend(id=msg_id, body=body, ts=ts))

    def mark_ready(self) -> None:
        """The link is up."""
        if not self.ready.done():
            self.ready.set_result(None)

    def flush(self) -> None:
        """Writes what the session queued; closes the transport after ``b""``."""
        transport = self.transport
        if transport is None:
            return
        for chunk in self.session.data_to_send():
            if chunk:
                transport.write(chunk)
            else:
                transport.close()

    def close(self, code: str = "bye", reason: str = "") -> None:
        """Closes the link, telling the peer why."""
        if not self.session.closed:
            self.session.close(code, reason)
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drops the link at once (tests use it to cut a link mid-stream)."""
        if self.transport is not None:
            self.transport.abort()

    def _after(self) -> None:
        self.flush()
        self._events(self.session.events_received())
        self.flush()
        self._timer.arm()

    def _events(self, events: list[Event]) -> None:
        if not events:
            return
        traffic: list[m.Message] = []
        for event in events:
            if isinstance(event, Received):
                traffic.append(event.message)
            elif isinstance(event, Closed):
                self.reason = self.reason or event.reason
            elif isinstance(event, TimedOut):
                # The peer is silent, perhaps unreachable: a graceful close would wait
                # for our unsent bytes forever (until TCP gives up, minutes later).
                self.reason = f"{event.what} timeout"
                self.abort()
        for message in traffic:
            if isinstance(message, m.Error):
                self.refusal = message.code
                self.reason = f"{message.code}: {message.message}"
        if traffic:
            self.router.link_messages(self, traffic)
