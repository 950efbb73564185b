"""The ``Store`` protocol: what the hub keeps durably, whatever the backend.

The hub talks only to this protocol; the embedded default is SQLite
(:mod:`duplex.store.sqlite`), cluster mode uses PostgreSQL. Both give the same
semantics, which the store conformance tests check:

* **Mailboxes.** Every user has one mailbox: a sequence of :class:`Entry` numbered
  1, 2, 3, ... with no gaps. An entry is either a message to the user (``kind="msg"``)
  or a delivery receipt for a message the user sent (``kind="receipt"``). A device
  that reconnects says the last sequence number it saw and gets the rest, in order.
* **Idempotent sends.** A message is identified by ``(sender, msg_id)``; storing the
  same pair again stores nothing and returns the original entry with
  ``duplicate=True``, so a client may resend freely after a reconnect.
* **Durable before acknowledged.** When :meth:`Store.store_message` returns, the
  message is on disk (fsync'd), and only then does the hub say ``stored`` to the
  sender. Backends batch concurrent writes into one transaction (group commit) so
  that one fsync covers many messages.
* **End-to-end acks.** :meth:`Store.ack` records that a recipient's device holds every
  entry up to a sequence number, marks those messages delivered, and appends one
  receipt per newly delivered message to each sender's mailbox, in the same
  transaction.

Errors of the backend (``sqlite3.Error``, ``asyncpg`` errors, ``OSError``) never escape:
they are raised as :class:`~duplex.errors.StoreError`.

The records are frozen msgspec structs rather than frozen dataclasses: the hub makes
several per message, and a frozen dataclass costs a microsecond to construct (each
field goes through ``object.__setattr__``), a struct a twentieth of that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

__all__ = [
    "Entry",
    "EntryKind",
    "NewMessage",
    "Store",
    "StoreStats",
    "Stored",
    "User",
]

EntryKind = Literal["msg", "receipt"]


class User(msgspec.Struct, frozen=True, gc=False):
    """An account.

    Attributes:
        name: the user name (unique, already validated by the hub).
        password_hash: an argon2id hash in PHC string format.
        created: when the account was made, in ms since the epoch.
    """

    name: str
    password_hash: str
    created: int


class Entry(msgspec.Struct, frozen=True, gc=False):
    """One item of a user's mailbox.

    Attributes:
        user: whose mailbox it is in.
        seq: its number in that mailbox (1, 2, 3, ... without gaps).
        kind: ``"msg"``: a message to ``user``; ``"receipt"``: the message ``msg_id``
            that ``user`` sent to ``peer`` was delivered.
        peer: for a message, its sender; for a receipt, the recipient who got it.
        msg_id: the 16-byte message id the sender chose (UUIDv7).
        body: the text of a message; empty for a receipt.
        ts: when the hub stored it, in ms since the epoch.
    """

    user: str
    seq: int
    kind: EntryKind
    peer: str
    msg_id: bytes
    body: str
    ts: int


class NewMessage(msgspec.Struct, frozen=True, gc=False):
    """A message to store: the ``Send`` a sender's client made."""

    sender: str
    recipient: str
    msg_id: bytes
    body: str
    ts: int


class Stored(msgspec.Struct, frozen=True, gc=False):
    """The result of storing a message.

    Attributes:
        entry: the entry in the recipient's mailbox (the original one for a duplicate).
        duplicate: True when ``(sender, msg_id)`` was already stored.
        delivered: True when the recipient has already acked it (only for duplicates).
    """

    entry: Entry
    duplicate: bool = False
    delivered: bool = False


class StoreStats(msgspec.Struct, frozen=True, gc=False):
    """Counts for ``/metrics``."""

    users: int
    messages: int
    delivered: int

    @property
    def pending(self) -> int:
        """Messages stored but not yet acked by their recipient."""
        return self.messages - self.delivered


class Store(Protocol):
    """Durable state of the hub. Every method may raise :class:`~duplex.errors.StoreError`."""

    async def open(self) -> None:
        """Opens the store, checks its integrity and applies pending migrations.

        Raises:
            StoreCorrupt: the store failed its integrity check.
        """

    async def close(self) -> None:
        """Finishes pending writes and releases every resource."""

    @property
    def store_id(self) -> str:
        """Names this store (once :meth:`open` returned): made when the store was
        created, never changed. Mailbox sequence numbers count within one store, so a
        device tells its hub which store the last sequence it holds is from."""
        ...

    # -- accounts -------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str, created: int) -> bool:
        """Creates an account. Returns False when the name is taken (nothing changes)."""
        ...

    async def get_user(self, name: str) -> User | None:
        """Returns the account, or None."""
        ...

    async def set_password(self, name: str, password_hash: str) -> None:
        """Replaces a password hash (rehash after an argon2 parameter change)."""

    async def save_token(self, token_hash: bytes, user: str, device: str, expires: int) -> None:
        """Records a session token (only its hash) for ``user``'s ``device``.

        Raises:
            StoreError: ``user`` has no account (refused alone; concurrent writes in
                the same group commit are not affected).
        """

    async def token_owner(self, token_hash: bytes, now: int) -> tuple[str, str] | None:
        """Returns ``(user, device)`` of an unexpired token (``expires > now``), or None."""
        ...

    async def delete_token(self, token_hash: bytes) -> None:
        """Forgets a token (logout)."""

    # -- contacts -------------------------------------------------------------

    async def add_contact(self, owner: str, contact: str) -> bool:
        """Adds ``contact`` to ``owner``'s list. Returns False if it was there.

        Raises:
            StoreError: ``owner`` or ``contact`` has no account (refused alone).
        """
        ...

    async def remove_contact(self, owner: str, contact: str) -> bool:
        """Removes ``contact`` from ``owner``'s list. Returns False if it was not there."""
        ...

    async def contacts(self, owner: str) -> list[str]:
        """Returns ``owner``'s contacts, sorted."""
        ...

    async def watchers(self, user: str) -> list[str]:
        """Returns the users who have ``user`` as a contact (presence goes to them)."""
        ...

    # -- mailboxes ------------------------------------------------------------

    async def store_message(self, message: NewMessage) -> Stored:
        """Appends a message to its recipient's mailbox, durably (see module doc).

        Concurrent calls are committed together (group commit); each returns only
        after the transaction holding its message is on disk. The recipient needs no
        account: a mailbox exists once written to (the hub decides who may be written
        to). Cancelling the call does not cancel the write; resending is safe.
        """
        ...

    async def fetch(self, user: str, after: int, limit: int) -> list[Entry]:
        """Returns up to ``limit`` entries of ``user``'s mailbox with ``seq > after``, in order."""
        ...

    async def last_seq(self, user: str) -> int:
        """Returns the highest sequence number in ``user``'s mailbox (0 when empty)."""
        ...

    async def ack(self, user: str, device: str, upto: int, ts: int) -> list[Entry]:
        """Records that ``user``'s ``device`` holds every entry up to ``upto``.

        Marks the messages among them delivered (if they were not already) and appends
        a receipt for each to its sender's mailbox, durably. ``upto`` is capped at the
        mailbox's last sequence; acking a range again, from any device, creates nothing.
        Receipts are not acked back: acking receipts only moves the device's cursor.

        Returns:
            The receipt entries created, in the senders' mailboxes.
        """
        ...

    async def history(self, user: str, peer: str, before: int | None, limit: int) -> list[Entry]:
        """Returns up to ``limit`` messages between ``user`` and ``peer``, newest last.

        Both directions: entries of ``user``'s mailbox from ``peer`` and entries of
        ``peer``'s mailbox from ``user``. ``before`` is a timestamp bound (exclusive).
        """
        ...

    async def stats(self) -> StoreStats:
        """Returns counts for metrics."""
        ...


def validate_batch(messages: Sequence[NewMessage]) -> None:
    """Checks invariants every backend relies on (16-byte ids).

    Raises:
        ValueError: a message id is not 16 bytes.
    """
    for message in messages:
        if len(message.msg_id) != 16:
            raise ValueError(f"message id must be 16 bytes, got {len(message.msg_id)}")
