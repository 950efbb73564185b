"""Frozen configuration dataclasses, and the one place where their values are merged.

A value comes from the first of these that sets it (``flag > env > file > default``):

1. a command-line flag;
2. an environment variable ``DUPLEX_<SECTION>_<FIELD>``, e.g. ``DUPLEX_ECHO_PORT=7``;
3. the TOML file given by ``--config``, else ``$DUPLEX_CONFIG``, else
   ``<user config dir>/duplex/duplex.toml`` when it exists, in its ``[<section>]`` table;
4. the field's default.

Each field carries its default and, directly under it, a docstring that says what it
means (the style of aioquic's ``QuicConfiguration``). Validation happens once, in
``__post_init__``, and raises :class:`~duplex.errors.ConfigError` with a one-line reason.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import platformdirs

from duplex.errors import ConfigError

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_HUB_PORT",
    "ClientConfig",
    "EchoConfig",
    "HubConfig",
    "ListenerConfig",
    "config_file_path",
    "resolve",
    "user_config_dir",
    "user_data_dir",
]

APP = "duplex"

DEFAULT_BACKLOG = 4096
"""Ask for a deep accept queue and let the kernel clamp it to ``net.core.somaxconn``.

CSAPP's ``LISTENQ`` of 1024 and the folklore "about 5" both date from kernels whose
queue was tiny. A burst of connects that overflows the accept queue costs each extra
client a SYN retransmission (one second, then three, ...), which is far worse than
the few hundred bytes of kernel memory per queued connection. See trio's
``_highlevel_open_tcp_listeners.py`` for the same argument.
"""


def user_config_dir() -> Path:
    """Returns the per-user config directory (``$DUPLEX_CONFIG_DIR`` overrides it)."""
    override = os.environ.get("DUPLEX_CONFIG_DIR")
    return Path(override) if override else Path(platformdirs.user_config_dir(APP))


def user_data_dir() -> Path:
    """Returns the per-user data directory (``$DUPLEX_DATA_DIR`` overrides it)."""
    override = os.environ.get("DUPLEX_DATA_DIR")
    return Path(override) if override else Path(platformdirs.user_data_dir(APP))


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerConfig:
    """Where and how a server listens. Shared by every concurrency model."""

    host: str = "127.0.0.1"
    """Address to bind: an IPv4 or IPv6 literal or a name. ``::`` is dual-stack."""

    port: int = 7007
    """TCP (and UDP) port; 0 asks the kernel for an ephemeral port, which is reported."""

    unix: str | None = None
    """Listen on this Unix domain socket path instead of host and port."""

    backlog: int = DEFAULT_BACKLOG
    """Accept-queue length asked of ``listen()``; clamped to ``net.core.somaxconn``."""

    reuse_address: bool = True
    """Set SO_REUSEADDR so a restart does not wait for TIME_WAIT connections to expire."""

    nodelay: bool = True
    """Set TCP_NODELAY on accepted connections: an echo must not wait for Nagle."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range 0..65535")
        if self.backlog < 0:
            raise ConfigError(f"backlog {self.backlog} is negative")
        if self.unix is not None and not self.unix:
            raise ConfigError("unix socket path is empty")


@dataclasses.dataclass(frozen=True, slots=True)
class EchoConfig:
    """The RFC 862 echo service (``duplex echo serve``); TOML section ``[echo]``."""

    model: str = "epoll"
    """Concurrency model name; ``duplex echo serve --help`` lists them."""

    host: str = "127.0.0.1"
    """Address to bind (see :class:`ListenerConfig`)."""

    port: int = 7007
    """Port to bind; RFC 862 names port 7, which needs privileges, so 7007 by default."""

    unix: str | None = None
    """Unix domain socket path instead of host and port."""

    backlog: int = DEFAULT_BACKLOG
    """Accept-queue length asked of ``listen()``."""

    workers: int = 0
    """Workers of the ``pool`` (threads) and ``prefork`` (processes) models; 0 = default."""

    udp: bool = False
    """Also answer UDP datagrams on the same port (RFC 862 section 2)."""

    grace: float = 5.0
    """Seconds that connections in flight may take to finish after SIGTERM or SIGINT."""

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"workers {self.workers} is negative")
        if self.grace < 0:
            raise ConfigError(f"grace {self.grace} is negative")
        if self.udp and self.unix:
            raise ConfigError("--udp needs a host and port, not a unix socket")
        self.listener()  # validates host, port and backlog the same way

    def listener(self) -> ListenerConfig:
        """Returns the listener part of this configuration."""
        return ListenerConfig(host=self.host, port=self.port, unix=self.unix, backlog=self.backlog)


DEFAULT_HUB_PORT = 7070
"""The hub's default TCP port."""


@dataclasses.dataclass(frozen=True, slots=True)
class HubConfig:
    """The messenger hub (``duplex serve``); TOML section ``[hub]``, env ``DUPLEX_HUB_*``."""

    host: str = "127.0.0.1"
    """Address to bind; ``::`` for every IPv6 and IPv4 address."""

    port: int = DEFAULT_HUB_PORT
    """TCP port; 0 picks a free one (reported)."""

    data_dir: str = ""
    """Where the SQLite store and TLS files live; empty = the user data dir."""

    store: str = ""
    """Store URL: ``sqlite:///path.db`` or ``postgresql://...``; empty = SQLite in data_dir."""

    broker: str = "local"
    """Broker URL: ``local`` (in-process, one node) or ``redis://host:port/db``."""

    synchronous: str = "FULL"
    """SQLite durability: FULL fsyncs every commit (nothing acked is lost on power loss);
    NORMAL is faster and loses nothing on a crash of the hub, only on one of the machine."""

    tls: str = "off"
    """``off``, ``self-signed`` (a certificate made once in data_dir), or ``files``."""

    tls_cert: str = ""
    """PEM certificate chain; with ``tls_key``, TLS is on (``tls = "files"``)."""

    tls_key: str = ""
    """PEM private key; with ``tls_cert``, TLS is on (``tls = "files"``)."""

    heartbeat: float = 5.0
    """Seconds between client heartbeats (told to clients at login)."""

    grace: float = 15.0
    """Seconds of silence after which a session counts as offline."""

    auth_timeout: float = 10.0
    """Seconds a connection may take to log in before it is closed."""

    max_frame: int = 1 << 20
    """Largest frame accepted, in bytes."""

    max_connections: int = 100_000
    """Connections beyond this are refused with ``Error{code="busy"}``."""

    send_buffer: int = 4 << 20
    """Bytes queued to one connection before it counts as a consumer that stopped reading."""

    send_rate: float = 1000.0
    """Messages per second one user may send, sustained (a token bucket)."""

    send_burst: int = 2000
    """Messages one user may send in a burst above the sustained rate."""

    login_rate: float = 0.2
    """Failed logins per second refilled per (address, user): one every 5 s."""

    login_burst: int = 5
    """Failed logins allowed in a burst per (address, user)."""

    ip_login_rate: float = 2.0
    """Failed logins (and registrations) per second refilled per address, any user."""

    ip_login_burst: int = 30
    """Failed logins (and registrations) allowed in a burst per address."""

    argon2_time_cost: int = 2
    """argon2id iterations (OWASP's recommendation with 19 MiB)."""

    argon2_memory_kib: int = 19456
    """argon2id memory in KiB."""

    token_days: float = 30.0
    """Lifetime of a session token kept by a client, in days."""

    admin: str = ""
    """``host:port`` of the admin listener (/healthz, /metrics); empty = off."""

    node: str = ""
    """This node's id in a cluster; empty = made from host name and pid."""

    nodes: int = 1
    """Hub processes to start on this host, sharing the port with SO_REUSEPORT."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range 0..65535")
        if self.tls not in ("off", "self-signed", "files"):
            raise ConfigError(f"tls must be off, self-signed or files, not {self.tls!r}")
        if self.tls != "files" and (self.tls_cert or self.tls_key):
            if self.tls == "self-signed":
                raise ConfigError(
                    "tls = self-signed makes its own certificate: drop --tls-cert and "
                    "--tls-key, or give both with tls = files"
                )
            # A certificate and a key say what is meant: TLS with them (not a hub
            # that silently speaks plain TCP).
            object.__setattr__(self, "tls", "files")
        if self.tls == "files" and not (self.tls_cert and self.tls_key):
            raise ConfigError("tls = files needs --tls-cert and --tls-key")
        if self.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigError(
                f"synchronous must be FULL, NORMAL or EXTRA, not {self.synchronous!r}"
            )
        for name in (
            "heartbeat",
            "grace",
            "auth_timeout",
            "send_rate",
            "login_rate",
            "ip_login_rate",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.grace <= self.heartbeat:
            raise ConfigError(
                f"grace ({self.grace:g} s) must be longer than heartbeat ({self.heartbeat:g} s)"
            )
        if self.nodes < 1:
            raise ConfigError("nodes must be at least 1")
        if self.max_frame < 1024:
            raise ConfigError("max_frame must be at least 1024 bytes")

    def data_path(self) -> Path:
        """Returns the data directory (``data_dir`` or the user data dir)."""
        return Path(self.data_dir) if self.data_dir else user_data_dir() / "hub"

    def store_url(self) -> str:
        """Returns the store URL (``store`` or SQLite in the data directory)."""
        return self.store or f"sqlite:///{self.data_path() / 'duplex.db'}"


@dataclasses.dataclass(frozen=True, slots=True)
class ClientConfig:
    """A messenger client; TOML section ``[client]``, env ``DUPLEX_CLIENT_*``."""

    hub: str = f"127.0.0.1:{DEFAULT_HUB_PORT}"
    """The hub's ``host:port``."""

    user: str = ""
    """The user name to log in as."""

    tls: bool = False
    """Connect with TLS, pinning the hub's certificate on first use."""

    data_dir: str = ""
    """Where the outbox, history and device identity live; empty = the user data dir."""

    p2p: bool = True
    """Accept and make direct peer-to-peer links."""

    def __post_init__(self) -> None:
        host, sep, port = self.hub.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"hub must be host:port, not {self.hub!r}")

    def hub_address(self) -> tuple[str, int]:
        """Returns the hub's (host, port); brackets around an IPv6 host are removed."""
        host, _, port = self.hub.rpartition(":")
        return host.strip("[]"), int(port)

    def data_path(self) -> Path:
        """Returns the client's data directory for ``user``."""
        base = Path(self.data_dir) if self.data_dir else user_data_dir() / "client"
        return base / (self.user or "_")


T = TypeVar("T")


def config_file_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Returns the TOML file to read, or None when there is none.

    Args:
        explicit: the ``--config`` flag, if given; it must exist.

    Raises:
        ConfigError: an explicit file (flag or ``$DUPLEX_CONFIG``) does not exist.
    """
    for candidate in (explicit, os.environ.get("DUPLEX_CONFIG")):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            return path
    default = user_config_dir() / "duplex.toml"
    return default if default.is_file() else None


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Converts a value from the environment (always str) or TOML to the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value == ""):
            return None
        return _convert(value, inner[0], where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_convert(item, args[0], where) for item in items if item != "")
    return value


def resolve(
    cls: type[T],
    *,
    section: str,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    file: Path | None = None,
) -> T:
    """Builds a config dataclass from flags, environment, TOML file and defaults.

    Args:
        cls: a frozen config dataclass such as :class:`EchoConfig`.
        section: the TOML table and the env-var infix (``echo`` -> ``DUPLEX_ECHO_PORT``).
        flags: values given on the command line; ``None`` values count as not given.
        env: the environment, ``os.environ`` by default.
        file: the TOML file (see :func:`config_file_path`), or None.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: a value has the wrong type, an unknown key is in the file's section,
            or the dataclass's validation refused the result.
    """
    environ = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}

    if file is not None:
        try:
            with file.open("rb") as fh:
                table = tomllib.load(fh).get(section, {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from exc
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: [{section}] must be a table")
        unknown = sorted(set(table) - fields)
        if unknown:
            raise ConfigError(
                f"{file}: unknown key(s) in [{section}]: {', '.join(unknown)}; "
                f"known: {', '.join(sorted(fields))}"
            )
        for key, raw in table.items():
            values[key] = _convert(raw, hints[key], f"{file} [{section}] {key}")

    prefix = f"DUPLEX_{section.upper()}_"
    for name in fields:
        var = prefix + name.upper()
        if var in environ:
            values[name] = _convert(environ[var], hints[name], var)

    for name, raw in (flags or {}).items():
        if raw is None:
            continue
        if name not in fields:
            raise ConfigError(f"unknown option {name!r} for [{section}]")
        values[name] = _convert(raw, hints[name], f"--{name.replace('_', '-')}")

    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - guarded by the field check above
        raise ConfigError(str(exc)) from exc
