"""The direct path: introductions, staggered dialing, pinned TLS, tickets, fallback.

:class:`DirectRouter` plugs into :class:`~duplex.client.Client` as its ``router``. For
each message it decides, in this order:

1. a direct link to the peer is up: send it there (same id), acknowledged per message;
2. an introduction is under way: hold the message (for at most the budget);
3. the peer failed recently: the hub carries it (until the retry time passes);
4. otherwise ask the hub to ``Introduce`` us, and hold the message meanwhile.

An introduction gives the peer's endpoints, its certificate fingerprint and a ticket.
We dial the endpoints Happy-Eyeballs style (RFC 8305: the next one 250 ms after the
previous, or at once when it fails), open TLS 1.3 and compare the certificate with the
pinned fingerprint *before* sending anything, then present the ticket. When both peers
are behind NAT the hub asks both to dial each other at once from the ports it saw
(TCP simultaneous open, see :mod:`duplex.p2p.punch`).

Any failure (refused, timeout, pin mismatch, ticket refused, the link dying later)
sends every held or unacknowledged message through the hub *with the same ids*, so the
receiver, which deduplicates by (sender, id), shows each exactly once. The peer is
then retried after a backoff (1 s, 2 s, 4 s ... 60 s) and the path moves back to
direct as soon as a retry works.

Order survives every change of path: a link that becomes the path to a peer first
carries every message to that peer not yet acknowledged by it (held during the
introduction, still on its way through the hub, or unacknowledged on a link it
replaces), in send order, before anything newer (:meth:`DirectRouter._sync`).

The listener side accepts TLS connections, checks tickets against the ticket key the
hub gave this session at login, and serves the link the same way in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import ssl
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from duplex.errors import DuplexError, RemoteError
from duplex.p2p.link import PeerLink
from duplex.p2p.punch import punch_socket
from duplex.protocol.hub import SessionConfig
from duplex.protocol.tickets import NonceCache, TicketRejected, check_ticket
from duplex.tls import (
    PinMismatch,
    client_context,
    ensure_certificate,
    peer_fingerprint,
    server_context,
)
from duplex.wire import messages as m

if TYPE_CHECKING:
    from duplex.client.core import Client

__all__ = ["DirectRouter"]

log = logging.getLogger("duplex.p2p")


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DirectRouter:
    """Direct peer-to-peer delivery with fallback to the hub (see the module docstring).

    Args:
        budget: seconds an introduction and dial may take before the hub carries the
            messages.
        stagger: seconds between dialing successive endpoints.
        host: the listener's address; None listens on every address (dual stack).
        advertise: endpoints to report instead of the listener's own addresses.
        identity_dir: where the device certificate lives; None uses a temporary dir.
        session: timers of the links (heartbeat, grace, how long a ticket may take).
        retry: (first, max) seconds before retrying a peer after a failure.
    """

    def __init__(
        self,
        *,
        budget: float = 2.0,
        stagger: float = 0.25,
        host: str | None = None,
        advertise: list[str] | None = None,
        identity_dir: str | os.PathLike[str] | None = None,
        session: SessionConfig | None = None,
        retry: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        self.budget = budget
        self.stagger = stagger
        self.host = host
        self.advertise = advertise
        self.identity_dir = Path(identity_dir) if identity_dir else None
        self.session_config = session or SessionConfig(heartbeat=5.0, grace=15.0, auth_timeout=5.0)
        self.retry = retry
        self.links: dict[str, PeerLink] = {}
        self.endpoints: list[str] = []
        self.fingerprint = ""
        self.stats: dict[str, int] = {}
        self._pending: dict[str, list[tuple[bytes, str, int]]] = {}
        self._dialing: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._offline: set[str] = set()  # peers whose retry waits because they were offline
        self._failures: dict[str, int] = {}
        self._nonces = NonceCache()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._tmpdir: str | None = None
        self._client: Client | None = None
        self._accepting: set[PeerLink] = set()
        self._server_ctx: ssl.SSLContext | None = None
        self._client_ctx = client_context()
        self._state_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, client: Client) -> None:
        """Makes (or loads) the device certificate and starts the peer listener."""
        self._loop = asyncio.get_running_loop()
        self._client = client
        directory = self.identity_dir
        if directory is None:
            directory = client.data_dir / "p2p" if client.data_dir else None
        if directory is None:
            self._tmpdir = tempfile.mkdtemp(prefix="duplex-p2p-")
            directory = Path(self._tmpdir)
        cert, key, self.fingerprint = ensure_certificate(
            directory, "device", f"duplex device {client.device}"
        )
        self._server_ctx = server_context(cert, key)
        host: str | list[str] | None = self.host
        if host is None:
            host = ["0.0.0.0", "::"] if socket.has_ipv6 else "0.0.0.0"
        try:
            self._server = await self.loop.create_server(
                self._accept, host, 0, ssl=self._server_ctx, reuse_address=True
            )
        except OSError:  # no IPv6 here after all
            self._server = await self.loop.create_server(
                self._accept, "0.0.0.0", 0, ssl=self._server_ctx, reuse_address=True
            )
        ports = {sock.family: sock.getsockname()[1] for sock in self._server.sockets}
        if self.advertise:
            self.endpoints = list(self.advertise)
        elif self.host and self.host not in ("0.0.0.0", "::"):
            self.endpoints = [_join(self.host, next(iter(ports.values())))]
        else:
            self.endpoints = self._local_endpoints(ports)
        client.endpoints = self.endpoints[:7]  # the hub adds the observed one (8 at most)
        client.fingerprint = self.fingerprint
        self._write_state()
        log.debug("p2p listener: %s", ", ".join(self.endpoints))

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the router runs on: the one :meth:`start` ran on, else the running one.

        Not the event-loop policy's loop, which ``__init__`` used to ask for: once
        ``asyncio.run`` (or a Runner with a loop factory) has run in a thread, that call
        raises "There is no current event loop" there, even inside a coroutine.
        """
        return self._loop or asyncio.get_running_loop()

    @staticmethod
    def _local_endpoints(ports: dict[socket.AddressFamily, int]) -> list[str]:
        """Our addresses (every interface that is up), global ones first."""
        found: list[tuple[int, str]] = []
        stats = psutil.net_if_stats()
        for name, addrs in psutil.net_if_addrs().items():
            if name in stats and not stats[name].isup:
                continue
            for addr in addrs:
                port = ports.get(addr.family) or ports.get(socket.AF_INET6)
                if addr.family not in (socket.AF_INET, socket.AF_INET6) or port is None:
                    continue
                if addr.family == socket.AF_INET6 and socket.AF_INET6 not in ports:
                    continue
                host = addr.address.split("%")[0]
                ip = ipaddress.ip_address(host)
                if ip.is_link_local or ip.is_multicast:
                    continue
                rank = 2 if ip.is_loopback else (1 if ip.version == 6 else 0)
                found.append((rank, _join(host, port)))
        return [endpoint for _, endpoint in sorted(found)]

    def online(self, client: Client) -> None:
        """The hub connection is up again: held messages are not waiting on it."""

    async def close(self) -> None:
        """Closes the listener and every link."""
        for task in list(self._tasks):
            task.cancel()
        if self._state_handle is not None:
            self._state_handle.cancel()
        for link in [*self.links.values(), *self._accepting]:
            link.close("bye", "client closing")
        self.links.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._write_state(closing=True)

    def stop_listening(self) -> None:
        """Closes the listener only (tests: the peer port closed)."""
        if self._server is not None:
            self._server.close()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- choosing a path ----------------------------------------------------------------

    def route(self, client: Client, msg_id: bytes, peer: str, body: str, ts: int) -> bool:
        """Takes the message onto the direct path, or returns False for the hub."""
        link = self.links.get(peer)
        if link is not None and link.is_ready:
            link.send_message(msg_id, body, ts)
            return True
        if peer in self._dialing:
            self._pending[peer].append((msg_id, body, ts))
            return True
        if peer == client.user or client.state != "online":
            return False
        if self.loop.time() < self._retry_at.get(peer, 0.0):
            return False
        self._pending[peer] = [(msg_id, body, ts)]
        self._dialing.add(peer)
        self._spawn(self._introduce(client, peer))
        return True

    def _fall_back(
        self, client: Client, peer: str, cause: str, *, retry: float | None = None
    ) -> None:
        """Sends what waited for ``peer`` through the hub and schedules a retry."""
        held = self._pending.pop(peer, [])
        self._dialing.discard(peer)
        if retry is None:
            failures = self._failures.get(peer, 0) + 1
            self._failures[peer] = failures
            first, cap = self.retry
            retry = min(cap, first * 2 ** (failures - 1))
        self._retry_at[peer] = self.loop.time() + retry
        self.stats[cause] = self.stats.get(cause, 0) + 1
        if held:
            log.info(
                "direct path to %s failed (%s): %d message(s) through the hub; retry in %.0f s",
                peer,
                cause,
                len(held),
                retry,
            )
        for msg_id, body, _ in held:
            client.send_via_hub(msg_id, peer, body)

    def _report(self, client: Client, peer: str, outcome: str) -> None:
        link = client._link
        if link is not None:
            link.send(m.DirectReport(peer=peer, outcome=outcome))  # type: ignore[arg-type]

    async def _introduce(self, client: Client, peer: str) -> None:
        deadline = self.loop.time() + self.budget
        try:
            reply = await client.request(lambda rid: m.Introduce(rid=rid, peer=peer), self.budget)
        except (RemoteError, DuplexError, TimeoutError) as exc:
            log.debug("no introduction to %s: %s", peer, exc)
            self._fall_back(client, peer, "no-introduction", retry=self.budget)
            return
        if isinstance(reply, m.PeerOffline):
            # Offline (the hub stores) or on several devices (the hub relays to all).
            # The retry waits; for an offline contact, only until the hub says it is
            # back (on_hub_message), so the first message after that goes direct.
            if reply.sessions == 0:
                self._offline.add(peer)
            self._fall_back(
                client,
                peer,
                "offline" if reply.sessions == 0 else "multi-device",
                retry=max(self.budget, 5.0),
            )
            return
        assert isinstance(reply, m.Introduction)
        try:
            link = await self._dial(client, reply, deadline)
        except PinMismatch as exc:
            log.warning("direct path to %s: %s", peer, exc)
            self._report(client, peer, "pin")
            self._fall_back(client, peer, "pin")
            return
        except _Refused as exc:
            self._report(client, peer, exc.cause)
            self._fall_back(client, peer, exc.cause)
            return
        self._report(client, peer, "ok")
        self._failures.pop(peer, None)
        self.stats["ok"] = self.stats.get("ok", 0) + 1
        self._adopt(link)
        held = self._pending.pop(peer, [])
        self._dialing.discard(peer)
        for msg_id, body, ts in held:
            link.send_message(msg_id, body, ts)

    # -- dialing --------------------------------------------------------------------------

    async def _dial(self, client: Client, intro: m.Introduction, deadline: float) -> PeerLink:
        """Returns a ready link to ``intro.peer``, or raises with the cause."""
        if intro.punch:
            link = await self._punch(
                client,
                intro.peer,
                intro.endpoints[-1],
                deadline,
                dialer=True,
                fingerprint=intro.fingerprint,
            )
        else:
            link = await self._happy_eyeballs(intro, deadline)
        link.send(m.PeerHello(user=client.user, ticket=intro.ticket))
        try:
            await asyncio.wait_for(
                asyncio.shield(link.ready), max(0.01, deadline - self.loop.time())
            )
        except TimeoutError:
            link.abort()
            raise _Refused("timeout") from None
        except ConnectionError:
            raise _Refused("ticket" if link.refusal == "ticket" else "lost") from None
        return link

    async def _happy_eyeballs(self, intro: m.Introduction, deadline: float) -> PeerLink:
        attempts: list[asyncio.Task[PeerLink]] = []
        failures: list[BaseException] = []
        winner: PeerLink | None = None
        try:
            for endpoint in intro.endpoints:
                attempts.append(
                    self.loop.create_task(
                        self._connect_one(intro.peer, endpoint, intro.fingerprint)
                    )
                )
                pending = {t for t in attempts if not t.done()}
                wait = min(self.stagger, deadline - self.loop.time())
                while pending and wait > 0:
                    done, pending = await asyncio.wait(
                        pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                    )
                    winner = self._first_success(done, failures)
                    if winner is not None:
                        return winner
                    if not pending:
                        break  # every attempt so far failed: try the next endpoint now
                    wait = min(self.stagger, deadline - self.loop.time())
                if self.loop.time() >= deadline:
                    break
            pending = {t for t in attempts if not t.done()}
            while pending:
                remaining = deadline - self.loop.time()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                winner = self._first_success(done, failures)
                if winner is not None:
                    return winner
        finally:
            for task in attempts:
                if not task.done():
                    task.cancel()
                elif (
                    not task.cancelled()
                    and task.exception() is None
                    and task.result() is not winner
                ):
                    task.result().abort()
        if any(isinstance(f, PinMismatch) for f in failures):
            raise next(f for f in failures if isinstance(f, PinMismatch))
        if (
            failures
            and all(isinstance(f, ConnectionRefusedError) for f in failures)
            and len(failures) == len(intro.endpoints)
        ):
            raise _Refused("refused")
        raise _Refused("timeout")

    @staticmethod
    def _first_success(
        done: set[asyncio.Task[PeerLink]], failures: list[BaseException]
    ) -> PeerLink | None:
        winner = None
        for task in done:
            exc = task.exception()
            if exc is not None:
                failures.append(exc)
            elif winner is None:
                winner = task.result()
            else:
                task.result().abort()
        return winner

    async def _connect_one(self, peer: str, endpoint: str, fingerprint: str) -> PeerLink:
        host, port = _split(endpoint)
        _, link = await self.loop.create_connection(
            lambda: PeerLink(self, self.session_config, dialer=True, peer=peer),
            host,
            port,
            ssl=self._client_ctx,
            server_hostname="",
        )
        self._check_pin(link, fingerprint)
        return link

    @staticmethod
    def _check_pin(link: PeerLink, fingerprint: str) -> None:
        # Before a single byte of ours goes out: the ticket is for the peer only.
        assert link.transport is not None
        got = peer_fingerprint(link.transport.get_extra_info("ssl_object"))
        if got != fingerprint:
            link.abort()
            raise PinMismatch(
                f"the peer at {link.transport.get_extra_info('peername')} presented another "
                f"certificate than the one the hub vouched for (pin mismatch): not an "
                f"impostor we will talk to"
            )

    async def _punch(
        self,
        client: Client,
        peer: str,
        endpoint: str,
        deadline: float,
        *,
        dialer: bool,
        fingerprint: str = "",
    ) -> PeerLink:
        local = client.hub_local
        if local is None:
            raise _Refused("error")
        sock = await punch_socket(local, _split(endpoint), deadline, self.loop)
        if sock is None:
            raise _Refused("timeout")
        link = PeerLink(self, self.session_config, dialer=dialer, peer=peer if dialer else "")
        if dialer:
            await self.loop.create_connection(
                lambda: link, sock=sock, ssl=self._client_ctx, server_hostname=""
            )
            self._check_pin(link, fingerprint)
        else:
            self._accepting.add(link)
            await self.loop.connect_accepted_socket(lambda: link, sock, ssl=self._server_ctx)
        return link

    def on_hub_message(self, client: Client, message: m.Message) -> None:
        """A push from the hub for the P2P layer: a request to punch towards a peer, or
        a contact's presence (one that was offline and is back may be dialed again)."""
        if isinstance(message, m.Punch):
            self._spawn(self._answer_punch(client, message))
        elif isinstance(message, m.Presence) and message.online and message.user in self._offline:
            self._offline.discard(message.user)
            self._retry_at.pop(message.user, None)

    async def _answer_punch(self, client: Client, punch: m.Punch) -> None:
        deadline = self.loop.time() + self.budget
        try:
            await self._punch(client, punch.peer, punch.endpoint, deadline, dialer=False)
        except (_Refused, OSError, ssl.SSLError) as exc:
            log.debug("punch towards %s failed: %s", punch.peer, exc)

    # -- accepting ------------------------------------------------------------------------

    def _accept(self) -> PeerLink:
        link = PeerLink(self, self.session_config, dialer=False)
        self._accepting.add(link)
        return link

    def _adopt(self, link: PeerLink) -> None:
        old = self.links.get(link.peer)
        self.links[link.peer] = link
        self._accepting.discard(link)
        self._sync(link)
        if old is not None and old is not link:
            # Both sides dialed at once, or a reconnect: keep the newest. What the old
            # link had not had acknowledged is on the new one now (the sync).
            old.unacked.clear()
            old.close("replaced", "a newer link replaces this one")
        self._write_state()

    def _sync(self, link: PeerLink) -> None:
        """Puts on a link that becomes the path to its peer, before anything newer, every
        message to that peer that no device of it has acknowledged yet.

        Order across a change of path: messages on their way through the hub (relayed
        or stored, not yet acknowledged), held while an introduction was under way, or
        unacknowledged on a link this one replaces could otherwise be overtaken by the
        next message sent here. Sent again on this link first, each of them reaches the
        peer no later than anything newer (the peer shows the first copy of an id and
        drops the others, whatever the path).
        """
        client = self._client
        if client is None:
            return
        held = self._pending.get(link.peer)
        if held:
            held.clear()  # in the outbox (queued): the sync carries them
        for out in client.local.undelivered(link.peer):
            if out.id not in link.unacked:
                link.send_message(out.id, out.body, out.ts)

    def _check_hello(self, link: PeerLink, hello: m.PeerHello) -> None:
        client = self._client
        assert client is not None
        if link.session.closed:
            # The dialer broke the protocol right behind its ticket (a message before
            # our PeerAccept): the link is dead. Adopting it, even with a good ticket,
            # would replace (and close) a live link to the same peer.
            return
        try:
            ticket = check_ticket(
                hello.ticket,
                client.ticket_key,
                client.user,
                client.device,
                int(time.time() * 1000),
                self._nonces,
            )
        except TicketRejected as exc:
            self.stats["ticket-refused"] = self.stats.get("ticket-refused", 0) + 1
            log.warning("refused a direct link: %s", exc)
            link.close("ticket", str(exc))
            return
        if ticket.sender != hello.user:
            link.close("ticket", "ticket rejected: it was made for another sender")
            return
        link.peer = ticket.sender
        link.send(m.PeerAccept(user=client.user))
        link.mark_ready()
        self._adopt(link)

    # -- what links carry -------------------------------------------------------------------

    def link_messages(self, link: PeerLink, messages: list[m.Message]) -> None:
        """Messages that arrived on a link, in order."""
        client = self._client
        assert client is not None
        acks: list[bytes] = []
        client.local.begin()
        try:
            for message in messages:
                kind = type(message)
                if kind is m.PeerSend and link.is_ready:
                    assert isinstance(message, m.PeerSend)
                    link.received += 1
                    client.message_arrived(
                        link.peer, message.id, message.body, message.ts, "direct"
                    )
                    acks.append(message.id)
                elif kind is m.PeerAck:
                    assert isinstance(message, m.PeerAck)
                    if link.unacked.pop(message.id, None) is not None:
                        client.message_state(message.id, link.peer, "delivered", "direct")
                elif kind is m.PeerHello:
                    assert isinstance(message, m.PeerHello)
                    self._check_hello(link, message)
                elif kind is m.PeerAccept:
                    link.mark_ready()
        finally:
            client.local.commit()
        for msg_id in acks:  # only now that they are committed
            link.send(m.PeerAck(id=msg_id))
        self._state_soon()

    def link_lost(self, link: PeerLink, reason: str) -> None:
        """A link ended: what it had not delivered goes through the hub."""
        self._accepting.discard(link)
        client = self._client
        if self.links.get(link.peer) is link:
            del self.links[link.peer]
            self._write_state()
            if client is not None and link.ready.done():
                log.info("direct link to %s lost (%s)", link.peer, reason)
                self._report(client, link.peer, "lost")
                self._retry_at[link.peer] = self.loop.time() + self.retry[0]
                self.stats["lost"] = self.stats.get("lost", 0) + 1
        if client is not None:
            for msg_id, (body, _) in link.unacked.items():
                client.send_via_hub(msg_id, link.peer, body)
        link.unacked.clear()

    # -- state for `duplex peers` -------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """The links held now, with their socket pairs."""
        return [
            {
                "peer": peer,
                "direction": "dialed" if link.dialer else "accepted",
                "pair": str(link.pair) if link.pair else "",
                "since": link.since,
                "sent": link.sent,
                "received": link.received,
                "unacked": len(link.unacked),
            }
            for peer, link in sorted(self.links.items())
        ]

    def _state_soon(self) -> None:
        # Counters change with every message: publish them at most twice a second.
        if self._state_handle is None:
            self._state_handle = self.loop.call_later(0.5, self._write_state_later)

    def _write_state_later(self) -> None:
        self._state_handle = None
        self._write_state()

    def _write_state(self, *, closing: bool = False) -> None:
        client = self._client
        if client is None or client.data_dir is None or client.transient:
            return  # (a one-shot command is not the client `duplex peers` asks about)
        path = client.data_dir / "peers.json"
        if closing:
            # Leave the file to whichever client is still running.
            with contextlib.suppress(OSError, ValueError):
                if json.loads(path.read_text()).get("pid") != os.getpid():
                    return
            with contextlib.suppress(OSError):
                path.unlink()
            return
        with contextlib.suppress(OSError):
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            state = {"pid": os.getpid(), "user": client.user, "endpoints": self.endpoints}
            state["links"] = self.describe()
            tmp.write_text(json.dumps(state))
            tmp.replace(path)


class _Refused(Exception):
    """A direct attempt failed; ``cause`` is what the hub's metrics count."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause
