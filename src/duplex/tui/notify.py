"""Telling the user a message came: the terminal bell, and desktop notifications by
OSC 777 (rxvt, foot, WezTerm, Ghostty, VTE-based terminals) or OSC 9 (iTerm2,
Windows Terminal, kitty, WezTerm).

The escape sequences go to the terminal only through the writer the app gives;
their text is cleaned so that a message can never smuggle a control sequence of its
own into one (the sender chooses the body, and the title is their name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from duplex.tui.format import clean_text

__all__ = ["NOTIFY_MODES", "Notifier", "parse_modes"]

NOTIFY_MODES = ("bell", "osc777", "osc9", "none")
"""What ``--notify`` accepts (comma-separated)."""

_ST = "\x1b\\"  # string terminator of an OSC sequence


def parse_modes(text: str) -> frozenset[str]:
    """Parses ``bell,osc777`` into a set of modes.

    Raises:
        ValueError: an unknown mode.
    """
    modes = frozenset(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = sorted(modes - set(NOTIFY_MODES))
    if unknown:
        raise ValueError(f"unknown notification mode(s): {', '.join(unknown)}")
    return frozenset() if "none" in modes else modes


def _field(text: str, limit: int) -> str:
    # ";" separates OSC 777 fields; control characters would end the sequence early.
    flat = clean_text(text).replace("\n", " ").replace(";", ",")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class Notifier:
    """Rings and notifies through a terminal writer.

    Args:
        modes: any of ``bell``, ``osc777``, ``osc9``.
        write: writes escape sequences to the terminal (the app's driver).
    """

    def __init__(self, modes: Iterable[str], write: Callable[[str], None]) -> None:
        self.modes = frozenset(modes)
        self.write = write
        self.count = 0
        """Notifications given so far (for tests and the status line)."""

    def notify(self, title: str, body: str) -> None:
        """Notifies of a message ``body`` from ``title``, in every enabled way."""
        self.count += 1
        if "osc777" in self.modes:
            self.write(f"\x1b]777;notify;{_field(title, 64)};{_field(body, 200)}{_ST}")
        if "osc9" in self.modes:
            self.write(f"\x1b]9;{_field(title, 64)}: {_field(body, 200)}{_ST}")
        if "bell" in self.modes:
            self.write("\a")
