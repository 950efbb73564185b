"""The conversation view: a virtualised message log over a :class:`Timeline`.

Only the lines on screen are laid out and drawn. The view is anchored on a message
(``top``) and a number of that message's lines hidden above the screen (``skip``), or
it *follows* the end, as weechat and irssi do; it never needs the height of the whole
conversation, which would mean laying out 100,000 messages to draw a screen of 40.
What that costs instead: the scroll position is shown as message numbers
("1,201–1,240 of 100,000"), not as a proportional scrollbar.

Each message's lines (its day-change line, the unread marker, its wrapped text, its
time, sender, state and path) are cached per width, so scrolling back and forth
draws from memory; the cache is bounded (:data:`STRIP_CACHE`).
"""

from __future__ import annotations

import collections
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from duplex.client.local import StoredLine
from duplex.tui.format import Clock, clean_text, day_label, format_meta, nick_color
from duplex.tui.timeline import Timeline

__all__ = ["PREFETCH", "STRIP_CACHE", "MessageLog"]

STRIP_CACHE = 1024
"""Laid-out messages kept: some 30 screens, so paging back and forth draws from memory."""

PREFETCH = 50
"""Messages above the top of the screen below which older history is asked for."""

META_WIDTH = 20
"""Columns of the state-and-path note (``✓✓ delivered·relayed`` is 20)."""

_CacheKey = tuple[int, int, str, str | None, bool, bool, bool, object]


class MessageLog(Widget, can_focus=True):
    """The messages of one conversation, drawn a screen at a time.

    Args:
        me: our user name.
        clock: time zone and today, for times and day-change lines.
    """

    DEFAULT_CSS = """
    MessageLog {
        height: 1fr;
        border: round $primary-background-lighten-2;
        border-title-color: $text;
        border-subtitle-color: $text-muted;
        padding: 0 1;
    }
    MessageLog:focus { border: round $primary; }
    MessageLog > .messagelog--time { color: $text-muted; }
    MessageLog > .messagelog--separator { color: $primary-background-lighten-3; }
    MessageLog > .messagelog--day { color: $text-muted; text-style: bold; }
    MessageLog > .messagelog--marker { color: $error; text-style: bold; }
    MessageLog > .messagelog--meta { color: $text-muted; }
    MessageLog > .messagelog--pending { color: $warning; }
    MessageLog > .messagelog--failed { color: $error; text-style: bold; }
    MessageLog > .messagelog--mention { color: $warning; text-style: bold; }
    MessageLog > .messagelog--highlight { background: $accent 30%; }
    MessageLog > .messagelog--empty { color: $text-muted; text-style: italic; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "messagelog--time",
        "messagelog--separator",
        "messagelog--day",
        "messagelog--marker",
        "messagelog--meta",
        "messagelog--pending",
        "messagelog--failed",
        "messagelog--mention",
        "messagelog--highlight",
        "messagelog--empty",
    }

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "scroll_lines(-1)", "Up", show=False),
        Binding("down", "scroll_lines(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "top", "Oldest", show=False),
        Binding("end", "bottom", "Newest", show=False),
    ]

    class NearTop(Message):
        """The view came within :data:`PREFETCH` messages of the oldest one held."""

        def __init__(self, peer: str) -> None:
            super().__init__()
            self.peer = peer

    def __init__(
        self,
        me: str,
        clock: Clock,
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.me = me
        self.clock = clock
        self.timeline: Timeline | None = None
        self.marker: tuple[int, int] | None = None
        """The last read message when the conversation was opened: the unread marker
        line is drawn above the first message after it."""
        self.highlight: int | None = None
        """Local row number of a message to highlight (a search result)."""
        self.follow = True
        """True while the view sticks to the newest message."""
        self.top = 0
        self.skip = 0
        self.new_below = 0
        """Messages that arrived while the view was scrolled up."""
        self.empty_text = "No conversation open."
        self._cache: collections.OrderedDict[_CacheKey, list[Strip]] = collections.OrderedDict()
        self._frame: list[Strip] | None = None
        self._frame_size = (0, 0)
        self._near_top_sent = False
        self._start_at_marker = False
        self._styles: dict[str, Style] = {}
        self._drawing = False
        self.shown: tuple[int, int] = (0, -1)
        """Indexes of the first and last message on screen (last < first: none)."""

    # -- what is shown ------------------------------------------------------------------

    def show(self, timeline: Timeline | None, marker: tuple[int, int] | None = None) -> None:
        """Shows ``timeline`` (None: nothing), scrolled to its end or its unread marker."""
        self.timeline = timeline
        self.marker = marker
        self.highlight = None
        self.follow = True
        self.top = self.skip = 0
        self.new_below = 0
        self._near_top_sent = False
        # Where to start depends on the height, which is only known when drawing.
        self._start_at_marker = timeline is not None and marker is not None
        self.invalidate()

    def _place_at_marker(self, width: int, height: int) -> None:
        """More unread than fits on a screen: start at the marker, as weechat does."""
        self._start_at_marker = False
        timeline, first_unread = self.timeline, self.first_unread()
        if timeline is None or first_unread is None:
            return
        lines = 0
        for index in range(first_unread, len(timeline)):
            lines += len(self._lines(index, width))
            if lines >= height:
                self.follow = False
                self.top, self.skip = max(0, first_unread - 1), 0
                return

    def first_unread(self) -> int | None:
        """Index of the first message after the marker, if any."""
        if self.timeline is None or self.marker is None:
            return None
        ts, n = self.marker
        index = self.timeline.index_of((ts, n + 1))
        return index if index < len(self.timeline) else None

    def notify_style_update(self) -> None:
        """CSS or theme changed: styles and every laid-out message are stale."""
        super().notify_style_update()
        self._styles = {}
        self._cache.clear()
        self._frame = None

    def _style(self, name: str) -> Style:
        """A component style (or ``base``), computed once per CSS generation.

        Textual computes these from the CSS on every call, which costs more than
        laying out the message itself; the log draws tens of messages per screen.
        """
        style = self._styles.get(name)
        if style is None:
            style = self.rich_style if name == "base" else self.get_component_rich_style(name)
            self._styles[name] = style
        return style

    def _redraw(self) -> None:
        """After a scroll: lays out the new screen now, so that the position in the
        border changes in the same repaint (set while drawing, it would cost a second
        repaint of the whole log). Data changes stay lazy: a burst of arrivals is
        drawn once, at the next refresh.
        """
        self._frame = None
        if self.size.height:
            self._frame = self._build_frame()
            self._frame_size = (self.size.width, self.size.height)
        self.refresh()

    def invalidate(self, n: int | None = None) -> None:
        """Forgets the layout (of message ``n``, or all) and redraws."""
        if n is None:
            self._cache.clear()
        else:
            for key in [k for k in self._cache if k[0] == n]:
                del self._cache[key]
        self._frame = None
        self.refresh()

    def message_added(self, index: int) -> None:
        """A message was inserted at ``index`` of the timeline."""
        if not self.follow:
            if index <= self.top:
                self.top += 1
            else:
                self.new_below += 1
        self._frame = None
        self.refresh()

    def message_changed(self, line: StoredLine) -> None:
        """A message's state or path changed."""
        if self.timeline is not None:
            self.timeline.update(line)
        self.invalidate(line.n)

    def timeline_reloaded(self) -> None:
        """The timeline was read again (older history arrived); keeps the view still."""
        timeline = self.timeline
        if timeline is None:
            return
        self._near_top_sent = False
        if not self.follow and self._anchor_key is not None:
            found = timeline.find(self._anchor_key)
            self.top = found if found is not None else 0
        self.invalidate()

    def jump_to(self, index: int, *, highlight: bool = True) -> None:
        """Scrolls so that message ``index`` is near the top, highlighted."""
        timeline = self.timeline
        if timeline is None or not 0 <= index < len(timeline):
            return
        self.follow = False
        self.top = max(0, index - 2)
        self.skip = 0
        self.highlight = timeline.ns[index] if highlight else None
        self._clamp()
        self._cache.clear()  # the highlight moved
        self._redraw()

    @property
    def _anchor_key(self) -> tuple[int, int] | None:
        timeline = self.timeline
        if timeline is None or not 0 <= self.top < len(timeline):
            return None
        return timeline.key(self.top)

    # -- scrolling ------------------------------------------------------------------------

    def action_scroll_lines(self, delta: int) -> None:
        """Scrolls by ``delta`` lines (negative: up)."""
        self.scroll_lines(delta)

    def action_page(self, direction: int) -> None:
        """Scrolls a screen up (-1) or down (1), keeping one line of context."""
        self.scroll_lines(direction * max(1, self.size.height - 1))

    def action_top(self) -> None:
        """Shows the oldest message."""
        if self.timeline is None:
            return
        self.follow = False
        self.top = self.skip = 0
        self._clamp()
        self._redraw()

    def action_bottom(self) -> None:
        """Shows the newest message and follows new ones."""
        self.follow = True
        self.new_below = 0
        self.highlight = None
        self._redraw()

    def scroll_lines(self, delta: int) -> None:
        """Moves the view ``delta`` lines (up when negative)."""
        timeline = self.timeline
        if timeline is None or not len(timeline) or not delta:
            return
        width = self._width()
        if self.follow:
            if delta > 0:
                return
            self.top, self.skip = self._bottom_anchor(width)
            self.follow = False
        top, skip = self.top, self.skip + delta
        while skip < 0:
            if top == 0:
                skip = 0
                break
            top -= 1
            skip += len(self._lines(top, width))
        while top < len(timeline) and skip >= len(self._lines(top, width)):
            skip -= len(self._lines(top, width))
            top += 1
        self.top, self.skip = min(top, len(timeline) - 1), skip
        self._clamp()
        self._redraw()

    def _clamp(self) -> None:
        """Turns on follow mode when the rest of the conversation fits on screen."""
        timeline = self.timeline
        if timeline is None or self.follow:
            return
        width, height = self._width(), self.size.height
        remaining = -self.skip
        for index in range(self.top, len(timeline)):
            remaining += len(self._lines(index, width))
            if remaining > height:
                return
        self.follow = True
        self.new_below = 0

    def _bottom_anchor(self, width: int) -> tuple[int, int]:
        """(top, skip) of the view that shows the newest message at the bottom."""
        timeline = self.timeline
        assert timeline is not None
        height, used = self.size.height, 0
        for index in range(len(timeline) - 1, -1, -1):
            lines = len(self._lines(index, width))
            if used + lines >= height:
                return index, used + lines - height
            used += lines
        return 0, 0

    def _width(self) -> int:
        return max(20, self.size.width)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        """Three lines up per wheel notch."""
        event.stop()
        self.scroll_lines(-3)

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        """Three lines down per wheel notch."""
        event.stop()
        self.scroll_lines(3)

    def on_resize(self, event: events.Resize) -> None:
        """A new width lays every message out again."""
        self._frame = None
        self.refresh()

    # -- drawing --------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        """Returns screen line ``y`` of the current frame."""
        if self._frame is None or self._frame_size != tuple(self.size):
            self._drawing = True
            try:
                self._frame = self._build_frame()
            finally:
                self._drawing = False
            self._frame_size = (self.size.width, self.size.height)
        if 0 <= y < len(self._frame):
            return self._frame[y]
        return Strip.blank(self.size.width, self._style("base"))

    def _build_frame(self) -> list[Strip]:
        width, height = self.size.width, self.size.height
        timeline = self.timeline
        base = self._style("base")
        if timeline is None or not len(timeline):
            self.shown = (0, -1)
            if timeline is not None and not self._near_top_sent:
                self._near_top_sent = True  # nothing here: perhaps the hub has some
                self.post_message(self.NearTop(timeline.peer))
            text = self.empty_text if timeline is None else "No messages yet. Say hello!"
            style = self._style("messagelog--empty")
            lines = [Strip.blank(width, base) for _ in range(height)]
            if height:
                strip = Strip([Segment(text[:width].center(width), style)], width)
                lines[height // 2] = strip.apply_style(base)
            return lines
        layout_width = self._width()
        if self._start_at_marker and height:
            self._place_at_marker(layout_width, height)
        if self.follow:
            self.top, self.skip = self._bottom_anchor(layout_width)
        strips: list[Strip] = []
        index, skip = self.top, self.skip
        first = index
        while len(strips) < height and index < len(timeline):
            lines = self._lines(index, layout_width)
            strips.extend(lines[skip:])
            skip = 0
            index += 1
        last = index - 1
        if self.follow and len(strips) < height:  # a short conversation sits at the bottom
            strips = [Strip.blank(width, base)] * (height - len(strips)) + strips
        strips = [s.crop_extend(0, width, base) for s in strips[:height]]
        self.shown = (first, last)
        self._update_subtitle(first, last)
        if first < PREFETCH and not self._near_top_sent:
            self._near_top_sent = True
            self.post_message(self.NearTop(timeline.peer))
        return strips

    def _update_subtitle(self, first: int, last: int) -> None:
        timeline = self.timeline
        assert timeline is not None
        total = len(timeline)
        position = f"{first + 1:,}–{last + 1:,} of {total:,}"
        if self.new_below:
            position += f" · ▼ {self.new_below} new (End)"
        elif not self.follow:
            position += " · End: newest"
        if position == self.border_subtitle:
            return
        if self._drawing:
            # A border changed while the content is being drawn is drawn late: next time.
            self.call_after_refresh(self._set_subtitle, position)
        else:
            self.border_subtitle = position

    def _set_subtitle(self, text: str) -> None:
        self.border_subtitle = text

    def _lines(self, index: int, width: int) -> list[Strip]:
        """The lines of message ``index`` at ``width``, from the cache or laid out now."""
        timeline = self.timeline
        assert timeline is not None
        line = timeline[index]
        new_day = index == 0 or self.clock.day(timeline.ts[index - 1]) != self.clock.day(line.ts)
        first_unread = False
        if self.marker is not None:
            first_unread = line.key > self.marker and (
                index == 0 or timeline.key(index - 1) <= self.marker
            )
        key: _CacheKey = (
            line.n, width, line.state, line.path, new_day, first_unread,
            line.n == self.highlight, self.clock.today() if new_day else None,
        )  # fmt: skip
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        strips = self._layout(line, width, new_day, first_unread)
        self._cache[key] = strips
        if len(self._cache) > STRIP_CACHE:
            self._cache.popitem(last=False)
        return strips

    def _rule(self, label: str, width: int, style: Style) -> Strip:
        text = f" {label} "
        side = max(0, width - len(text))
        return Strip([Segment("─" * (side // 2) + text + "─" * (side - side // 2), style)])

    def _layout(
        self, line: StoredLine, width: int, new_day: bool, first_unread: bool
    ) -> list[Strip]:
        style = self._style
        base = self._style("base")
        out: list[Strip] = []
        if new_day:
            label = day_label(self.clock.day(line.ts), self.clock.today())
            out.append(self._rule(label, width, style("messagelog--day")))
        if first_unread:
            out.append(self._rule("new messages", width, style("messagelog--marker")))
        peer = self.timeline.peer if self.timeline is not None else "?"
        nick = self.me if line.outgoing else line.peer
        nick_width = min(12, max(len(self.me), len(peer), 3))
        if len(nick) > nick_width:
            nick = nick[: nick_width - 1] + "…"
        meta_width = META_WIDTH if width >= 64 else 0
        gutter = 6 + nick_width + 3
        body_width = max(8, width - gutter - (meta_width + 1 if meta_width else 0))
        line_style = Style()
        if line.n == self.highlight:
            line_style = style("messagelog--highlight")
        elif not line.outgoing and f"@{self.me}".lower() in line.body.lower():
            line_style = style("messagelog--mention")
        clean = clean_text(line.body)
        if len(clean) <= body_width and clean.isascii() and "\n" not in clean:
            wrapped = [Text(clean, style=line_style)]  # most messages: no word-wrapping
        else:
            body = Text(clean)
            body.stylize(line_style)  # a span: Text.wrap drops a Text's own style
            wrapped = list(body.wrap(self.app.console, body_width)) or [Text("")]
        meta = format_meta(line.outgoing, line.state, line.path)
        meta_style = style(
            "messagelog--failed"
            if line.state == "failed"
            else "messagelog--pending"
            if line.outgoing and line.state == "queued"
            else "messagelog--meta"
        )
        nick_style = Style(color=nick_color(nick), bold=not line.outgoing)
        separator = style("messagelog--separator")
        for number, part in enumerate(wrapped):
            if number == 0:
                segments = [
                    Segment(self.clock.hhmm(line.ts) + " ", style("messagelog--time")),
                    Segment(nick.rjust(nick_width), nick_style),
                ]
            else:
                segments = [Segment(" " * (6 + nick_width))]
            segments.append(Segment(" │ ", separator))
            part.truncate(body_width, pad=True)
            segments.extend(part.render(self.app.console, end=""))
            if meta_width:
                note = meta if number == 0 else ""
                segments.append(Segment(" " + note.rjust(meta_width), meta_style))
            out.append(Strip(segments).apply_style(base))
        if not meta_width:
            out.append(Strip([Segment(meta.rjust(width), meta_style)]).apply_style(base))
        if line.state == "failed" and line.reason:
            reason = f"not sent: {clean_text(line.reason)}"[: max(0, width - gutter)]
            segments = [Segment(" " * (gutter - 3)), Segment(" │ ", separator)]
            segments.append(Segment(reason, style("messagelog--failed")))
            out.append(Strip(segments).apply_style(base))
        return out
