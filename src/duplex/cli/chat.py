"""``duplex chat``: the terminal messenger.

It reuses the scriptable commands' helpers (``duplex.cli.client``): the same config
lookup, the same session tokens in the user config dir (mode 0600), the same pinned
hub certificates and the same way of making a client, so ``duplex login`` and
``duplex chat`` share one session.
"""

from __future__ import annotations

import os
from typing import Any

import click

from duplex.config import ClientConfig, config_file_path, user_config_dir
from duplex.errors import DuplexError

__all__ = ["chat"]


class _CliTokens:
    """Session tokens where ``duplex login`` keeps them."""

    def load(self, config: ClientConfig) -> str:
        from duplex.cli.client import _load_token

        return _load_token(config)

    def save(self, config: ClientConfig, token: str) -> None:
        from duplex.cli.client import _save_token

        _save_token(config, token)

    def forget(self, config: ClientConfig) -> None:
        from duplex.cli.client import _token_path

        _token_path(config).unlink(missing_ok=True)


@click.command(
    "chat",
    epilog="\b\nExamples:\n"
    "  duplex chat                         first run: a setup screen asks for hub and account\n"
    "  duplex chat --user alice --hub 127.0.0.1:7070\n"
    "  duplex chat --notify bell,osc777    ring and raise a desktop notification\n"
    "\b\nIn the chat: Enter sends, Ctrl+J starts a new line, Tab completes, ? shows\n"
    "the keys, /help the commands, Ctrl+P the command palette, Ctrl+Q quits.",
)
@click.option(
    "--hub", default=None, metavar="HOST:PORT", help="The hub.  [default: 127.0.0.1:7070]"
)
@click.option("--user", "-u", default=None, help="Your user name (or DUPLEX_CLIENT_USER).")
@click.option("--tls/--no-tls", default=None, help="TLS, pinning the hub's certificate.")
@click.option(
    "--data-dir", default=None, metavar="DIR", help="Outbox and history (default: yours)."
)
@click.option("--config", "config_path", default=None, metavar="FILE",
              help="TOML file; the setup screen writes its [client] table.")  # fmt: skip
@click.option(
    "--notify", default="bell", show_default=True, envvar="DUPLEX_CHAT_NOTIFY",
    metavar="MODES", help="bell, osc777, osc9 (comma-separated), or none.",
)  # fmt: skip
def chat(notify: str, **kw: Any) -> None:
    """The terminal messenger: contacts, conversations, delivery state and path.

    Logs in with the session token kept by an earlier login, or with
    DUPLEX_PASSWORD; without either (or without a user name) it opens a setup
    screen that asks for the hub, registers or logs in, shows the hub's certificate
    fingerprint to trust (with --tls) and writes the [client] table of the config.
    """
    from duplex.cli.client import _client, _config, _pins
    from duplex.tui import ChatApp, ChatBackend
    from duplex.tui.notify import parse_modes

    try:
        modes = parse_modes(notify)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--notify") from exc
    explicit = kw.get("config_path")
    try:
        config = _config(kw, need_user=False)
        target = config_file_path(explicit) or user_config_dir() / "duplex.toml"
    except DuplexError as exc:
        raise click.ClickException(str(exc)) from exc

    async def open_client(cfg: ClientConfig, password: str | None) -> Any:
        return await _client(cfg, password=password)

    backend = ChatBackend(
        config_file=target, tokens=_CliTokens(), pins=_pins(), open_client=open_client
    )
    password = os.environ.get("DUPLEX_PASSWORD") or None
    ChatApp(backend, config, password=password, notify=modes).run()
