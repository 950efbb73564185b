"""Versioned SQL migrations shipped inside the package, one folder per dialect.

A migration is a file ``NNNN_what.sql`` in ``duplex/store/migrations/<dialect>/``.
Each backend applies, in order and each in its own transaction, the files whose number
is above the highest one recorded in its ``schema_version`` table, and records each in
the same transaction, so a crash halfway leaves the database at a whole version. A
released file is never edited; a change is a new file.

The files are read with :mod:`importlib.resources`, so they are found the same way
from a source checkout, an installed wheel or a zip.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re

from duplex.errors import StoreError

__all__ = ["SCHEMA_VERSION_DDL", "Migration", "load_migrations"]

SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " applied BIGINT NOT NULL)"
)
"""The table that records applied migrations (valid SQL for SQLite and PostgreSQL)."""

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    """One migration file.

    Attributes:
        version: its number (1, 2, 3, ... without gaps).
        name: the part of the file name after the number, without ``.sql``.
        sql: the statements.
    """

    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """Returns the migrations of ``dialect`` (``"sqlite"`` or ``"postgres"``), in order.

    Args:
        dialect: the folder name under ``duplex/store/migrations``.

    Returns:
        The migrations sorted by version.

    Raises:
        StoreError: the folder is missing (a broken install) or its numbering has a
            gap or a duplicate.
    """
    root = importlib.resources.files("duplex.store").joinpath("migrations").joinpath(dialect)
    if not root.is_dir():
        raise StoreError(f"no {dialect} migrations in the duplex package (broken install?)")
    found: list[Migration] = []
    for item in root.iterdir():
        match = _NAME.match(item.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], item.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise StoreError(f"{dialect} migrations are not numbered 1..N: {versions}")
    return found
