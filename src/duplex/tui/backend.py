"""What the terminal UI needs from outside itself, behind one small seam.

:class:`ChatBackend` bundles the places where the UI touches the user's files and the
network through the client library: the session tokens, the pinned hub certificates,
making and starting a :class:`~duplex.client.Client`, registering, and writing the
``[client]`` table of the config file. ``duplex chat`` passes the command line's own
helpers (so tokens live where ``duplex login`` keeps them); tests pass their own.

:class:`ChatClient` is the part of :class:`~duplex.client.Client` the UI uses, so that
a snapshot test can draw the UI over a stand-in with fixed data.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from duplex.client import ClientEvent, LocalStore, PinStore
from duplex.client.events import ConnectionState
from duplex.config import ClientConfig
from duplex.errors import ConfigError

__all__ = [
    "ChatBackend",
    "ChatClient",
    "ContactInfo",
    "HistoryEntry",
    "TokenStore",
    "probe_fingerprint",
    "start_client",
    "write_client_config",
]


class ContactInfo(Protocol):
    """A contact as :meth:`ChatClient.contacts` lists it."""

    @property
    def user(self) -> str:
        """The user name."""

    @property
    def online(self) -> bool:
        """Whether a session of theirs is online."""


class HistoryEntry(Protocol):
    """One message of the hub's history (:meth:`ChatClient.hub_history`)."""

    @property
    def kind(self) -> str:
        """``msg`` (others are skipped)."""

    @property
    def peer(self) -> str:
        """The sender."""

    @property
    def id(self) -> bytes:
        """The message id."""

    @property
    def body(self) -> str:
        """The text."""

    @property
    def ts(self) -> int:
        """When the hub stored it (ms)."""

    @property
    def path(self) -> str:
        """How it travelled, as the hub saw it."""


class ChatClient(Protocol):
    """The part of :class:`~duplex.client.Client` that ``duplex chat`` uses."""

    user: str
    hub: tuple[str, int]
    state: ConnectionState
    local: LocalStore
    token: str
    fatal: str
    router: Any

    def events(self) -> AsyncIterator[ClientEvent]:
        """Every event, in order."""
        ...

    async def send(self, to: str, text: str) -> bytes:
        """Queues ``text`` for ``to``; returns its id."""
        ...

    async def contacts(self) -> Sequence[ContactInfo]:
        """The contact list with presence."""
        ...

    async def add_contact(self, user: str) -> None:
        """Adds a contact."""

    async def remove_contact(self, user: str) -> None:
        """Removes a contact."""

    async def hub_history(
        self, peer: str, before: int = 0, limit: int = 50
    ) -> Sequence[HistoryEntry]:
        """The hub's history with ``peer`` before ``before`` (ms), newest last."""
        ...

    async def wait_online(self, timeout: float) -> None:
        """Waits to be logged in."""

    def reconnect_now(self) -> None:
        """Skips the rest of the backoff."""

    async def close(self) -> None:
        """Stops the client."""


class TokenStore(Protocol):
    """Where session tokens are kept between runs."""

    def load(self, config: ClientConfig) -> str:
        """The token of ``config``'s user at its hub, or ""."""
        ...

    def save(self, config: ClientConfig, token: str) -> None:
        """Keeps ``token``."""

    def forget(self, config: ClientConfig) -> None:
        """Drops the token (it was refused)."""


async def probe_fingerprint(hub: tuple[str, int], timeout: float = 10.0) -> str:
    """Returns the SHA-256 fingerprint of the hub's TLS certificate, without pinning it.

    Only the TLS handshake happens: the first-run screen shows the fingerprint so the
    user can compare it with the one ``duplex serve`` printed before trusting it.

    Raises:
        OSError: the hub cannot be reached or does not speak TLS.
        TimeoutError: no handshake within ``timeout``.
    """
    from duplex.tls import client_context, peer_fingerprint

    host, port = hub
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=client_context()), timeout
    )
    try:
        fingerprint = peer_fingerprint(writer.get_extra_info("ssl_object"))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not fingerprint:
        raise OSError("the hub presented no certificate")
    return fingerprint


_CLIENT_HEADER = re.compile(r"^\s*\[\s*client\s*\]\s*(#.*)?$")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def write_client_config(path: Path, values: dict[str, object]) -> None:
    """Sets keys of the ``[client]`` table of the TOML file at ``path``.

    Other tables, comments and the table's other keys are kept; the file is made
    (with its directory) if needed, and replaced atomically.

    Raises:
        ConfigError: the existing file is not valid TOML, or cannot be written.
    """
    try:
        text = path.read_text() if path.exists() else ""
        current = tomllib.loads(text).get("client", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    merged = {**current, **values}
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line.lstrip().startswith("["):
            skipping = bool(_CLIENT_HEADER.match(line))
        if not skipping:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    block = ["[client]", *(f"{key} = {_toml_value(value)}" for key, value in merged.items())]
    result = "\n".join([*kept, "", *block] if kept else block) + "\n"
    tomllib.loads(result)  # never write a file we could not read back
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(result)
        temporary.replace(path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from exc


async def _register(config: ClientConfig, password: str, pins: PinStore) -> None:
    from duplex.client import register

    await register(config.hub_address(), config.user, password, tls=config.tls, pins=pins)


@dataclasses.dataclass
class ChatBackend:
    """The UI's seam to files and the network.

    Attributes:
        config_file: the TOML file the first-run screen writes.
        tokens: where session tokens live.
        pins: the pinned hub certificates.
        open_client: makes and starts a client for a config and an optional password
            (with None, the saved token is used).
        register: creates an account (config, password).
        probe: returns a hub's certificate fingerprint.
    """

    config_file: Path
    tokens: TokenStore
    pins: PinStore
    open_client: Callable[[ClientConfig, str | None], Awaitable[ChatClient]]
    register: Callable[[ClientConfig, str], Awaitable[None]] | None = None
    probe: Callable[[tuple[str, int]], Awaitable[str]] = probe_fingerprint

    async def create_account(self, config: ClientConfig, password: str) -> None:
        """Registers ``config.user`` at ``config.hub``.

        Raises:
            RemoteError: the hub refused (name taken, weak password, ...).
            BrokenResourceError: the hub could not be reached.
        """
        if self.register is not None:
            await self.register(config, password)
        else:
            await _register(config, password, self.pins)

    def pinned(self, config: ClientConfig) -> str | None:
        """The fingerprint pinned for ``config``'s hub, if any."""
        host, port = config.hub_address()
        # PinStore has no public read; see the report of issue #7.
        return self.pins.pinned(f"{host}:{port}")

    def pin(self, config: ClientConfig, fingerprint: str) -> None:
        """Pins ``fingerprint`` for ``config``'s hub (the user trusted it).

        Raises:
            PinMismatch: another fingerprint is already pinned.
        """
        host, port = config.hub_address()
        self.pins.check(f"{host}:{port}", fingerprint)

    def save_config(self, config: ClientConfig) -> None:
        """Writes hub, user and TLS of ``config`` to :attr:`config_file`."""
        write_client_config(
            self.config_file, {"hub": config.hub, "user": config.user, "tls": config.tls}
        )


async def start_client(
    config: ClientConfig, password: str | None, *, tokens: TokenStore, pins: PinStore,
    **options: Any,
) -> ChatClient:  # fmt: skip
    """Makes and starts a :class:`~duplex.client.Client` as ``duplex login`` does.

    ``duplex chat`` itself uses the command line's helper; this one is for embedding
    and tests, which pass ``options`` such as a faster ``backoff``.

    Args:
        config: hub, user, TLS and data dir.
        password: the password, or None to use the saved token.
        tokens: where the token is.
        pins: the pinned hub certificates.
        options: further :class:`~duplex.client.Client` arguments.
    """
    from duplex.client import Client

    token = tokens.load(config)
    client = Client(
        config.hub_address(), config.user, password=password, token=token or None,
        data_dir=config.data_path(), tls=config.tls, pins=pins, want_token=True, **options,
    )  # fmt: skip
    await client.start()
    return client  # mypy checks here that Client is a ChatClient
