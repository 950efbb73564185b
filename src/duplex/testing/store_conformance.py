"""The store conformance suite: the semantics every :class:`~duplex.store.base.Store` keeps.

Each check is a coroutine function that takes a fresh, opened, empty store and raises
``AssertionError`` on the first difference; :data:`CHECKS` lists them all, and
:func:`check_durable_across_reopen` takes a factory instead, since it closes and reopens.
The SQLite and PostgreSQL tests run the same list, so the hub may rely on nothing a
backend does that is not checked here. A third-party backend runs it unchanged::

    @pytest.mark.parametrize("check", CHECKS)
    def test_conformance(check):
        asyncio.run(run_check(lambda: MyStore(...), check))
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Awaitable, Callable

from duplex.errors import StoreError
from duplex.store.base import Entry, NewMessage, Store, Stored

__all__ = [
    "CHECKS",
    "Check",
    "StoreFactory",
    "check_accounts",
    "check_ack_creates_receipts_once",
    "check_concurrent_acks_and_sends",
    "check_concurrent_sequences_without_gaps",
    "check_contacts_and_watchers",
    "check_durable_across_reopen",
    "check_fetch_after_and_limit",
    "check_history_both_directions",
    "check_idempotent_resend",
    "check_sequences_start_at_one",
    "check_stats",
    "check_tokens_with_expiry",
    "check_unknown_users_refused",
    "new_id",
    "run_check",
]

Check = Callable[[Store], Awaitable[None]]
StoreFactory = Callable[[], Store]


def new_id() -> bytes:
    """A fresh 16-byte message id (random; the hub's clients use UUIDv7)."""
    return os.urandom(16)


def _msg(sender: str, recipient: str, body: str, ts: int = 1000) -> NewMessage:
    return NewMessage(sender, recipient, new_id(), body, ts)


async def run_check(factory: StoreFactory, check: Check) -> None:
    """Opens a store from ``factory``, runs ``check`` on it, and always closes it.

    Args:
        factory: makes a new, unopened store over empty storage.
        check: one of :data:`CHECKS`.
    """
    store = factory()
    await store.open()
    try:
        await check(store)
    finally:
        await store.close()


async def check_sequences_start_at_one(store: Store) -> None:
    """An empty mailbox has last_seq 0; the first entry is 1, the next 2."""
    assert await store.last_seq("bob") == 0
    assert await store.fetch("bob", 0, 10) == []
    first = await store.store_message(_msg("alice", "bob", "one"))
    second = await store.store_message(_msg("alice", "bob", "two"))
    assert (first.entry.seq, second.entry.seq) == (1, 2)
    assert not first.duplicate and not first.delivered
    assert first.entry == Entry("bob", 1, "msg", "alice", first.entry.msg_id, "one", 1000)
    assert await store.last_seq("bob") == 2
    assert await store.last_seq("alice") == 0


async def check_concurrent_sequences_without_gaps(store: Store) -> None:
    """2,000 concurrent sends to four mailboxes: each numbered 1..n, nothing lost."""
    recipients = ["r0", "r1", "r2", "r3"]
    senders = ["s0", "s1", "s2", "s3", "s4"]
    messages = [_msg(senders[i % 5], recipients[i % 4], f"body {i}", ts=i) for i in range(2000)]
    results = await asyncio.gather(*(store.store_message(m) for m in messages))
    assert not any(r.duplicate for r in results)
    for recipient in recipients:
        mine = [r.entry for r in results if r.entry.user == recipient]
        assert sorted(e.seq for e in mine) == list(range(1, len(mine) + 1)), recipient
        assert await store.last_seq(recipient) == len(mine)
        fetched = await store.fetch(recipient, 0, 10_000)
        assert fetched == sorted(mine, key=lambda e: e.seq)
    by_id = {r.entry.msg_id: (m, r.entry) for m, r in zip(messages, results, strict=True)}
    for m, entry in by_id.values():
        assert (entry.user, entry.peer, entry.body, entry.ts) == (
            m.recipient,
            m.sender,
            m.body,
            m.ts,
        )
    assert (await store.stats()).messages == 2000


async def check_idempotent_resend(store: Store) -> None:
    """A resent (sender, id) is stored once and returns the original entry."""
    m = _msg("alice", "bob", "original")
    first = await store.store_message(m)
    again = await store.store_message(NewMessage("alice", "bob", m.msg_id, "changed", 5))
    assert again.duplicate and not again.delivered
    assert again.entry == first.entry
    assert await store.last_seq("bob") == 1
    # Concurrent resends of one new message: exactly one is new.
    m2 = _msg("alice", "bob", "twice")
    both = await asyncio.gather(*(store.store_message(m2) for _ in range(5)))
    assert sorted(r.duplicate for r in both) == [False, True, True, True, True]
    assert len({r.entry for r in both}) == 1
    assert await store.last_seq("bob") == 2
    # The id belongs to its sender: another sender may use the same bytes.
    other = await store.store_message(NewMessage("carol", "bob", m.msg_id, "mine", 7))
    assert not other.duplicate and other.entry.seq == 3
    # Once the recipient acked it, a resend says so.
    await store.ack("bob", "phone", 1, 2000)
    late = await store.store_message(m)
    assert late.duplicate and late.delivered and late.entry == first.entry
    assert (await store.stats()).messages == 3


async def check_ack_creates_receipts_once(store: Store) -> None:
    """An ack marks messages delivered and appends one receipt each, only once."""
    sent = [await store.store_message(_msg("alice", "bob", f"m{i}")) for i in range(3)]
    receipts = await store.ack("bob", "phone", 2, 5000)
    assert [(r.user, r.seq, r.kind, r.peer, r.msg_id, r.body, r.ts) for r in receipts] == [
        ("alice", i + 1, "receipt", "bob", sent[i].entry.msg_id, "", 5000) for i in range(2)
    ]
    assert await store.ack("bob", "phone", 2, 5001) == []  # the same ack again
    assert await store.ack("bob", "laptop", 1, 5002) == []  # another device, older range
    assert await store.fetch("alice", 0, 10) == receipts
    third = await store.ack("bob", "laptop", 99, 5003)  # beyond the end: capped
    assert [r.msg_id for r in third] == [sent[2].entry.msg_id]
    assert third[0].seq == 3
    assert await store.ack("bob", "phone", 99, 5004) == []
    # Receipts are not acked back: alice acking her receipts creates nothing for bob.
    assert await store.ack("alice", "phone", 3, 5005) == []
    assert await store.last_seq("bob") == 3
    # A new message after the ack is not delivered by the old ack.
    fourth = await store.store_message(_msg("alice", "bob", "m3"))
    assert fourth.entry.seq == 4
    assert not (
        await store.store_message(NewMessage("alice", "bob", fourth.entry.msg_id, "", 0))
    ).delivered
    stats = await store.stats()
    assert (stats.messages, stats.delivered, stats.pending) == (4, 3, 1)
    assert await store.ack("bob", "phone", 0, 5006) == []
    assert await store.ack("nobody", "phone", 10, 5007) == []


async def check_concurrent_acks_and_sends(store: Store) -> None:
    """Sends and acks racing: receipts exactly once, sender mailboxes without gaps."""
    senders = ["a0", "a1", "a2"]
    first = await asyncio.gather(
        *(store.store_message(_msg(senders[i % 3], "bob", f"x{i}")) for i in range(300))
    )
    acks = [
        store.ack("bob", f"dev{i % 2}", upto, 100 + upto) for i, upto in enumerate(range(0, 301, 7))
    ]
    acks.append(store.ack("bob", "dev0", 300, 999))
    more = [store.store_message(_msg(senders[i % 3], "bob", f"y{i}")) for i in range(100)]
    ack_results, _ = await asyncio.gather(asyncio.gather(*acks), asyncio.gather(*more))
    receipts = [e for batch in ack_results for e in batch]
    counts = Counter(r.msg_id for r in receipts)
    assert set(counts) == {r.entry.msg_id for r in first}
    assert set(counts.values()) == {1}
    for sender in senders:
        box = await store.fetch(sender, 0, 10_000)
        assert [e.seq for e in box] == list(range(1, len(box) + 1))
        assert all(e.kind == "receipt" and e.peer == "bob" for e in box)
    assert await store.last_seq("bob") == 400
    assert (await store.stats()).delivered == 300


async def check_fetch_after_and_limit(store: Store) -> None:
    """fetch returns entries after a sequence, in order, at most ``limit``."""
    for i in range(10):
        await store.store_message(_msg("alice", "bob", f"m{i}", ts=i))
    assert [e.seq for e in await store.fetch("bob", 0, 3)] == [1, 2, 3]
    assert [e.seq for e in await store.fetch("bob", 7, 100)] == [8, 9, 10]
    assert [e.body for e in await store.fetch("bob", 4, 2)] == ["m4", "m5"]
    assert await store.fetch("bob", 10, 5) == []
    assert await store.fetch("bob", 3, 0) == []
    assert await store.fetch("alice", 0, 5) == []


async def check_history_both_directions(store: Store) -> None:
    """history merges both directions by time, newest last, bounded by ``before``."""
    sent: list[tuple[str, str, str, int]] = []
    for i in range(8):
        a, b = ("alice", "bob") if i % 2 == 0 else ("bob", "alice")
        await store.store_message(_msg(a, b, f"h{i}", ts=100 + i))
        sent.append((a, b, f"h{i}", 100 + i))
    await store.store_message(_msg("carol", "alice", "other", ts=150))
    await store.store_message(_msg("alice", "carol", "other2", ts=151))
    await store.ack("bob", "phone", 99, 200)  # receipts are not history
    page = await store.history("alice", "bob", None, 100)
    assert [(e.peer, e.user, e.body, e.ts) for e in page] == sent
    assert await store.history("bob", "alice", None, 100) == page
    assert [e.body for e in await store.history("alice", "bob", None, 3)] == ["h5", "h6", "h7"]
    assert [e.body for e in await store.history("alice", "bob", 105, 3)] == ["h2", "h3", "h4"]
    assert [e.body for e in await store.history("alice", "bob", 101, 10)] == ["h0"]
    assert await store.history("alice", "bob", 100, 10) == []
    assert await store.history("alice", "dave", None, 10) == []
    await store.store_message(_msg("alice", "alice", "note", ts=300))
    assert [e.body for e in await store.history("alice", "alice", None, 10)] == ["note"]


async def check_contacts_and_watchers(store: Store) -> None:
    """Contacts are a set per owner; watchers is the reverse relation."""
    for name in ("alice", "bob", "carol"):
        assert await store.create_user(name, "hash", 1)
    assert await store.add_contact("alice", "bob")
    assert not await store.add_contact("alice", "bob")
    assert await store.add_contact("alice", "carol")
    assert await store.add_contact("carol", "bob")
    assert await store.contacts("alice") == ["bob", "carol"]
    assert await store.watchers("bob") == ["alice", "carol"]
    assert await store.watchers("alice") == []
    assert await store.remove_contact("alice", "bob")
    assert not await store.remove_contact("alice", "bob")
    assert await store.contacts("alice") == ["carol"]
    assert await store.watchers("bob") == ["carol"]
    assert await store.contacts("nobody") == []


async def check_unknown_users_refused(store: Store) -> None:
    """A contact or token naming a user without an account is a StoreError, alone."""
    assert await store.create_user("alice", "hash", 1)
    try:
        await store.add_contact("alice", "ghost")
    except StoreError:
        pass
    else:
        raise AssertionError("add_contact accepted a user without an account")
    try:
        await store.save_token(b"t" * 32, "ghost", "phone", 10**15)
    except StoreError:
        pass
    else:
        raise AssertionError("save_token accepted a user without an account")
    # A refused request in a group commit does not fail its neighbours.
    results = await asyncio.gather(
        store.add_contact("alice", "ghost2"),
        store.store_message(_msg("alice", "bob", "fine")),
        return_exceptions=True,
    )
    assert isinstance(results[0], StoreError)
    assert isinstance(results[1], Stored) and results[1].entry.seq == 1
    assert await store.contacts("alice") == []


async def check_tokens_with_expiry(store: Store) -> None:
    """Only a token's hash is looked up; an expired or deleted token has no owner."""
    assert await store.create_user("alice", "hash", 1)
    await store.save_token(b"h1" * 16, "alice", "phone", 2000)
    await store.save_token(b"h2" * 16, "alice", "laptop", 3000)
    assert await store.token_owner(b"h1" * 16, 1999) == ("alice", "phone")
    assert await store.token_owner(b"h1" * 16, 2000) is None  # expired at its instant
    assert await store.token_owner(b"h2" * 16, 2500) == ("alice", "laptop")
    assert await store.token_owner(b"h3" * 16, 0) is None
    await store.delete_token(b"h2" * 16)
    assert await store.token_owner(b"h2" * 16, 2500) is None
    await store.delete_token(b"h2" * 16)  # twice is fine


async def check_accounts(store: Store) -> None:
    """Accounts: a name is taken once; the hash can be replaced."""
    assert await store.get_user("alice") is None
    assert await store.create_user("alice", "hash1", 1234)
    assert not await store.create_user("alice", "other", 99)
    user = await store.get_user("alice")
    assert user is not None and (user.name, user.password_hash, user.created) == (
        "alice",
        "hash1",
        1234,
    )
    await store.set_password("alice", "hash2")
    user = await store.get_user("alice")
    assert user is not None and user.password_hash == "hash2"
    await store.set_password("nobody", "x")  # nothing to do, no error
    assert await store.get_user("nobody") is None


async def check_stats(store: Store) -> None:
    """stats counts users, messages (not receipts) and delivered messages."""
    stats = await store.stats()
    assert (stats.users, stats.messages, stats.delivered, stats.pending) == (0, 0, 0, 0)
    await store.create_user("alice", "h", 1)
    await store.create_user("bob", "h", 1)
    for i in range(5):
        await store.store_message(_msg("alice", "bob", f"m{i}"))
    await store.store_message(_msg("bob", "alice", "back"))
    await store.ack("bob", "phone", 3, 10)
    stats = await store.stats()
    assert (stats.users, stats.messages, stats.delivered, stats.pending) == (2, 6, 3, 3)


async def check_durable_across_reopen(factory: StoreFactory) -> None:
    """Everything survives close and reopen; sequences and idempotency continue, and
    the store keeps its id.

    Args:
        factory: makes a new store over the SAME storage each call.
    """
    store = factory()
    await store.open()
    try:
        store_id = store.store_id
        assert len(store_id) == 32 and int(store_id, 16) >= 0  # 128 random bits, in hex
        await store.create_user("alice", "hash", 1)
        await store.create_user("bob", "hash", 1)
        await store.add_contact("alice", "bob")
        await store.save_token(b"k" * 32, "alice", "phone", 10**15)
        sent = await asyncio.gather(
            *(store.store_message(_msg("alice", "bob", f"d{i}", ts=i)) for i in range(50))
        )
        receipts = await store.ack("bob", "phone", 20, 77)
        before = await store.fetch("bob", 0, 100)
    finally:
        await store.close()
    store = factory()
    await store.open()
    try:
        assert store.store_id == store_id  # it names the store, not one opening of it
        assert await store.fetch("bob", 0, 100) == before
        assert await store.fetch("alice", 0, 100) == receipts
        assert await store.contacts("alice") == ["bob"]
        assert await store.token_owner(b"k" * 32, 0) == ("alice", "phone")
        again = await store.store_message(
            NewMessage("alice", "bob", sent[0].entry.msg_id, "resent", 0)
        )
        assert again.duplicate and again.entry == sent[0].entry
        assert again.delivered == (sent[0].entry.seq <= 20)
        nxt = await store.store_message(_msg("alice", "bob", "after"))
        assert nxt.entry.seq == 51
        assert [r.msg_id for r in await store.ack("bob", "phone", 20, 78)] == []
        stats = await store.stats()
        assert (stats.users, stats.messages, stats.delivered) == (2, 51, 20)
    finally:
        await store.close()


CHECKS: tuple[Check, ...] = (
    check_sequences_start_at_one,
    check_concurrent_sequences_without_gaps,
    check_idempotent_resend,
    check_ack_creates_receipts_once,
    check_concurrent_acks_and_sends,
    check_fetch_after_and_limit,
    check_history_both_directions,
    check_contacts_and_watchers,
    check_unknown_users_refused,
    check_tokens_with_expiry,
    check_accounts,
    check_stats,
)
"""Every check that takes a fresh store (see :func:`check_durable_across_reopen`)."""
