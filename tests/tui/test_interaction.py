"""duplex chat's keys, paste, completion, drafts, commands and search, over a
stand-in client with fixed data (fast: no hub)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual import events
from textual.pilot import Pilot

from duplex.client import ConnectionStateChanged, MessageReceived
from duplex.tui import ChatApp
from duplex.tui.screens import ConfirmPaste, HelpScreen, SearchScreen
from tests.tui.fake import FakeClient, demo_app
from tests.tui.helpers import chat_screen, screen_text

Scenario = Callable[[ChatApp, Pilot[Any]], Awaitable[None]]


def drive(tmp_path: Path, scenario: Scenario, **kwargs: Any) -> None:
    async def main() -> None:
        app = demo_app(tmp_path, **kwargs)
        async with app.run_test(size=(110, 32)) as pilot:
            await pilot.pause()
            await scenario(app, pilot)
            assert not chat_screen(app).errors

    asyncio.run(main())


def sent(app: ChatApp) -> list[tuple[str, str]]:
    client = chat_screen(app).client
    assert isinstance(client, FakeClient)
    return client.sent


def notices(app: ChatApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


def test_enter_sends_ctrl_j_newline_and_slash_escape(tmp_path: Path) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[Any]) -> None:
        screen = chat_screen(app)
        await pilot.press(*"line one", "ctrl+j", *"line two")
        assert screen.composer.text == "line one\nline two"
        await pilot.press("enter")
        assert sent(app) == [("bob", "line one\nline two")]
        assert screen.composer.text == ""
        await pilot.pause()
        text = screen_text(app)
        assert "alice │ line one" in text and "◷ queued" in text and "│ line two" in text
        await pilot.press(*"//etc is a path", "enter")
        assert sent(app)[-1] == ("bob", "/etc is a path")
        await pilot.press("enter")  # nothing to send: nothing sent
        assert len(sent(app)) == 2

    drive(tmp_path, scenario)


def test_long_paste_is_confirmed_short_paste_is_inserted(tmp_path: Path) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[Any]) -> None:
        screen = chat_screen(app)
        composer = screen.composer
        app.post_message(events.Paste("two\nlines"))
        await pilot.pause()
        assert composer.text == "two\nlines" and not sent(app)
        composer.clear()
        four = "1\n2\n3\n4"
        for choice, expect_sent, expect_text in [
            ("#cancel", [], ""),
            ("#edit", [], four),
            ("#send", [("bob", four)], four),
        ]:
            app.post_message(events.Paste(four))
            await pilot.pause()
            assert isinstance(app.screen, ConfirmPaste), choice
            await pilot.click(choice)
            await pilot.pause()
            assert app.screen is screen
            assert sent(app) == expect_sent, choice
            assert composer.text == expect_text, choice

    drive(tmp_path, scenario)


def test_tab_completes_and_question_mark_opens_help_only_on_empty_input(tmp_path: Path) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[Any]) -> None:
        screen = chat_screen(app)
        await pilot.press(*"/rm c", "tab")
        assert screen.composer.text == "/rm carol "
        screen.composer.clear()
        await pilot.press(*"/wh", "tab")
        assert screen.composer.text == "/who "
        screen.composer.clear()
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.screen is screen
        await pilot.press(*"why", "question_mark")
        assert screen.composer.text == "why?"

    drive(tmp_path, scenario)


def test_drafts_follow_their_conversation_and_are_kept(tmp_path: Path) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[Any]) -> None:
        screen = chat_screen(app)
        assert screen.current == "bob"
        await pilot.press(*"draft for bob")
        await pilot.press("alt+down")
        assert screen.current == "carol" and screen.composer.text == ""
        await pilot.press(*"for carol")
        await pilot.press("alt+up")
        assert screen.current == "bob" and screen.composer.text == "draft for bob"
        await pilot.press("alt+down")
        assert screen.composer.text == "for carol"
        assert screen.client.local.draft("bob") == "draft for bob"  # survives a restart

    drive(tmp_path, scenario)


def test_unread_mentions_alt_a_and_a_message_elsewhere_rings(tmp_path: Path) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[Any]) -> None:
        screen = chat_screen(app)
        carol = screen.roster.get("carol")
        assert (carol.unread, carol.mentions) == (3, 1)
        assert "3 unread" in screen.status.text
        local = screen.client.local
        hostile = "ping @alice \x1b]0;owned\x07"
        local.add_incoming("dave", b"\x01" * 16, hostile, 1_717_515_000_000, "direct")
        screen.handle_event(MessageReceived("dave", b"\x01" * 16, hostile, 0, "direct"))
        await pilot.pause()
        assert (screen.roster.get("dave").unread, screen.roster.get("dave").mentions) == (1, 1)
        assert app.escapes == ["\a"]
        await pilot.press("alt+a")
        assert screen.current in ("carol", "dave")  # both have a mention
        await pilot.press("alt+a")
        await pilot.press("alt+a")
        assert screen.roster.total_unread == 0
        screen.open_conversation("dave")
        await pilot.pause()
        text = screen_text(app)
        assert "ping @alice" in text and "\x1b" not in text and "\x07" not in text

    drive(tmp_path, scenario, notify=("bell",))


def test_commands_search_and_palette(tmp_path: Path) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[Any]) -> None:
        screen = chat_screen(app)
        await pilot.press(*"/who", "enter")
        await pilot.pause()
        assert "Online: bob, carol" in notices(app)
        await pilot.press(*"/add erin", "enter")
        await pilot.pause()
        assert screen.roster.get("erin").contact
        await pilot.press(*"/rm dave", "enter")
        await pilot.pause()
        assert not screen.roster.get("dave").contact
        await pilot.press(*"/bogus", "enter")
        assert "unknown command /bogus: try /help" in notices(app)
        assert screen.composer.text == "/bogus"  # kept, to fix it
        screen.composer.clear()
        await pilot.press(*"/search lunch", "enter")
        await pilot.pause()
        assert isinstance(app.screen, SearchScreen)
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen and screen.log_view.highlight is not None
        await pilot.press(*"/search -a standup", "enter")
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert screen.current == "carol"
        titles = [c.title for c in app.get_system_commands(screen)]
        assert "Open conversation: bob" in titles and "Reconnect now" in titles
        await pilot.press(*"/quit", "enter")
        await pilot.pause()
        assert not app.is_running

    drive(tmp_path, scenario)


def test_status_bar_states_and_direct_links(tmp_path: Path) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[Any]) -> None:
        screen = chat_screen(app)
        status = screen.status
        assert status.text.startswith("● online") and "direct links: 2" in status.text
        screen.handle_event(ConnectionStateChanged("reconnecting", "hub gone", 3.0))
        assert "reconnecting in 3 s" in status.text
        status.now = lambda: status.retry_at - 0.5
        status.update_text()
        assert "reconnecting in 1 s" in status.text
        screen.handle_event(ConnectionStateChanged("connecting"))
        assert status.text.startswith("◌ connecting")
        screen.handle_event(ConnectionStateChanged("online"))
        assert status.text.startswith("● online")

    drive(tmp_path, scenario, links=2)


def test_when_the_terminal_loses_focus_the_open_conversation_rings_too(tmp_path: Path) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[Any]) -> None:
        screen = chat_screen(app)
        local = screen.client.local

        def arrive(n: int) -> None:
            msg_id = bytes([n]) * 16
            local.add_incoming("bob", msg_id, f"msg {n}", 1_717_515_000_000 + n, "direct")
            screen.handle_event(MessageReceived("bob", msg_id, f"msg {n}", 0, "direct"))

        arrive(1)
        assert app.escapes == []  # the open conversation, in a focused terminal: quiet
        app.post_message(events.AppBlur())
        await pilot.pause()
        arrive(2)
        assert app.escapes == ["\a"]
        app.post_message(events.AppFocus())
        await pilot.pause()
        arrive(3)
        assert app.escapes == ["\a"]
        assert screen.roster.get("bob").unread == 0

    drive(tmp_path, scenario, notify=("bell",))


def test_a_message_too_long_to_send_is_refused_and_kept(tmp_path: Path) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[Any]) -> None:
        screen = chat_screen(app)
        huge = "line\n" * 14_000  # 70,000 characters, over the wire's 65,536
        app.post_message(events.Paste(huge))
        await pilot.pause()
        assert isinstance(app.screen, ConfirmPaste)
        await pilot.click("#send")
        await pilot.pause()
        assert sent(app) == []
        assert screen.composer.text == huge  # to be cut down, not lost
        assert "Not sent: a message is at most 65,536 characters; this one has 70,000." in notices(
            app
        )

    drive(tmp_path, scenario)
