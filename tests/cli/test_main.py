"""The top-level command: every subcommand is reachable and explains itself."""

from __future__ import annotations

import pytest

from duplex.testing.conformance import run_cli

COMMANDS = [
    "serve", "register", "login", "logout", "send", "inbox", "contacts", "who", "peers",
    "chat", "echo", "bench", "lab", "inspect",
]  # fmt: skip


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert f"  {command} " in result.stdout, command


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: duplex" in result.stdout
    assert "duplex " in result.stdout.split("Usage:")[1].split("\n", 1)[1], "no example"


def test_unknown_command_is_one_line() -> None:
    result = run_cli("nonsense")
    assert result.returncode == 2
    assert "No such command 'nonsense'" in result.stderr


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("duplex, version ")
