"""Shared pieces of the terminal UI tests: backends, fixed clocks, waiting."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from duplex.client import PinStore
from duplex.config import ClientConfig
from duplex.testing.servers import scaled
from duplex.tui import ChatApp, ChatBackend, Clock
from duplex.tui.backend import ChatClient, start_client
from duplex.tui.chat import ChatScreen
from duplex.tui.log import MessageLog

FIXED_NOW = datetime.datetime(2024, 6, 4, 15, 30, tzinfo=datetime.UTC).timestamp()
"""Tuesday 4 June 2024, 15:30 UTC: "today" in every snapshot."""

FIXED_CLOCK = Clock(tz=datetime.UTC, now=lambda: FIXED_NOW)


class MemoryTokens:
    """Session tokens kept in a dict."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}

    def load(self, config: ClientConfig) -> str:
        return self.tokens.get(f"{config.user}@{config.hub}", "")

    def save(self, config: ClientConfig, token: str) -> None:
        self.tokens[f"{config.user}@{config.hub}"] = token

    def forget(self, config: ClientConfig) -> None:
        self.tokens.pop(f"{config.user}@{config.hub}", None)


def backend(tmp_path: Path, **client_options: Any) -> ChatBackend:
    """A backend writing under ``tmp_path``, making clients with fast reconnects."""
    tokens = MemoryTokens()
    pins = PinStore(tmp_path / "known_hubs")
    client_options.setdefault("backoff", (0.05, 0.5))

    async def open_client(config: ClientConfig, password: str | None) -> ChatClient:
        return await start_client(config, password, tokens=tokens, pins=pins, **client_options)

    return ChatBackend(
        config_file=tmp_path / "duplex.toml", tokens=tokens, pins=pins, open_client=open_client
    )


def chat_app(tmp_path: Path, client: ChatClient, **kwargs: Any) -> ChatApp:
    """An app over an existing client (which the test closes)."""
    host, port = client.hub
    config = ClientConfig(hub=f"{host}:{port}", user=client.user, data_dir=str(tmp_path))
    kwargs.setdefault("clock", Clock(tz=datetime.UTC))
    return ChatApp(backend(tmp_path), config, client=client, **kwargs)


def chat_screen(app: ChatApp) -> ChatScreen:
    """The app's chat screen (fails if another screen is on top)."""
    screen = app.screen
    assert isinstance(screen, ChatScreen), f"expected the chat screen, got {screen!r}"
    return screen


def screen_text(app: ChatApp) -> str:
    """What the message log shows now, as plain text."""
    view = app.screen.query_one(MessageLog)
    return "\n".join(view.render_line(y).text for y in range(view.size.height))


async def until(
    pilot: Pilot[Any], predicate: Callable[[], bool], timeout: float = 10.0, what: str = ""
) -> None:
    """Waits (letting the app run) until ``predicate()`` holds.

    Raises:
        TimeoutError: not within ``timeout`` (scaled) seconds.
    """
    end = time.monotonic() + scaled(timeout)
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"not reached: {what or predicate}")
        await pilot.pause(0.02)
