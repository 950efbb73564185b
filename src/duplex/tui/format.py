"""How times, states and paths are written on screen (pure functions, no Textual).

A :class:`Clock` carries the time zone and "now", so that tests and snapshots render
the same text on any machine, in any zone, on any day.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import zlib
from collections.abc import Callable

__all__ = [
    "NICK_COLORS",
    "Clock",
    "clean_text",
    "day_label",
    "format_meta",
    "nick_color",
]

NICK_COLORS = (
    "#5fafd7",
    "#87d787",
    "#d7af5f",
    "#d787d7",
    "#5fd7af",
    "#ff8787",
    "#afafff",
    "#d7d75f",
)
"""Nick colours, chosen by a stable hash of the name (CRC-32, not ``hash()``: that is
salted per process and would recolour everyone at every start)."""


@dataclasses.dataclass(frozen=True)
class Clock:
    """The time zone and the current time as the user interface sees them.

    Attributes:
        tz: the zone to show times in; None means the system's local zone.
        now: returns the current time in seconds since the epoch.
    """

    tz: datetime.tzinfo | None = None
    now: Callable[[], float] = time.time

    def local(self, ts_ms: int) -> datetime.datetime:
        """Returns ``ts_ms`` (ms since the epoch) as an aware datetime in :attr:`tz`."""
        moment = datetime.datetime.fromtimestamp(ts_ms / 1000, datetime.UTC)
        return moment.astimezone(self.tz) if self.tz is not None else moment.astimezone()

    def today(self) -> datetime.date:
        """Returns today's date in :attr:`tz`."""
        return self.local(int(self.now() * 1000)).date()

    def day(self, ts_ms: int) -> datetime.date:
        """Returns the calendar day of ``ts_ms`` in :attr:`tz`."""
        return self.local(ts_ms).date()

    def hhmm(self, ts_ms: int) -> str:
        """Returns ``HH:MM`` of ``ts_ms``."""
        return self.local(ts_ms).strftime("%H:%M")

    def stamp(self, ts_ms: int) -> str:
        """Returns a full ``YYYY-MM-DD HH:MM`` time (for search results)."""
        return self.local(ts_ms).strftime("%Y-%m-%d %H:%M")


def day_label(day: datetime.date, today: datetime.date) -> str:
    """Returns the text of a day-change line: "Today", "Yesterday" or the date.

    Args:
        day: the day that starts.
        today: the current day (from :meth:`Clock.today`).
    """
    full = f"{day:%A}, {day.day} {day:%B %Y}"
    if day == today:
        return f"Today · {full}"
    if day == today - datetime.timedelta(days=1):
        return f"Yesterday · {full}"
    return full


_STATE_MARK = {"queued": "◷", "stored": "✓", "delivered": "✓✓", "failed": "✗"}


def format_meta(outgoing: bool, state: str, path: str | None) -> str:
    """Returns the short state-and-path note shown beside a message.

    Our messages show their state and path (``✓✓ delivered·direct``); messages to us
    show how they came (``↓ relayed``).
    """
    if not outgoing:
        return f"↓ {path or '?'}"
    mark = _STATE_MARK.get(state, "?")
    if path and state in ("stored", "delivered"):
        return f"{mark} {state}·{path}"
    return f"{mark} {state}"


def nick_color(name: str) -> str:
    """Returns the colour of ``name`` (stable across runs and machines)."""
    return NICK_COLORS[zlib.crc32(name.encode()) % len(NICK_COLORS)]


_CONTROL = {c: "\N{REPLACEMENT CHARACTER}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROL[0x0A] = "\n"
_CONTROL[0x09] = "    "


def clean_text(text: str) -> str:
    """Returns ``text`` safe to draw: control characters become U+FFFD, tabs spaces.

    A message is someone else's text arriving on our terminal: an escape sequence in it
    must never reach the terminal as one (it could retitle the window, rewrite the
    screen or, in some terminals, answer back). Newlines are kept: they end lines.
    """
    return text.translate(_CONTROL)
