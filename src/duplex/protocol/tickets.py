"""Introduction tickets: how a peer proves the hub sent it (sans-I/O).

When alice asks the hub for a direct path to bob, the hub answers with bob's
endpoints, his certificate fingerprint, and a *ticket*: (from, to, device, expiry,
nonce) authenticated with HMAC-SHA256 under the ticket key of bob's session, a random
key the hub handed bob's device at login and nobody else knows. Alice presents the
ticket on the direct link; bob checks that

1. the MAC is right (the hub made it, for this session's key),
2. it names him as recipient and his device (not a ticket for someone else),
3. it has not expired (tickets live at most :data:`MAX_LIFETIME_MS`),
4. its nonce was never seen before (no replay), remembered for the ticket lifetime.

So the dialer is authenticated by the ticket, and the listener by the pinned TLS
fingerprint: each side knows who the other is, and a stranger who learns bob's
address gets nothing (the IRC DCC problem).

Time and randomness are parameters: ``now_ms`` and ``nonce`` come from the caller.
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from duplex.errors import RemoteProtocolError

__all__ = [
    "MAX_LIFETIME_MS",
    "NonceCache",
    "Ticket",
    "TicketRejected",
    "check_ticket",
    "mint_ticket",
]

MAX_LIFETIME_MS = 60_000
"""A ticket is valid for at most a minute."""

MAC_SIZE = 32


class TicketRejected(RemoteProtocolError):
    """A ticket failed a check; ``reason`` says which."""

    code = "ticket"

    def __init__(self, reason: str) -> None:
        super().__init__(f"ticket rejected: {reason}")
        self.reason = reason


class Ticket(msgspec.Struct, frozen=True, array_like=True):
    """The signed part of a ticket."""

    sender: str
    recipient: str
    device: str
    expires: int
    nonce: bytes


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Ticket)


def mint_ticket(
    key: bytes,
    sender: str,
    recipient: str,
    device: str,
    now_ms: int,
    nonce: bytes,
    lifetime_ms: int = MAX_LIFETIME_MS,
) -> bytes:
    """Returns a ticket for ``sender`` to reach ``recipient``'s ``device``.

    Args:
        key: the ticket key of the recipient's session.
        sender: the user who will present it.
        recipient: the user it lets the sender reach.
        device: the recipient's device id.
        now_ms: the current time in ms since the epoch.
        nonce: 16 random bytes.
        lifetime_ms: validity, capped at :data:`MAX_LIFETIME_MS`.
    """
    body = _encoder.encode(
        Ticket(sender, recipient, device, now_ms + min(lifetime_ms, MAX_LIFETIME_MS), nonce)
    )
    return body + hmac.new(key, body, hashlib.sha256).digest()


class NonceCache:
    """Nonces seen within their ticket's lifetime (bounded by the ticket rate x 60 s)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._seen: dict[bytes, int] = {}
        self.limit = limit

    def add(self, nonce: bytes, expires: int, now_ms: int) -> bool:
        """Records ``nonce``; returns False when it was already there (a replay)."""
        if nonce in self._seen:
            return False
        if len(self._seen) >= self.limit:
            self._seen = {n: e for n, e in self._seen.items() if e > now_ms}
            if len(self._seen) >= self.limit:
                # Refuse rather than forget: forgetting would reopen replays.
                raise TicketRejected("too many tickets in flight")
        self._seen[nonce] = expires
        return True


def check_ticket(
    ticket: bytes, key: bytes, me: str, device: str, now_ms: int, nonces: NonceCache
) -> Ticket:
    """Checks a presented ticket (see the module docstring for the four rules).

    Returns:
        The ticket, whose ``sender`` is now the authenticated peer.

    Raises:
        TicketRejected: with the failed rule as ``reason``: ``"mac"``, ``"malformed"``,
            ``"recipient"``, ``"expired"``, ``"replayed"``.
    """
    if len(ticket) <= MAC_SIZE:
        raise TicketRejected("malformed")
    body, mac = ticket[:-MAC_SIZE], ticket[-MAC_SIZE:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise TicketRejected("mac")
    try:
        parsed = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise TicketRejected("malformed") from None
    if parsed.recipient != me or parsed.device != device:
        raise TicketRejected("recipient")
    if parsed.expires <= now_ms or parsed.expires > now_ms + MAX_LIFETIME_MS:
        raise TicketRejected("expired")
    if not nonces.add(parsed.nonce, parsed.expires, now_ms):
        raise TicketRejected("replayed")
    return parsed
