"""``duplex chat``: the Textual application.

The app decides what to show first (the first-run setup screen, or the chat with a
saved token), does the work of the setup screen (probing and pinning the hub's
certificate, registering, logging in, writing the config), and closes the client
when it ends. Everything else happens on :class:`~duplex.tui.chat.ChatScreen`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import ClassVar

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen

from duplex.config import ClientConfig
from duplex.errors import AuthError, DuplexError, RemoteError
from duplex.tls import PinMismatch
from duplex.tui.backend import ChatBackend, ChatClient
from duplex.tui.chat import ChatScreen
from duplex.tui.format import Clock
from duplex.tui.notify import Notifier
from duplex.tui.screens import HelpScreen, SetupScreen

__all__ = ["ChatApp"]

LOGIN_TIMEOUT = 15.0
"""Seconds the setup screen waits for the first login before it says the hub is
unreachable."""


class ChatApp(App[None]):
    """The terminal messenger.

    Args:
        backend: tokens, pins, making clients, writing the config.
        config: the ``[client]`` configuration (hub, user, TLS, data dir).
        password: a password to log in with (``DUPLEX_PASSWORD``); else the saved
            token, else the setup screen asks.
        client: a client to use as it is (tests); the app then does not close it.
        clock: time zone and now (tests fix both).
        notify: notification modes (``bell``, ``osc777``, ``osc9``).
    """

    TITLE = "duplex chat"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "help", "Help", show=False),
        Binding("question_mark", "help", "Help", show=False),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self, backend: ChatBackend, config: ClientConfig, *, password: str | None = None,
        client: ChatClient | None = None, clock: Clock | None = None,
        notify: Iterable[str] = ("bell",),
    ) -> None:  # fmt: skip
        super().__init__()
        self.backend = backend
        self.config = config
        self.password = password
        self.client: ChatClient | None = client
        self._owns_client = client is None
        self.clock = clock or Clock()
        self.escapes: list[str] = []
        """Escape sequences meant for the terminal while headless (for tests)."""
        self.notifier = Notifier(notify, self._write_terminal)
        self._trust: asyncio.Future[bool] | None = None

    # -- start ----------------------------------------------------------------------------

    def on_mount(self) -> None:
        """Chat at once with a client, a token or a password; else the setup screen."""
        if self.client is not None:
            self.show_chat(self.client)
        elif self.config.user and (self.password or self.backend.tokens.load(self.config)):
            self._open_saved()
        else:
            self.push_screen(SetupScreen(self.config))

    @work(group="session", exclusive=True)
    async def _open_saved(self) -> None:
        client = await self.backend.open_client(self.config, self.password)
        self.client = client
        self._owns_client = True
        self.show_chat(client)

    def show_chat(self, client: ChatClient) -> None:
        """Replaces whatever is shown with the chat screen for ``client``."""
        screen = ChatScreen(client, self.clock, self.notifier, self._save_token)
        if isinstance(self.screen, SetupScreen):
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    def _save_token(self, token: str) -> None:
        if token != self.backend.tokens.load(self.config):
            self.backend.tokens.save(self.config, token)

    def session_refused(self, reason: str) -> None:
        """The hub refused our token or password: log in again on the setup screen."""
        self.backend.tokens.forget(self.config)
        self._close_client()
        self.switch_screen(SetupScreen(self.config, error=f"Login refused: {reason}"))

    @work(group="close")
    async def _close_client(self) -> None:
        client, self.client = self.client, None
        if client is not None and self._owns_client:
            await client.close()

    async def on_unmount(self) -> None:
        """Closes the client the app made (its outbox is on disk already)."""
        if self.client is not None and self._owns_client:
            await self.client.close()
            self.client = None

    # -- first run --------------------------------------------------------------------------

    @on(SetupScreen.Submitted)
    def setup_submitted(self, event: SetupScreen.Submitted) -> None:
        """Trust, register, log in, write the config: then chat."""
        self._setup(event.config, event.password, event.register)

    @on(SetupScreen.Trusted)
    def _trusted(self, event: SetupScreen.Trusted) -> None:
        if self._trust is not None and not self._trust.done():
            self._trust.set_result(event.trusted)

    @work(group="setup", exclusive=True)
    async def _setup(self, config: ClientConfig, password: str, register: bool) -> None:
        screen = self.screen
        if not isinstance(screen, SetupScreen):
            return
        screen.busy(True)
        try:
            if config.tls and not await self._trust_hub(screen, config):
                return
            if register:
                screen.say(f"Creating the account {config.user} at {config.hub}…")
                await self.backend.create_account(config, password)
            screen.say(f"Logging in to {config.hub} as {config.user}…")
            client = await self.backend.open_client(config, password)
            try:
                await client.wait_online(LOGIN_TIMEOUT)
            except BaseException:
                await client.close()
                raise
        except AuthError as exc:
            screen.say(f"Login refused: {exc.message}", error=True)
        except RemoteError as exc:
            screen.say(f"The hub refused: {exc.message} ({exc.code})", error=True)
        except TimeoutError:
            screen.say(f"No answer from the hub at {config.hub}.", error=True)
        except (DuplexError, OSError) as exc:
            screen.say(str(exc), error=True)
        else:
            self.config = config
            self.backend.save_config(config)
            if client.token:
                self._save_token(client.token)
            self.client = client
            self._owns_client = True
            self.show_chat(client)
        finally:
            screen.busy(False)

    async def _trust_hub(self, screen: SetupScreen, config: ClientConfig) -> bool:
        """Shows the hub's fingerprint and pins it if the user trusts it."""
        screen.say(f"Asking {config.hub} for its certificate…")
        fingerprint = await self.backend.probe(config.hub_address())
        pinned = self.backend.pinned(config)
        if pinned == fingerprint:
            return True
        if pinned is not None:
            raise PinMismatch(
                f"The hub at {config.hub} presents a different certificate from the one "
                f"you trusted before. Refusing: this may be an impostor. If its certificate "
                f"really changed, remove its line from {self.backend.pins.path}."
            )
        self._trust = asyncio.get_running_loop().create_future()
        screen.ask_trust(config.hub, fingerprint)
        screen.say("Is this the hub you meant?")
        if not await self._trust:
            screen.say("Not trusted: nothing was sent to that hub.", error=True)
            return False
        self.backend.pin(config, fingerprint)
        return True

    # -- app-wide -------------------------------------------------------------------------

    def on_app_focus(self) -> None:
        """The terminal window has focus again (terminals that report it)."""
        self._focus_changed(True)

    def on_app_blur(self) -> None:
        """The terminal window lost focus: messages in the open conversation ring too."""
        self._focus_changed(False)

    def _focus_changed(self, focused: bool) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, ChatScreen):
                screen.focused_app = focused

    def action_help(self) -> None:
        """Shows the keys and commands (not over another overlay)."""
        if not isinstance(self.screen, HelpScreen | SetupScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """Textual's command palette: the app's commands plus the chat's."""
        yield from super().get_system_commands(screen)
        yield SystemCommand("Help", "Keys and commands (? or F1)", self.action_help)
        if isinstance(screen, ChatScreen):
            yield from screen.palette_commands()

    def _write_terminal(self, text: str) -> None:
        if self.is_headless or self._driver is None:
            self.escapes.append(text)
        else:
            self._driver.write(text)
            self._driver.flush()
