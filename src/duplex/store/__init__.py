"""Durable state of the hub: the :class:`Store` protocol and its backends.

* :class:`~duplex.store.sqlite.SqliteStore` — embedded, the default: one SQLite file
  in WAL mode with group commit.
* :class:`~duplex.store.postgres.PostgresStore` — cluster mode: PostgreSQL through
  asyncpg (``pip install 'duplex[cluster]'``), imported only when asked for.

:func:`open_store` picks one from a URL, which is what ``duplex serve --store`` takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from duplex.errors import ConfigError
from duplex.store.base import Entry, EntryKind, NewMessage, Store, Stored, StoreStats, User
from duplex.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from duplex.store.postgres import PostgresStore

__all__ = [
    "Entry",
    "EntryKind",
    "NewMessage",
    "PostgresStore",
    "SqliteStore",
    "Store",
    "StoreStats",
    "Stored",
    "User",
    "open_store",
]


def __getattr__(name: str) -> Any:
    # PostgresStore needs asyncpg, an optional dependency: import it on first use only.
    if name == "PostgresStore":
        from duplex.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _split_schema(url: str) -> tuple[str, str | None]:
    """Takes ``schema=`` out of a PostgreSQL URL's query (it is ours, not libpq's)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for name, value in query if name == "schema"), None)
    if schema is None:
        return url, None
    rest = [(name, value) for name, value in query if name != "schema"]
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


def open_store(url: str | Path, **options: Any) -> Store:
    """Returns the store a URL names, not yet opened (``await store.open()`` next).

    Accepted forms:

    * ``sqlite:///relative/or/absolute/path.db`` — as SQLAlchemy: three slashes then
      the path, so ``sqlite:////var/lib/duplex/hub.db`` is absolute and
      ``sqlite:///hub.db`` is relative to the working directory;
    * a plain path (``hub.db``, ``/var/lib/duplex/hub.db``, a :class:`~pathlib.Path`);
    * ``postgresql://user@host:port/db`` or ``postgres://...`` — needs asyncpg;
      ``?schema=name`` puts the tables in that schema (so several hubs, or tests,
      can share one database); the other query parameters go to asyncpg.

    Args:
        url: the store's location.
        **options: passed to the backend's constructor (e.g. ``synchronous="NORMAL"``
            for SQLite, ``pool_size=20`` for PostgreSQL).

    Returns:
        The store.

    Raises:
        ConfigError: an unsupported URL scheme, asyncpg missing for PostgreSQL, or a bad
            PostgreSQL option (``schema``, ``pool_size``).
    """
    if isinstance(url, Path):
        return SqliteStore(url, **options)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from duplex.store.postgres import PostgresStore as Backend
        except ImportError as exc:
            raise ConfigError(
                f"a PostgreSQL store needs asyncpg: pip install 'duplex[cluster]' ({exc})"
            ) from exc
        url, schema = _split_schema(url)
        if schema is not None:
            options.setdefault("schema", schema)
        try:
            return Backend(url, **options)
        except ValueError as exc:  # a bad schema name or pool size: say so in one line
            raise ConfigError(f"PostgreSQL store: {exc}") from exc
    if url.startswith("sqlite://"):
        rest = url.removeprefix("sqlite://")
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigError(f"a SQLite URL is sqlite:///path/to/file.db, not {url!r}")
        return SqliteStore(rest[1:], **options)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"unsupported store URL scheme {scheme!r}: use sqlite:///path, a path, "
            "or postgresql://..."
        )
    if not url:
        raise ConfigError("empty store URL")
    return SqliteStore(url, **options)
