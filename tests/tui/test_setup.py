"""The first-run screen against a real TLS hub: trust, register, log in, config."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

from textual.widgets import Button, Checkbox, Input, Static

from duplex.config import ClientConfig
from duplex.testing.hubs import hub_test_config, running_hub
from duplex.tls import format_fingerprint
from duplex.tui import ChatApp
from duplex.tui.chat import ChatScreen
from duplex.tui.screens import SetupScreen
from tests.tui.helpers import FIXED_CLOCK, backend, until


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def fill(screen: SetupScreen, hub: str, user: str, password: str, tls: bool) -> None:
    screen.query_one("#hub", Input).value = hub
    screen.query_one("#user", Input).value = user
    screen.query_one("#password", Input).value = password
    screen.query_one("#tls", Checkbox).value = tls


def message(screen: SetupScreen) -> str:
    return str(screen.query_one("#message", Static).content)


def test_first_run_trusts_the_hub_registers_and_writes_the_config(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path / "hub", tls="self-signed")) as hub:
            be = backend(tmp_path)
            app = ChatApp(be, ClientConfig(data_dir=str(tmp_path / "data")), clock=FIXED_CLOCK)
            async with app.run_test(size=(90, 50)) as pilot:
                setup = app.screen
                assert isinstance(setup, SetupScreen)
                hub_text = f"127.0.0.1:{hub.address[1]}"
                fill(setup, hub_text, "carol", "correct horse", tls=True)
                await pilot.click("#register")
                trust_box = setup.query_one("#trust-box")
                await until(pilot, lambda: trust_box.has_class("shown"), what="trust question")
                shown = str(setup.query_one("#fingerprint", Static).content)
                fingerprint = format_fingerprint(hub.info.fingerprint)
                assert fingerprint[:48] in shown and fingerprint[48:] in shown
                assert not (tmp_path / "known_hubs").exists()  # nothing pinned before "yes"
                await pilot.click("#trust")
                await until(pilot, lambda: isinstance(app.screen, ChatScreen), what="chat")
                assert hub.info.fingerprint in (tmp_path / "known_hubs").read_text()
                written = tomllib.loads((tmp_path / "duplex.toml").read_text())["client"]
                assert written == {"hub": hub_text, "user": "carol", "tls": True}
                assert be.tokens.tokens  # type: ignore[attr-defined]
                await until(pilot, lambda: "online" in app.screen.query_one("#status").text)  # type: ignore[attr-defined]

    run(scenario())


def test_distrusted_hub_gets_nothing_and_wrong_password_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path / "hub", tls="self-signed")) as hub:
            hub_text = f"127.0.0.1:{hub.address[1]}"
            be = backend(tmp_path)
            app = ChatApp(be, ClientConfig(data_dir=str(tmp_path / "data")), clock=FIXED_CLOCK)
            async with app.run_test(size=(90, 50)) as pilot:
                setup = app.screen
                assert isinstance(setup, SetupScreen)
                fill(setup, hub_text, "dave", "correct horse", tls=True)
                await pilot.click("#register")
                trust_box = setup.query_one("#trust-box")
                await until(pilot, lambda: trust_box.has_class("shown"))
                await pilot.click("#distrust")
                await until(pilot, lambda: "Not trusted" in message(setup))
                assert not (tmp_path / "known_hubs").exists()
                assert not (tmp_path / "duplex.toml").exists()
                # Now trust it and register, then try to log in with a wrong password.
                await pilot.click("#register")
                await until(pilot, lambda: trust_box.has_class("shown"))
                await pilot.click("#trust")
                await until(pilot, lambda: isinstance(app.screen, ChatScreen))
            app = ChatApp(
                backend(tmp_path), ClientConfig(hub=hub_text, user="dave", tls=True,
                data_dir=str(tmp_path / "data2")), clock=FIXED_CLOCK,
            )  # fmt: skip
            async with app.run_test(size=(90, 50)) as pilot:
                setup = app.screen
                assert isinstance(setup, SetupScreen)
                assert setup.query_one("#user", Input).value == "dave"
                setup.query_one("#password", Input).value = "wrong password"
                assert not setup.query_one("#login", Button).disabled
                await pilot.click("#login")  # already pinned: no question this time
                await until(pilot, lambda: "Login refused" in message(setup), what="refusal")
                assert isinstance(app.screen, SetupScreen)

    run(scenario())
