"""Snapshots of duplex chat's main screens (pytest-textual-snapshot).

Deterministic: a stand-in client with fixed data (tests/tui/fake.py), a fixed clock
(Tuesday 4 June 2024, 15:30 UTC) in UTC, no cursor blink. After a deliberate change
of the look, refresh them with ``pytest tests/tui --snapshot-update`` and look at the
diff report before committing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from duplex.config import ClientConfig
from duplex.tui import ChatApp
from tests.tui.fake import demo_app
from tests.tui.helpers import FIXED_CLOCK, backend

SnapCompare = Callable[..., bool]

SIZE = (110, 32)


async def steady(pilot: Pilot[Any]) -> None:
    """No blinking cursors: the same picture every time."""
    await pilot.pause()
    for widget in pilot.app.screen.query("Input, TextArea"):
        assert isinstance(widget, Input | TextArea)
        widget.cursor_blink = False
    await pilot.pause()


def test_setup_screen(snap_compare: SnapCompare, tmp_path: Path) -> None:
    app = ChatApp(backend(tmp_path), ClientConfig(data_dir=str(tmp_path)), clock=FIXED_CLOCK)
    assert snap_compare(app, terminal_size=(90, 34), run_before=steady)


def test_conversation(snap_compare: SnapCompare, tmp_path: Path) -> None:
    assert snap_compare(demo_app(tmp_path), terminal_size=SIZE, run_before=steady)


def test_help_overlay(snap_compare: SnapCompare, tmp_path: Path) -> None:
    async def help_open(pilot: Pilot[Any]) -> None:
        await steady(pilot)
        await pilot.press("question_mark")  # on the empty input: the help, not a "?"
        await pilot.pause()

    assert snap_compare(demo_app(tmp_path), terminal_size=(110, 40), run_before=help_open)


def test_paste_confirmation(snap_compare: SnapCompare, tmp_path: Path) -> None:
    async def paste(pilot: Pilot[Any]) -> None:
        from textual import events

        await steady(pilot)
        lines = "\n".join(f"line {i} of a long log excerpt" for i in range(1, 41))
        pilot.app.post_message(events.Paste(lines))  # as the driver delivers it
        await pilot.pause()
        await pilot.pause()

    assert snap_compare(demo_app(tmp_path), terminal_size=SIZE, run_before=paste)
