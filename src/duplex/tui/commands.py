"""Slash commands and tab completion (pure: no Textual, no client).

``/add NAME``, ``/rm NAME``, ``/who``, ``/history N``, ``/search TEXT``, ``/help`` and
``/quit``. A line that starts with ``//`` is a message starting with ``/``.
"""

from __future__ import annotations

import dataclasses

__all__ = ["COMMANDS", "Command", "CommandError", "Completer", "parse_command"]

COMMANDS: dict[str, tuple[str, str]] = {
    "add": ("NAME", "add NAME to your contacts"),
    "rm": ("NAME", "remove NAME from your contacts"),
    "who": ("", "list the contacts who are online"),
    "history": ("N", "fetch N older messages of this conversation from the hub"),
    "search": ("TEXT", "find TEXT in this conversation (all of them with /search -a TEXT)"),
    "help": ("", "keys and commands (also ? or F1)"),
    "quit": ("", "leave duplex chat (also Ctrl+Q)"),
}
"""Each command's argument and what it does (shown by /help and completion)."""


class CommandError(ValueError):
    """The line is a command but not a valid one; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    """A parsed slash command.

    Attributes:
        name: one of :data:`COMMANDS`.
        arg: the rest of the line, stripped.
    """

    name: str
    arg: str = ""


def parse_command(text: str) -> Command | None:
    """Parses a line typed in the input.

    Returns:
        The command, or None when the line is a message (``//x`` sends ``/x``).

    Raises:
        CommandError: an unknown command, or a missing or bad argument.
    """
    if not text.startswith("/") or text.startswith("//"):
        return None
    name, _, arg = text[1:].partition(" ")
    name, arg = name.strip().lower(), arg.strip()
    if name not in COMMANDS:
        raise CommandError(f"unknown command /{name}: try /help")
    needs = COMMANDS[name][0]
    if needs and not arg:
        raise CommandError(f"/{name} needs {needs}")
    if name in ("add", "rm") and (" " in arg or not arg):
        raise CommandError(f"/{name} takes one user name")
    if name == "history" and (not arg.isdigit() or not 0 < int(arg) <= 100_000):
        raise CommandError("/history takes a number of messages, 1 to 100000")
    return Command(name, arg)


class Completer:
    """Tab completion of commands (at the start of the line) and user names.

    Pressing Tab again cycles through the candidates, as in irssi and weechat; any
    other key starts afresh (:meth:`reset`).
    """

    def __init__(self) -> None:
        self._cycle: list[str] = []
        self._index = 0
        self._start = 0
        self._last: tuple[str, int] | None = None

    def reset(self) -> None:
        """Forgets the cycle (call on any key but Tab)."""
        self._last = None

    def complete(self, line: str, column: int, names: list[str]) -> tuple[str, int] | None:
        """Completes the word before ``column`` on ``line``.

        Args:
            line: the current line of the input.
            column: the cursor's column on it.
            names: the user names to offer.

        Returns:
            ``(new_line, new_column)``, or None when nothing matches.
        """
        if self._last == (line, column) and self._cycle:
            self._index = (self._index + 1) % len(self._cycle)
            choice = self._cycle[self._index]
            new = line[: self._start] + choice + line[column:]
            self._last = (new, self._start + len(choice))
            return self._last
        start = column
        while start > 0 and not line[start - 1].isspace():
            start -= 1
        word = line[start:column]
        if start == 0 and word.startswith("/"):
            candidates = [f"/{name} " for name in COMMANDS if name.startswith(word[1:].lower())]
        elif word.startswith("@"):
            candidates = [f"@{n} " for n in names if n.lower().startswith(word[1:].lower())]
        else:
            candidates = [f"{n} " for n in names if n.lower().startswith(word.lower())]
        if not candidates or not (word or start > 0):
            return None
        self._cycle, self._index, self._start = candidates, 0, start
        choice = candidates[0]
        new = line[:start] + choice + line[column:]
        self._last = (new, start + len(choice))
        return self._last
