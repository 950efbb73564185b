"""Introduction tickets, sans-I/O: accepted once, and every forgery refused."""

from __future__ import annotations

import pytest

from duplex.protocol.tickets import (
    MAX_LIFETIME_MS,
    NonceCache,
    TicketRejected,
    check_ticket,
    mint_ticket,
)

KEY = b"k" * 32
NOW = 1_700_000_000_000


def ticket(**kw: object) -> bytes:
    args: dict[str, object] = {
        "key": KEY,
        "sender": "alice",
        "recipient": "bob",
        "device": "bob-phone",
        "now_ms": NOW,
        "nonce": b"n" * 16,
    }
    args.update(kw)
    return mint_ticket(**args)  # type: ignore[arg-type]


def check(raw: bytes, nonces: NonceCache | None = None, **kw: object) -> object:
    args: dict[str, object] = {"key": KEY, "me": "bob", "device": "bob-phone", "now_ms": NOW + 1000}
    args.update(kw)
    return check_ticket(raw, nonces=nonces or NonceCache(), **args)  # type: ignore[arg-type]


def reason(raw: bytes, **kw: object) -> str:
    with pytest.raises(TicketRejected) as info:
        check(raw, **kw)
    return info.value.reason


def test_a_valid_ticket_is_accepted_once() -> None:
    nonces = NonceCache()
    raw = ticket()
    parsed = check(raw, nonces)
    assert parsed.sender == "alice"  # type: ignore[attr-defined]
    assert reason(raw, nonces=nonces) == "replayed"


def test_forged_mac() -> None:
    raw = bytearray(ticket())
    raw[-1] ^= 1
    assert reason(bytes(raw)) == "mac"
    assert reason(ticket(key=b"x" * 32)) == "mac"  # signed with another session's key


def test_tampered_body_breaks_the_mac() -> None:
    raw = ticket()
    forged = raw.replace(b"alice", b"mallo")
    assert reason(forged) == "mac"


def test_wrong_recipient_or_device() -> None:
    assert reason(ticket(recipient="carol")) == "recipient"
    assert reason(ticket(device="bob-laptop")) == "recipient"


def test_expired_and_far_future() -> None:
    assert reason(ticket(), now_ms=NOW + MAX_LIFETIME_MS + 1) == "expired"
    assert reason(ticket(lifetime_ms=10), now_ms=NOW + 11) == "expired"
    # A lifetime beyond the cap is capped at mint time.
    raw = ticket(lifetime_ms=10 * MAX_LIFETIME_MS)
    assert reason(raw, now_ms=NOW + MAX_LIFETIME_MS + 1) == "expired"


def test_malformed() -> None:
    assert reason(b"") == "malformed"
    assert reason(b"x" * 20) == "malformed"


def test_nonce_cache_is_bounded_and_forgets_only_expired() -> None:
    cache = NonceCache(limit=3)
    for i in range(3):
        assert cache.add(bytes([i]) * 16, expires=NOW + 10, now_ms=NOW)
    with pytest.raises(TicketRejected, match="too many"):
        cache.add(b"z" * 16, expires=NOW + 10, now_ms=NOW)
    assert cache.add(b"z" * 16, expires=NOW + 100, now_ms=NOW + 11)  # the old ones expired
