"""Screens over the chat: first-run setup, the help overlay, paste confirmation and
search results."""

from __future__ import annotations

from typing import ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Checkbox, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from duplex.client.local import StoredLine
from duplex.config import ClientConfig
from duplex.errors import ConfigError
from duplex.tls import format_fingerprint
from duplex.tui.commands import COMMANDS
from duplex.tui.format import Clock, clean_text

__all__ = ["KEYS", "ConfirmPaste", "HelpScreen", "SearchScreen", "SetupScreen"]

KEYS: list[tuple[str, str]] = [
    ("Enter", "send the message (or run the /command)"),
    ("Ctrl+J", "new line in the message"),
    ("Tab", "complete a /command or a name (again: next match)"),
    ("PgUp / PgDn", "scroll the conversation a screen"),
    ("Ctrl+Home / Ctrl+End", "oldest / newest message"),
    ("Esc", "back to the newest message"),
    ("Alt+Up / Alt+Down", "previous / next conversation"),
    ("Alt+A", "next conversation with unread messages (mentions first)"),
    ("Ctrl+P", "command palette"),
    ("? or F1", "this help (? when the input is empty)"),
    ("Ctrl+Q", "quit"),
]
"""The keys, as the help overlay lists them."""


class HelpScreen(ModalScreen[None]):
    """The ``?`` overlay: keys, commands and what the marks mean."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 84; max-width: 95%; height: auto; max-height: 90%;
        border: round $primary; background: $surface; padding: 1 2;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark,f1", "close", "Close"),
    ]

    def compose(self) -> ComposeResult:
        """The help text."""

        def table(title: str, rows: list[tuple[str, str]]) -> Table:
            grid = Table.grid(padding=(0, 2))
            grid.title = title
            grid.title_justify = "left"
            grid.title_style = "bold"
            grid.add_column(style="bold cyan", no_wrap=True)
            grid.add_column()
            for key, what in rows:
                grid.add_row(key, what)
            return grid

        marks = [
            ("◷ queued", "in your outbox, not yet confirmed by the hub"),
            ("✓ stored", "durable at the hub"),
            ("✓✓ delivered", "on your peer's device"),
            ("✗ failed", "refused for good (the reason is shown)"),
            ("·direct ·relayed ·stored", "peer to peer, through the hub, or kept for later"),
            ("● ○ ·", "online, offline, unknown (not a contact)"),
        ]
        commands = [(f"/{name} {arg}".rstrip(), what) for name, (arg, what) in COMMANDS.items()]
        text = Group(
            table("duplex chat: keys", KEYS),
            Text(""),
            table("commands", commands),
            Text(""),
            table("marks", marks),
            Text("\nEsc or ? closes this help.", style="dim"),
        )
        with VerticalScroll():
            yield Static(text, id="help-text")

    def action_close(self) -> None:
        """Closes the overlay."""
        self.dismiss(None)


class ConfirmPaste(ModalScreen[str]):
    """Asks before a paste of many lines goes out: ``send``, ``edit`` or ``cancel``.

    Args:
        text: the pasted text.
        peer: who would get it.
    """

    DEFAULT_CSS = """
    ConfirmPaste { align: center middle; }
    ConfirmPaste > Vertical {
        width: 72; max-width: 95%; height: auto; border: round $warning;
        background: $surface; padding: 1 2;
    }
    ConfirmPaste #preview { height: auto; max-height: 8; color: $text-muted; margin: 1 0; }
    ConfirmPaste Horizontal { height: auto; align: center middle; }
    ConfirmPaste Button { margin: 0 1; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "choose('cancel')", "Cancel")]

    def __init__(self, text: str, peer: str) -> None:
        super().__init__()
        self.text = text
        self.peer = peer

    def compose(self) -> ComposeResult:
        """Question, preview, buttons."""
        lines = self.text.split("\n")
        with Vertical():
            yield Label(f"Send this paste of {len(lines)} lines to {self.peer}?")
            preview = "\n".join(clean_text(line)[:66] for line in lines[:6])
            if len(lines) > 6:
                preview += f"\n… and {len(lines) - 6} more lines"
            yield Static(preview, id="preview", markup=False)
            with Horizontal():
                yield Button("Send", id="send", variant="warning")
                yield Button("Edit first", id="edit")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        """Edit is the safe default."""
        self.query_one("#edit", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "cancel")

    def action_choose(self, choice: str) -> None:
        """Closes with ``choice``."""
        self.dismiss(choice)


class SearchScreen(ModalScreen[StoredLine | None]):
    """Search results; choosing one jumps to it.

    Args:
        query: what was searched.
        results: the matches, newest first.
        me: our user name.
        clock: for the times.
    """

    DEFAULT_CSS = """
    SearchScreen { align: center middle; }
    SearchScreen > Vertical {
        width: 100; max-width: 95%; height: 80%; border: round $primary;
        background: $surface; padding: 0 1;
    }
    SearchScreen OptionList { height: 1fr; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, query: str, results: list[StoredLine], me: str, clock: Clock) -> None:
        super().__init__()
        self.query_text = query
        self.results = results
        self.me = me
        self.clock = clock

    def compose(self) -> ComposeResult:
        """Title and the list."""
        options = []
        for number, line in enumerate(self.results):
            text = Text(no_wrap=True, overflow="ellipsis")
            text.append(self.clock.stamp(line.ts) + " ", style="dim")
            who = self.me if line.outgoing else line.peer
            where = f"{who} → {line.peer}" if line.outgoing else who
            text.append(f"{where}: ", style="bold")
            text.append(clean_text(line.body).replace("\n", " ⏎ "))
            options.append(Option(text, id=str(number)))
        with Vertical():
            yield Label(f"{len(self.results)} messages contain “{self.query_text}” (Enter: go)")
            yield OptionList(*options, id="results")

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.results[int(event.option.id or 0)])

    def action_close(self) -> None:
        """Closes without a choice."""
        self.dismiss(None)


class SetupScreen(Screen[None]):
    """First run (and login after a refused token): hub, account, trusting the hub.

    The screen collects the values and shows progress and errors; the app does the
    work (see :meth:`duplex.tui.app.ChatApp.setup_submitted`).

    Args:
        config: the values to start from.
        error: why the screen is shown again, if it is.
    """

    DEFAULT_CSS = """
    SetupScreen { align: center middle; }
    SetupScreen > VerticalScroll {
        width: 76; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 2;
    }
    SetupScreen #title { text-style: bold; margin: 1 0; }
    SetupScreen Horizontal { height: auto; }
    SetupScreen Button { margin-right: 2; }
    SetupScreen #trust-box { height: auto; display: none; border: round $warning; padding: 0 1; }
    SetupScreen #trust-box.shown { display: block; }
    SetupScreen #message { margin-top: 1; height: auto; }
    SetupScreen #message.error { color: $error; }
    """

    class Submitted(Message):
        """Log in (``register`` False) or create an account and log in."""

        def __init__(self, config: ClientConfig, password: str, register: bool) -> None:
            super().__init__()
            self.config = config
            self.password = password
            self.register = register

    class Trusted(Message):
        """The user answered the fingerprint question."""

        def __init__(self, trusted: bool) -> None:
            super().__init__()
            self.trusted = trusted

    def __init__(self, config: ClientConfig, error: str = "") -> None:
        super().__init__()
        self.config = config
        self.error = error

    def compose(self) -> ComposeResult:
        """The form (it scrolls in a terminal too short for it)."""
        with VerticalScroll():
            yield Static("Welcome to duplex chat", id="title")
            yield Label("Hub address (host:port)")
            yield Input(self.config.hub, id="hub", placeholder="127.0.0.1:7070")
            yield Checkbox("TLS: check the hub's certificate fingerprint", self.config.tls,
                           id="tls")  # fmt: skip
            yield Label("User name")
            yield Input(self.config.user, id="user", placeholder="alice")
            yield Label("Password")
            yield Input(id="password", password=True, placeholder="at least 8 characters")
            with Horizontal():
                yield Button("Log in", id="login", variant="primary")
                yield Button("Create account", id="register")
            with Vertical(id="trust-box"):
                yield Static(id="fingerprint")
                with Horizontal():
                    yield Button("Trust this hub", id="trust", variant="warning")
                    yield Button("Don't trust", id="distrust")
            yield Static(self.error, id="message", classes="error" if self.error else "")

    def on_mount(self) -> None:
        """Focus the first empty field."""
        for name in ("hub", "user", "password"):
            field = self.query_one(f"#{name}", Input)
            if not field.value:
                field.focus()
                return
        self.query_one("#password", Input).focus()

    def say(self, text: str, error: bool = False) -> None:
        """Shows progress (or an error) under the form."""
        message = self.query_one("#message", Static)
        message.update(text)
        message.set_class(error, "error")

    def ask_trust(self, hub: str, fingerprint: str) -> None:
        """Shows the hub's fingerprint and the trust buttons."""
        shown = format_fingerprint(fingerprint)
        self.query_one("#fingerprint", Static).update(
            f"The hub at {hub} presents a certificate with SHA-256 fingerprint\n\n"
            f"  {shown[:48]}\n  {shown[48:]}\n\n"
            "Compare it with the one `duplex serve` printed. Trust it? duplex will refuse "
            "this hub if its certificate ever changes."
        )
        self.query_one("#trust-box").add_class("shown")
        self.query_one("#trust", Button).focus()

    def busy(self, busy: bool) -> None:
        """Disables the buttons while the app works."""
        for name in ("login", "register"):
            self.query_one(f"#{name}", Button).disabled = busy

    @on(Input.Submitted)
    def _enter(self, event: Input.Submitted) -> None:
        if event.input.id == "password":
            self._submit(register=False)
        else:
            self.focus_next()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id in ("login", "register"):
            self._submit(register=event.button.id == "register")
        elif event.button.id in ("trust", "distrust"):
            self.query_one("#trust-box").remove_class("shown")
            self.post_message(self.Trusted(event.button.id == "trust"))

    def _submit(self, register: bool) -> None:
        hub = self.query_one("#hub", Input).value.strip()
        user = self.query_one("#user", Input).value.strip()
        password = self.query_one("#password", Input).value
        if not user:
            self.say("Give a user name.", error=True)
            return
        if not password:
            self.say("Give a password.", error=True)
            return
        try:
            config = ClientConfig(
                hub=hub, user=user, tls=self.query_one("#tls", Checkbox).value,
                data_dir=self.config.data_dir, p2p=self.config.p2p,
            )  # fmt: skip
        except ConfigError as exc:
            self.say(str(exc), error=True)
            return
        self.post_message(self.Submitted(config, password, register))
