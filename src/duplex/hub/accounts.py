"""Accounts: user names, argon2id password hashes, tokens, and login throttling."""

from __future__ import annotations

import hashlib
import re
import secrets

import argon2

__all__ = [
    "NAME_RULE",
    "LoginThrottle",
    "PasswordHasher",
    "TokenBucket",
    "hash_token",
    "new_token",
    "valid_name",
]

NAME_RULE = (
    "1 to 32 characters: lowercase letters, digits, '.', '_' or '-', "
    "starting with a letter or digit"
)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")

MIN_PASSWORD = 6
"""Shortest password accepted at registration."""


def valid_name(name: str) -> bool:
    """True for a user name that follows :data:`NAME_RULE`."""
    return _NAME.fullmatch(name) is not None


def new_token() -> str:
    """Returns a fresh session token (256 random bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    """Returns what the store keeps of a token: its SHA-256 (tokens are random, no salt needed)."""
    return hashlib.sha256(token.encode()).digest()


class PasswordHasher:
    """argon2id hashing with configurable cost.

    Args:
        time_cost: iterations.
        memory_kib: memory per hash in KiB.
    """

    def __init__(self, time_cost: int = 2, memory_kib: int = 19456) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=1
        )
        # A hash of nothing, verified when the user does not exist, so that "no such
        # user" and "wrong password" take the same time (no user enumeration by timing).
        self._dummy = self._hasher.hash(secrets.token_hex(8))

    def hash(self, password: str) -> str:
        """Returns the PHC string of a new argon2id hash (CPU-heavy: run off the loop)."""
        return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """True when ``password`` matches ``stored`` (None: burn the same time, False)."""
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """True when ``stored`` was made with other parameters."""
        return self._hasher.check_needs_rehash(stored)


class TokenBucket:
    """A token bucket: ``burst`` tokens, refilled at ``rate`` per second.

    Args:
        rate: tokens per second.
        burst: capacity.
        now: the current time (monotonic seconds).
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Takes ``n`` tokens if there are enough; returns whether it did."""
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def wait_time(self, now: float, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are there."""
        self._refill(now)
        return max(0.0, (n - self.tokens) / self.rate)

    def full(self, now: float) -> bool:
        """True when the bucket is full (it can be forgotten)."""
        self._refill(now)
        return self.tokens >= self.burst


class LoginThrottle:
    """Slows password guessing without locking the real user out.

    Two buckets, both charged by *failed* logins: one per (address, user), which stops
    guessing one account from one place, and one per address, which stops guessing
    many accounts from one place. Successful logins cost nothing, so an office behind
    one NAT address can log in all at once. Nothing is keyed on the user alone, so an
    attacker hammering ``alice`` from one address does not stop ``alice`` logging in
    from hers. (A distributed attack on one account is bounded by argon2's cost and
    by each address's budget.) Registrations, which cost an argon2 hash each, are
    charged to the address's bucket too.

    Whether an attempt fails is known only after its password is checked, so every
    attempt is charged when it starts (:meth:`check`) and a success gives the charge
    back (:meth:`succeeded`). The price: at most ``ip_burst`` logins from one address
    are checked at the same moment, and the office's next ones are told to retry
    (``throttled``, which clients do after their backoff) until those succeed.
    """

    def __init__(self, rate: float, burst: int, ip_rate: float, ip_burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.ip_rate, self.ip_burst = ip_rate, ip_burst
        self._pairs: dict[tuple[str, str], TokenBucket] = {}
        self._ips: dict[str, TokenBucket] = {}

    def _ip(self, ip: str, now: float) -> TokenBucket:
        bucket = self._ips.get(ip)
        if bucket is None:
            bucket = self._ips[ip] = TokenBucket(self.ip_rate, self.ip_burst, now)
        return bucket

    def check(self, ip: str, user: str, now: float) -> float:
        """Returns 0 when an attempt may go ahead, else the seconds to wait.

        ``user`` is the account a login is for, or ``""`` for a registration.

        An attempt that may go ahead is charged at once, to (ip, user) and to ip, as if
        it had failed; :meth:`succeeded` gives the charge back. Charging only once the
        password had been checked (an argon2 hash on a worker thread, awaited) let any
        number of attempts made at the same moment pass the same check: 40 guesses on
        40 connections all got checked against a burst of 5.
        """
        self._sweep(now)
        ip_bucket = self._ip(ip, now)
        pair = self._pairs.get((ip, user)) if user else None
        wait = ip_bucket.wait_time(now)
        if pair is not None:
            wait = max(wait, pair.wait_time(now))
        if wait == 0:
            ip_bucket.take(now)
            if user:  # a login; a registration (no user) is charged to ip only
                if pair is None:
                    pair = self._pairs[(ip, user)] = TokenBucket(self.rate, self.burst, now)
                pair.take(now)
        return wait

    def failed(self, ip: str, user: str, now: float) -> None:
        """A checked attempt failed: :meth:`check` has charged it already."""

    def registered(self, ip: str, now: float) -> None:
        """A registration: :meth:`check` (with no user) has charged it to ip already."""

    def succeeded(self, ip: str, user: str) -> None:
        """Forgets the failures of (ip, user) and gives ip back this attempt's charge."""
        self._pairs.pop((ip, user), None)
        bucket = self._ips.get(ip)
        if bucket is not None:
            bucket.tokens = min(float(bucket.burst), bucket.tokens + 1.0)

    def _sweep(self, now: float) -> None:
        # Bound memory: forget full buckets once the tables grow.
        if len(self._pairs) > 10_000:
            self._pairs = {k: b for k, b in self._pairs.items() if not b.full(now)}
        if len(self._ips) > 10_000:
            self._ips = {k: b for k, b in self._ips.items() if not b.full(now)}
