"""``duplex chat`` as a click command (the lead registers it in duplex.cli)."""

from __future__ import annotations

from click.testing import CliRunner

from duplex.cli.chat import chat


def test_help_has_an_example_and_the_keys() -> None:
    result = CliRunner().invoke(chat, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output
    assert "duplex chat --user alice --hub 127.0.0.1:7070" in result.output
    assert "Ctrl+J" in result.output and "--notify" in result.output


def test_bad_notify_mode_is_a_one_line_error() -> None:
    result = CliRunner().invoke(chat, ["--notify", "klaxon"])
    assert result.exit_code == 2
    assert "unknown notification mode(s): klaxon" in result.output


def test_bad_hub_address_is_a_one_line_error() -> None:
    result = CliRunner().invoke(chat, ["--hub", "nowhere"])
    assert result.exit_code != 0
    assert "hub must be host:port" in result.output
