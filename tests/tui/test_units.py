"""The pure parts of duplex chat: commands, completion, formatting, roster, config,
notifications."""

from __future__ import annotations

import datetime
import tomllib
from pathlib import Path

import pytest

from duplex.errors import ConfigError
from duplex.tui.backend import write_client_config
from duplex.tui.commands import Command, CommandError, Completer, parse_command
from duplex.tui.format import Clock, clean_text, day_label, format_meta, nick_color
from duplex.tui.notify import Notifier, parse_modes
from duplex.tui.roster import Roster


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hello", None),
        ("//etc/passwd is a path", None),
        ("/add bob", Command("add", "bob")),
        ("/RM  bob ", Command("rm", "bob")),
        ("/who", Command("who")),
        ("/history 200", Command("history", "200")),
        ("/search lunch at 1", Command("search", "lunch at 1")),
        ("/help", Command("help")),
        ("/quit", Command("quit")),
    ],
)
def test_parse_command(line: str, expected: Command | None) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("/frobnicate", "unknown command"),
        ("/add", "needs NAME"),
        ("/add bob carol", "one user name"),
        ("/history", "needs N"),
        ("/history many", "number of messages"),
        ("/history 0", "number of messages"),
        ("/search", "needs TEXT"),
    ],
)
def test_bad_commands_say_why(line: str, why: str) -> None:
    with pytest.raises(CommandError, match=why):
        parse_command(line)


def test_completion_of_commands_names_and_cycling() -> None:
    completer = Completer()
    names = ["bob", "bea", "carol"]
    assert completer.complete("/se", 3, names) == ("/search ", 8)
    completer.reset()
    assert completer.complete("/h", 2, names) == ("/history ", 9)
    assert completer.complete("/history ", 9, names) == ("/help ", 6)  # Tab again: next
    completer.reset()
    assert completer.complete("/rm b", 5, names) == ("/rm bob ", 8)
    assert completer.complete("/rm bob ", 8, names) == ("/rm bea ", 8)
    assert completer.complete("/rm bea ", 8, names) == ("/rm bob ", 8)  # round again
    completer.reset()
    assert completer.complete("hi @ca and", 6, names) == ("hi @carol  and", 10)
    completer.reset()
    assert completer.complete("zz", 2, names) is None
    assert completer.complete("", 0, names) is None


def test_times_in_a_fixed_zone_and_day_lines() -> None:
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    clock = Clock(tz=tokyo, now=lambda: 1_717_500_000.0)  # 2024-06-04 20:20 in Tokyo
    ts = 1_717_470_000_000  # 2024-06-04 12:00 in Tokyo, 03:00 UTC
    assert clock.hhmm(ts) == "12:00"
    assert clock.stamp(ts) == "2024-06-04 12:00"
    today = clock.today()
    assert today == datetime.date(2024, 6, 4)
    assert day_label(today, today) == "Today · Tuesday, 4 June 2024"
    assert day_label(datetime.date(2024, 6, 3), today) == "Yesterday · Monday, 3 June 2024"
    assert day_label(datetime.date(2023, 12, 25), today) == "Monday, 25 December 2023"


def test_state_and_path_notes() -> None:
    assert format_meta(True, "queued", None) == "◷ queued"
    assert format_meta(True, "stored", "relayed") == "✓ stored·relayed"
    assert format_meta(True, "delivered", "direct") == "✓✓ delivered·direct"
    assert format_meta(True, "failed", None) == "✗ failed"
    assert format_meta(False, "delivered", "stored") == "↓ stored"
    assert len(format_meta(True, "delivered", "relayed")) <= 20  # the meta column


def test_control_characters_never_reach_the_terminal() -> None:
    hostile = "hi\x1b]0;pwned\x07\x1b[2J\x9b31m\tend\nnext"
    cleaned = clean_text(hostile)
    assert "\x1b" not in cleaned and "\x07" not in cleaned and "\x9b" not in cleaned
    assert cleaned.endswith("    end\nnext")
    assert nick_color("alice") == nick_color("alice")


def test_notifications_are_sanitised_osc_sequences() -> None:
    written: list[str] = []
    notifier = Notifier(parse_modes("bell, osc777,osc9"), written.append)
    notifier.notify("bob", "hi;\x1b]52;c;evil\x07 there\nsecond line")
    osc777, osc9, bell = written
    assert osc777.startswith("\x1b]777;notify;bob;hi,") and osc777.endswith("\x1b\\")
    assert osc777.count("\x1b") == 2  # the sequence's own start and terminator only
    assert "\x07" not in osc777 and "\n" not in osc777
    assert osc9.startswith("\x1b]9;bob: ") and osc9.count("\x1b") == 2
    assert bell == "\a"
    assert parse_modes("none") == frozenset()
    with pytest.raises(ValueError, match="klaxon"):
        parse_modes("bell,klaxon")


def test_roster_order_presence_and_next_unread() -> None:
    roster = Roster()
    roster.get("zed").unread = 2  # history only, not a contact
    roster.set_contacts({"bob": True, "carol": False})
    assert roster.names() == ["bob", "carol", "zed"]
    roster.get("carol").unread, roster.get("carol").mentions = 1, 1
    assert roster.next_active(None) == "carol"  # mentions first
    roster.get("carol").mentions = 0
    assert roster.next_active("carol") == "zed"
    assert roster.total_unread == 3
    roster.set_contacts({"bob": False})
    assert roster.get("carol").contact is False and roster.get("carol").online is None
    roster.remove("bob")
    assert roster.names() == ["bob", "carol", "zed"]  # conversations stay


def test_client_config_is_written_keeping_everything_else(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "duplex.toml"
    write_client_config(path, {"hub": "127.0.0.1:7070", "user": "alice", "tls": False})
    assert tomllib.loads(path.read_text()) == {
        "client": {"hub": "127.0.0.1:7070", "user": "alice", "tls": False}
    }
    path.write_text(
        '# mine\n[echo]\nport = 7\n\n[client] # old\nuser = "old"\ndata_dir = "/d"\n'
        "\n[hub]\ngrace = 3.0\n"
    )
    write_client_config(path, {"user": 'bob "the" builder', "tls": True})
    text = path.read_text()
    assert text.startswith("# mine\n[echo]\nport = 7\n")
    assert tomllib.loads(text) == {
        "echo": {"port": 7},
        "hub": {"grace": 3.0},
        "client": {"user": 'bob "the" builder', "data_dir": "/d", "tls": True},
    }
    path.write_text("[client\n")
    with pytest.raises(ConfigError, match="cannot read"):
        write_client_config(path, {"user": "x"})
