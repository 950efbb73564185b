"""The small widgets of the chat screen: status bar, contact list and the input."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import OptionList, Static, TextArea
from textual.widgets.option_list import Option

from duplex.tui.commands import Completer
from duplex.tui.roster import Roster

__all__ = ["PASTE_CONFIRM_LINES", "Composer", "ContactList", "StatusBar"]

PASTE_CONFIRM_LINES = 3
"""A paste of more lines than this is confirmed before it is sent."""


class StatusBar(Static):
    """The bottom line: connection state, who we are, direct links, unread, keys.

    Args:
        who: ``user@host:port``.
    """

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    def __init__(self, who: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.who = who
        self.state = "connecting"
        self.detail = ""
        self.retry_at = 0.0
        self.links = 0
        self.unread = 0
        self.now: Callable[[], float] = time.monotonic

    def set_state(self, state: str, detail: str = "", retry_in: float = 0.0) -> None:
        """Shows a new connection state (``retry_in``: seconds to the next attempt)."""
        self.state, self.detail = state, detail
        self.retry_at = self.now() + retry_in if state == "reconnecting" else 0.0
        self.update_text()

    @property
    def state_text(self) -> str:
        """The connection part, e.g. ``reconnecting in 3 s``."""
        if self.state == "reconnecting":
            seconds = max(0, math.ceil(self.retry_at - self.now()))
            return f"reconnecting in {seconds} s" if seconds else "reconnecting…"
        if self.state == "offline" and self.detail:
            return f"offline: {self.detail}"
        return self.state

    @property
    def text(self) -> str:
        """The whole line as plain text."""
        return self._line().plain

    def _line(self) -> Text:
        marks = {"online": ("●", "green"), "connecting": ("◌", "yellow"),
                 "reconnecting": ("↻", "yellow"), "offline": ("✗", "red")}  # fmt: skip
        mark, colour = marks.get(self.state, ("?", "red"))
        line = Text()
        line.append(f"{mark} {self.state_text}", style=f"bold {colour}")
        line.append(f"  │  {self.who}  │  direct links: {self.links}")
        if self.unread:
            line.append(f"  │  {self.unread} unread", style="bold")
        line.append("  │  ? help · ^P commands", style="dim")
        return line

    def update_text(self) -> None:
        """Redraws (the countdown changes every second)."""
        self.update(self._line())


class ContactList(OptionList):
    """Contacts and conversations with presence, unread and mention counts."""

    DEFAULT_CSS = """
    ContactList { width: 26; height: 1fr; border: round $primary-background-lighten-2; }
    ContactList:focus { border: round $primary; }
    """

    def show(self, roster: Roster, current: str | None) -> None:
        """Redraws from ``roster``, keeping ``current`` highlighted."""
        options = []
        for entry in roster.entries():
            line = Text(no_wrap=True, overflow="ellipsis")
            if entry.online is None:
                line.append("· ", style="dim")
            else:
                line.append(
                    "● " if entry.online else "○ ", style="green" if entry.online else "dim"
                )
            style = "bold" if entry.unread else ("" if entry.contact else "italic")
            line.append(entry.name, style=style)
            if entry.unread:
                line.append(f" {entry.unread}", style="bold reverse")
            if entry.mentions:
                line.append(f" @{entry.mentions}", style="bold reverse red")
            options.append(Option(line, id=entry.name))
        self.clear_options()
        self.add_options(options)
        if current is not None and current in roster:
            self.highlighted = self.get_option_index(current)
        self.border_title = f"contacts ({sum(1 for e in roster.entries() if e.contact)})"


class Composer(TextArea):
    """The input: Enter sends, Ctrl+J inserts a newline, Tab completes, ``?`` on an
    empty input opens the help.

    A paste of more than :data:`PASTE_CONFIRM_LINES` lines is not inserted; it is
    handed to the screen (:class:`LargePaste`), which asks before sending it.
    Terminals without bracketed paste deliver a paste as typed keys; Textual turns
    on bracketed paste wherever the terminal has it.

    Args:
        names: returns the user names to complete.
    """

    DEFAULT_CSS = """
    Composer {
        height: auto; max-height: 10; min-height: 3;
        border: round $primary-background-lighten-2;
    }
    Composer:focus { border: round $primary; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+j", "newline", "Newline", show=False),
    ]

    class Submitted(Message):
        """Enter was pressed: send (or run) the text."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class LargePaste(Message):
        """A paste of more than :data:`PASTE_CONFIRM_LINES` lines."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, names: Callable[[], list[str]], *, id: str | None = None) -> None:
        super().__init__(id=id, soft_wrap=True, tab_behavior="focus", show_line_numbers=False)
        self.names = names
        self.completer = Completer()

    def action_newline(self) -> None:
        """Inserts a line break at the cursor."""
        self.insert("\n")

    async def _on_key(self, event: events.Key) -> None:
        if event.key != "tab":
            self.completer.reset()
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            if self.text.strip():
                self.post_message(self.Submitted(self.text))
            return
        if event.character == "?" and not self.text:
            # "?" on an empty input opens the help; anywhere in a message it is a "?".
            event.stop()
            event.prevent_default()
            await self.run_action("app.help")
            return
        if event.key == "tab":
            event.stop()
            event.prevent_default()
            self._complete()
        # Anything else: TextArea's own handler runs next (Textual walks the MRO).

    def _complete(self) -> None:
        row, column = self.cursor_location
        line = self.document.get_line(row)
        done = self.completer.complete(line, column, self.names())
        if done is None:
            self.app.bell()
            return
        new_line, new_column = done
        self.replace(new_line, (row, 0), (row, len(line)))
        self.move_cursor((row, new_column))

    async def _on_paste(self, event: events.Paste) -> None:
        text = event.text.replace("\r\n", "\n").replace("\r", "\n")
        if text.count("\n") + 1 > PASTE_CONFIRM_LINES:
            event.stop()
            event.prevent_default()
            self.post_message(self.LargePaste(text))
