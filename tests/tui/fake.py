"""A stand-in client with fixed data, for snapshots and screenshots (no hub)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from duplex.client import ClientEvent, LocalStore, unsendable
from duplex.client.events import ConnectionState
from duplex.client.local import ImportedLine
from duplex.config import ClientConfig
from duplex.errors import Unsendable
from duplex.tui import ChatApp
from duplex.tui.format import Clock
from tests.tui.helpers import FIXED_NOW, MemoryTokens


@dataclasses.dataclass(frozen=True)
class FakeContact:
    user: str
    online: bool


class FakeRouter:
    """Looks like a P2P router holding direct links."""

    def __init__(self, links: int) -> None:
        self.links = {f"peer{i}": object() for i in range(links)}


class FakeClient:
    """Enough of :class:`~duplex.client.Client` to draw the UI with fixed data."""

    def __init__(self, local: LocalStore, contacts: dict[str, bool], links: int = 0) -> None:
        self.user = "alice"
        self.hub = ("127.0.0.1", 7070)
        self.state: ConnectionState = "online"
        self.local = local
        self.token = ""
        self.fatal = ""
        self.router = FakeRouter(links)
        self._contacts = contacts
        self.sent: list[tuple[str, str]] = []
        self._closed = asyncio.Event()

    async def events(self) -> AsyncIterator[ClientEvent]:
        await self._closed.wait()
        return
        yield

    async def send(self, to: str, text: str) -> bytes:
        why = unsendable(to, text)  # as the real client refuses it
        if why:
            raise Unsendable(why)
        msg_id = len(self.sent).to_bytes(16, "big")
        self.sent.append((to, text))
        self.local.add_outgoing(to, text, msg_id, int(FIXED_NOW * 1000))
        return msg_id

    async def contacts(self) -> Sequence[FakeContact]:
        return [FakeContact(user, online) for user, online in self._contacts.items()]

    async def add_contact(self, user: str) -> None:
        self._contacts[user] = False

    async def remove_contact(self, user: str) -> None:
        self._contacts.pop(user, None)

    async def hub_history(self, peer: str, before: int = 0, limit: int = 50) -> Sequence[object]:
        return []

    async def wait_online(self, timeout: float) -> None:
        return

    def reconnect_now(self) -> None:
        return

    async def close(self) -> None:
        self._closed.set()


def _ms(day: int, hour: int, minute: int) -> int:
    moment = datetime.datetime(2024, 6, day, hour, minute, tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def _id(n: int) -> bytes:
    return n.to_bytes(16, "big")


CONVERSATION: list[tuple[int, int, int, bool, str, str, str]] = [
    # (day, hour, minute, ours, text, state, path)
    (3, 9, 12, False, "morning! did the hub restart go fine?", "delivered", "relayed"),
    (3, 9, 13, True, "yes, nothing lost: the outbox resent them", "delivered", "relayed"),
    (3, 9, 15, False, "nice. are we direct now?", "delivered", "direct"),
    (3, 9, 15, True, "we are, the hub only introduced us", "delivered", "direct"),
    (3, 18, 40, True, "off for today, talk tomorrow", "stored", "stored"),
    (4, 8, 2, False, "saw it this morning (you were offline, so it was stored)", "delivered",
     "stored"),
    (4, 14, 55, True, "lunch at 1?\nor 1:30 if the review runs late", "delivered", "direct"),
    (4, 15, 1, True, "this one never made it", "failed", ""),
    (4, 15, 20, False, "@alice the benchmark is done, 100k messages scroll fine", "delivered",
     "direct"),
    (4, 15, 21, False, "numbers in the issue", "delivered", "direct"),
    (4, 15, 29, True, "reading them now", "queued", ""),
]  # fmt: skip
"""Alice and Bob over two days: every state and path, a mention, two lines in one."""


def seed(local: LocalStore) -> None:
    """Fills ``local`` with the fixed conversations (Bob: 2 unread, Carol: 3, 1 mention)."""
    for number, (day, hour, minute, ours, text, state, path) in enumerate(CONVERSATION):
        ts = _ms(day, hour, minute)
        if ours:
            local.add_outgoing("bob", text, _id(number), ts)
            local.set_state(_id(number), state if state != "failed" else "failed",
                            path or None, "rate-limited: too many messages" if state == "failed"
                            else "")  # fmt: skip
        else:
            local.add_incoming("bob", _id(number), text, ts, path)
        if number == 7:
            line = local.line_of(_id(number), outgoing=True)
            assert line is not None
            local.set_read_marker("bob", line.key)
    carol = [
        (9, 30, "standup moved to 10"),
        (15, 2, "@alice can you look at #7?"),
        (15, 3, "the TUI one"),
    ]
    local.import_lines("carol", [ImportedLine(_id(100), True, "hi carol", _ms(3, 17, 0))])
    local.set_read_marker("carol", (_ms(3, 17, 0), 10**9))
    for number, (hour, minute, text) in enumerate(carol):
        local.add_incoming("carol", _id(200 + number), text, _ms(4, hour, minute), "relayed")


def demo_app(
    tmp_path: Path, *, links: int = 1, user: str = "alice", notify: tuple[str, ...] = ()
) -> ChatApp:
    """The chat over the fixed data, with a fixed clock in UTC."""
    from tests.tui.helpers import backend

    local = LocalStore(tmp_path / "local.db")
    seed(local)
    client = FakeClient(local, {"bob": True, "carol": True, "dave": False}, links=links)
    config = ClientConfig(user=user, data_dir=str(tmp_path))
    be = backend(tmp_path)
    be.tokens = MemoryTokens()
    clock = Clock(tz=datetime.UTC, now=lambda: FIXED_NOW)
    return ChatApp(be, config, client=client, clock=clock, notify=notify)
