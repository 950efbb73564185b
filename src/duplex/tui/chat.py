"""The chat screen: contacts on the left, the conversation and the input on the
right, the status bar below; and the code that turns the client's events into them.

Everything here goes through :class:`~duplex.tui.backend.ChatClient` (the client
library) and the local store; there is no protocol code in the UI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import OptionList, TextArea

from duplex.client import (
    ClientEvent,
    ConnectionStateChanged,
    MessageReceived,
    MessageStateChanged,
    PresenceChanged,
)
from duplex.client.local import ImportedLine, StoredLine
from duplex.errors import DuplexError, Unsendable
from duplex.tui.backend import ChatClient
from duplex.tui.commands import Command, CommandError, parse_command
from duplex.tui.format import Clock
from duplex.tui.log import MessageLog
from duplex.tui.notify import Notifier
from duplex.tui.roster import Roster
from duplex.tui.screens import ConfirmPaste, SearchScreen
from duplex.tui.timeline import Timeline
from duplex.tui.widgets import Composer, ContactList, StatusBar

if TYPE_CHECKING:
    from duplex.tui.app import ChatApp

__all__ = ["HISTORY_PAGE", "ChatScreen", "direct_links"]

log = logging.getLogger("duplex.tui")

HISTORY_PAGE = 200
"""Messages asked of the hub when the view nears the oldest one held here."""


def direct_links(client: object) -> int:
    """The number of direct peer links the client holds (0 without a P2P router)."""
    links = getattr(getattr(client, "router", None), "links", None)
    return len(links) if isinstance(links, Mapping) else 0


class ChatScreen(Screen[None]):
    """The main screen.

    Args:
        client: a started client.
        clock: time zone and now.
        notifier: bell and desktop notifications.
        save_token: called with a new session token when the client gets one.
    """

    DEFAULT_CSS = """
    ChatScreen #conversation { width: 1fr; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("pageup", "page(-1)", "Page up", show=False, priority=True),
        Binding("pagedown", "page(1)", "Page down", show=False, priority=True),
        Binding("ctrl+home", "log_top", "Oldest", show=False, priority=True),
        Binding("ctrl+end", "log_bottom", "Newest", show=False, priority=True),
        Binding("escape", "log_bottom", "Newest", show=False),
        Binding("alt+up", "switch(-1)", "Previous conversation", show=False, priority=True),
        Binding("alt+down", "switch(1)", "Next conversation", show=False, priority=True),
        Binding("alt+a", "next_active", "Next unread", show=False, priority=True),
    ]

    def __init__(
        self, client: ChatClient, clock: Clock, notifier: Notifier,
        save_token: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.client = client
        self.me = client.user
        self.clock = clock
        self.notifier = notifier
        self.save_token = save_token
        self.roster = Roster()
        self.current: str | None = None
        self.timeline: Timeline | None = None
        self.drafts: dict[str, str] = {}
        self._dirty_drafts: set[str] = set()
        self.exhausted: set[str] = set()
        """Peers whose whole history at the hub is held here."""
        self.fetching: set[str] = set()
        self.focused_app = True
        """False while the terminal window does not have focus (then every message rings)."""
        self.errors: list[str] = []
        """Unexpected errors while handling events (shown, logged, kept for tests)."""

    @property
    def chat_app(self) -> ChatApp:
        """The app (typed)."""
        return self.app  # type: ignore[return-value]

    # -- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        """Contacts | conversation + input; status bar."""
        host, port = self.client.hub
        with Horizontal():
            yield ContactList(id="contacts")
            with Vertical(id="conversation"):
                yield MessageLog(self.me, self.clock, id="log")
                yield Composer(self.roster.names, id="composer")
        yield StatusBar(f"{self.me}@{host}:{port}", id="status")

    @property
    def log_view(self) -> MessageLog:
        """The conversation view."""
        return self.query_one(MessageLog)

    @property
    def composer(self) -> Composer:
        """The input."""
        return self.query_one(Composer)

    @property
    def status(self) -> StatusBar:
        """The status bar."""
        return self.query_one(StatusBar)

    @property
    def contacts(self) -> ContactList:
        """The contact list."""
        return self.query_one(ContactList)

    def on_mount(self) -> None:
        """Loads conversations and unread counts, opens the latest, starts listening."""
        local = self.client.local
        recent = local.conversations()
        for peer in recent:
            entry = self.roster.get(peer)
            unread = local.unread(peer, f"@{self.me}")
            entry.unread, entry.mentions = unread.count, unread.mentions
        self.status.set_state(self.client.state)
        self.status.links = direct_links(self.client)
        self.log_view.empty_text = "No conversation open: /add NAME, or pick a contact."
        if recent:
            self.open_conversation(max(recent, key=lambda p: recent[p]))
        else:
            self.contacts.show(self.roster, None)
        self.composer.focus()
        self.set_interval(1.0, self._tick)
        self._pump()
        if self.client.state == "online":
            self.refresh_contacts()

    # -- conversations --------------------------------------------------------------------

    def open_conversation(self, peer: str) -> None:
        """Shows the conversation with ``peer``, at its unread marker or its end."""
        if peer == self.current:
            return
        self._stash_draft()
        self.current = peer
        entry = self.roster.get(peer)
        timeline = self.timeline = Timeline(self.client.local, peer)
        marker = self.client.local.read_marker(peer) if entry.unread else None
        self.log_view.show(timeline, marker)
        self._title()
        self._mark_read()
        draft = self.drafts.get(peer)
        if draft is None:
            draft = self.drafts[peer] = self.client.local.draft(peer)
        self.composer.load_text(draft)
        self.composer.move_cursor(self.composer.document.end)
        self._roster_changed()

    def _stash_draft(self) -> None:
        if self.current is not None:
            self.drafts[self.current] = self.composer.text
            self._dirty_drafts.add(self.current)
            self.save_drafts()

    def on_unmount(self) -> None:
        """Keeps the drafts when the app ends (``drafts`` follows every keystroke)."""
        self.save_drafts()

    def save_drafts(self) -> None:
        """Writes changed drafts to the local store (they survive a restart too)."""
        for peer in self._dirty_drafts:
            self.client.local.set_draft(peer, self.drafts.get(peer, ""))
        self._dirty_drafts.clear()

    @on(TextArea.Changed, "#composer")
    def _draft_changed(self, event: TextArea.Changed) -> None:
        if self.current is not None:
            self.drafts[self.current] = self.composer.text
            self._dirty_drafts.add(self.current)

    def _title(self) -> None:
        if self.current is None:
            return
        entry = self.roster.get(self.current)
        presence = {True: "online", False: "offline", None: "not a contact"}[entry.online]
        self.log_view.border_title = f"{self.current} · {presence}"

    def _mark_read(self) -> None:
        timeline, peer = self.timeline, self.current
        if timeline is None or peer is None:
            return
        if len(timeline):
            self.client.local.set_read_marker(peer, timeline.key(len(timeline) - 1))
        entry = self.roster.get(peer)
        entry.unread = entry.mentions = 0

    def _roster_changed(self) -> None:
        self.contacts.show(self.roster, self.current)
        self.status.unread = self.roster.total_unread
        self.status.update_text()

    @on(OptionList.OptionSelected, "#contacts")
    def _contact_chosen(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.open_conversation(event.option.id)
            self.composer.focus()

    def action_switch(self, delta: int) -> None:
        """Opens the previous (-1) or next (1) conversation of the list."""
        names = self.roster.names()
        if not names:
            return
        index = names.index(self.current) + delta if self.current in names else 0
        self.open_conversation(names[index % len(names)])

    def action_next_active(self) -> None:
        """Opens the next conversation with unread messages, mentions first."""
        peer = self.roster.next_active(self.current)
        if peer is None:
            self.notify("No unread messages.", timeout=2)
        else:
            self.open_conversation(peer)

    def action_page(self, direction: int) -> None:
        """Scrolls the conversation by a screen."""
        self.log_view.action_page(direction)

    def action_log_top(self) -> None:
        """Oldest message."""
        self.log_view.action_top()

    def action_log_bottom(self) -> None:
        """Newest message."""
        self.log_view.action_bottom()

    # -- the event stream -----------------------------------------------------------------

    @work(group="client-events", exclusive=True)
    async def _pump(self) -> None:
        async for event in self.client.events():
            try:
                self.handle_event(event)
            except NoMatches:
                return  # the screen is being taken down
            except Exception as exc:  # a bad event must not end the session
                log.exception("while handling %r", event)
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self.notify(f"internal error: {exc}", severity="error")

    def handle_event(self, event: ClientEvent) -> None:
        """Applies one client event to the screen."""
        if isinstance(event, MessageReceived):
            self._received(event)
        elif isinstance(event, MessageStateChanged):
            self._state_changed(event)
        elif isinstance(event, PresenceChanged):
            entry = self.roster.get(event.user)
            entry.online = event.online
            self._title()
            self._roster_changed()
        elif isinstance(event, ConnectionStateChanged):
            self._connection(event)

    def _received(self, event: MessageReceived) -> None:
        entry = self.roster.get(event.peer)
        line = self.client.local.line_of(event.id, outgoing=False, peer=event.peer)
        if event.peer == self.current and self.timeline is not None and line is not None:
            self.log_view.message_added(self.timeline.add(line))
            self._mark_read()
        else:
            entry.unread += 1
            if f"@{self.me}".lower() in event.body.lower():
                entry.mentions += 1
        if event.peer != self.current or not self.focused_app:
            self.notifier.notify(event.peer, event.body)
        self._roster_changed()

    def _state_changed(self, event: MessageStateChanged) -> None:
        if event.peer == self.current and self.timeline is not None:
            line = self.client.local.line_of(event.id, outgoing=True)
            if line is not None:
                self._show_own(line)
        if event.state == "failed":
            self.notify(f"not sent to {event.peer}: {event.reason}", severity="error")

    def _show_own(self, line: StoredLine) -> None:
        timeline = self.timeline
        assert timeline is not None
        if timeline.find(line.key) is None:
            self.log_view.message_added(timeline.add(line))
        else:
            self.log_view.message_changed(line)

    def _connection(self, event: ConnectionStateChanged) -> None:
        self.status.set_state(event.state, event.detail, event.retry_in)
        if event.state == "online":
            if self.save_token is not None and self.client.token:
                self.save_token(self.client.token)
            self.refresh_contacts()
        elif event.state == "offline" and self.client.fatal:
            self.chat_app.session_refused(self.client.fatal)

    def _tick(self) -> None:
        self.status.links = direct_links(self.client)
        self.status.update_text()
        self.save_drafts()

    @work(group="contacts", exclusive=True)
    async def refresh_contacts(self) -> None:
        """Asks the hub for the contact list and presence."""
        try:
            contacts = await self.client.contacts()
        except (DuplexError, TimeoutError) as exc:
            log.info("contact list: %s", exc)
            return
        self.roster.set_contacts({c.user: c.online for c in contacts})
        self._title()
        self._roster_changed()

    # -- sending and commands -------------------------------------------------------------

    @on(Composer.Submitted)
    async def _submitted(self, event: Composer.Submitted) -> None:
        text = event.text.strip("\n")
        try:
            command = parse_command(text.strip())
        except CommandError as exc:
            self.notify(str(exc), severity="warning")
            return
        if command is not None:
            self.composer.clear()
            await self.run_command(command)
            return
        if text.startswith("//"):
            text = text[1:]
        if await self.send_text(text):
            self.composer.clear()

    async def send_text(self, text: str) -> bool:
        """Sends ``text`` to the open conversation; False when none is open."""
        peer = self.current
        if peer is None:
            self.notify("Open a conversation first: pick a contact or /add NAME.",
                        severity="warning")  # fmt: skip
            return False
        try:
            msg_id = await self.client.send(peer, text)
        except Unsendable as exc:
            self.notify(f"Not sent: {exc}.", severity="error")
            return False  # the text stays in the composer
        self.drafts[peer] = ""
        self._dirty_drafts.add(peer)
        line = self.client.local.line_of(msg_id, outgoing=True)
        if line is not None and self.current == peer and self.timeline is not None:
            self._show_own(line)
            self.log_view.action_bottom()
            self._mark_read()
        self.save_drafts()
        return True

    @on(Composer.LargePaste)
    def _large_paste(self, event: Composer.LargePaste) -> None:
        peer = self.current
        if peer is None:
            self.composer.insert(event.text)
            return

        async def decided(choice: str | None) -> None:
            if choice == "send":
                if not await self.send_text(event.text):
                    self.composer.insert(event.text)  # not lost: it can be cut down
            elif choice == "edit":
                self.composer.insert(event.text)
            self.composer.focus()

        self.app.push_screen(ConfirmPaste(event.text, peer), decided)

    async def run_command(self, command: Command) -> None:
        """Runs a slash command."""
        name, arg = command.name, command.arg
        if name == "help":
            self.chat_app.action_help()
        elif name == "quit":
            self.chat_app.exit()
        elif name == "search":
            self.search(arg)
        elif name == "history":
            if self.current is None:
                self.notify("Open a conversation first.", severity="warning")
            else:
                self.fetch_older(self.current, int(arg), jump=True)
        else:
            self._hub_command(name, arg)

    @work(group="commands")
    async def _hub_command(self, name: str, arg: str) -> None:
        try:
            if name == "who":
                contacts = await self.client.contacts()
                online = sorted(c.user for c in contacts if c.online)
                self.notify("Online: " + ", ".join(online) if online else "Nobody is online.")
            elif name == "add":
                await self.client.add_contact(arg)
                self.notify(f"Added {arg} to your contacts.")
                self.roster.get(arg).contact = True
                if self.current is None:
                    self.open_conversation(arg)
                self.refresh_contacts()
            elif name == "rm":
                await self.client.remove_contact(arg)
                self.roster.remove(arg)
                self.notify(f"Removed {arg} from your contacts.")
                self._roster_changed()
        except DuplexError as exc:
            self.notify(f"/{name}: {exc}", severity="error")
        except TimeoutError:
            self.notify(f"/{name}: the hub is not reachable now", severity="error")

    def search(self, arg: str) -> None:
        """``/search TEXT`` in this conversation; ``/search -a TEXT`` in all of them."""
        everywhere = arg.startswith("-a ")
        query = arg[3:].strip() if everywhere else arg
        peer = None if everywhere else self.current
        results = self.client.local.search(query, peer=peer)
        if not results:
            where = "any conversation" if peer is None else f"the conversation with {peer}"
            self.notify(f"“{query}” is not in {where}.", timeout=3)
            return

        def chosen(line: StoredLine | None) -> None:
            if line is None:
                return
            self.open_conversation(line.peer)
            if self.timeline is not None:
                index = self.timeline.find(line.key)
                if index is not None:
                    self.log_view.jump_to(index)

        self.app.push_screen(SearchScreen(query, results, self.me, self.clock), chosen)

    # -- older history from the hub -------------------------------------------------------

    @on(MessageLog.NearTop)
    def _near_top(self, event: MessageLog.NearTop) -> None:
        if event.peer not in self.exhausted and self.client.state == "online":
            self.fetch_older(event.peer, HISTORY_PAGE)

    @work(group="history")
    async def fetch_older(self, peer: str, count: int, jump: bool = False) -> None:
        """Fetches up to ``count`` messages older than those held from the hub."""
        if peer in self.fetching:
            return
        self.fetching.add(peer)
        try:
            added = await self._fetch_older(peer, count)
        except (DuplexError, TimeoutError) as exc:
            self.notify(f"history: {exc or 'the hub is not reachable now'}", severity="warning")
            return
        finally:
            self.fetching.discard(peer)
        if jump:
            self.notify(f"{added} older messages from the hub." if added else
                        "No older messages at the hub.", timeout=3)  # fmt: skip
        if added and peer == self.current and self.timeline is not None:
            self.timeline.reload()
            self.log_view.timeline_reloaded()
            if jump:
                self.log_view.jump_to(0, highlight=False)

    async def _fetch_older(self, peer: str, count: int) -> int:
        local = self.client.local
        ts, _ = local.timeline_keys(peer) if self.timeline is None else (self.timeline.ts, None)
        before = ts[0] if len(ts) else 0
        added = 0
        while count > 0:
            limit = min(500, count)
            entries = await self.client.hub_history(peer, before=before, limit=limit)
            lines = [
                ImportedLine(e.id, e.peer == self.me, e.body, e.ts, e.path or "stored")
                for e in entries
                if e.kind == "msg"
            ]
            added += local.import_lines(peer, lines)
            count -= len(entries)
            if len(entries) < limit:
                self.exhausted.add(peer)
                break
            before = min(e.ts for e in entries)
        return added

    # -- the command palette --------------------------------------------------------------

    def palette_commands(self) -> Iterable[SystemCommand]:
        """Commands for Textual's command palette (Ctrl+P)."""
        for name in self.roster.names():
            yield SystemCommand(
                f"Open conversation: {name}", f"Talk to {name}",
                lambda name=name: self.open_conversation(name),
            )  # fmt: skip
        yield SystemCommand("Next unread conversation", "Mentions first (Alt+A)",
                            self.action_next_active)  # fmt: skip
        yield SystemCommand("Newest message", "Jump to the end (Ctrl+End)", self.action_log_bottom)
        yield SystemCommand("Oldest message", "Jump to the start (Ctrl+Home)", self.action_log_top)
        yield SystemCommand(
            "Older history from the hub", f"Fetch {HISTORY_PAGE} older messages",
            lambda: self.fetch_older(self.current, HISTORY_PAGE, jump=True)
            if self.current else None,
        )  # fmt: skip
        yield SystemCommand("Who is online", "List online contacts (/who)",
                            lambda: self._hub_command("who", ""))  # fmt: skip
        yield SystemCommand("Reconnect now", "Skip the reconnection wait",
                            self.client.reconnect_now)  # fmt: skip
