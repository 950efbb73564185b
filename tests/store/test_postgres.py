"""The PostgreSQL store against a real server: the conformance suite and cluster cases.

The server comes from ``$DUPLEX_TEST_PG`` (default: trust auth on 127.0.0.1:5432,
database ``test``). Each test works in a schema of its own, made for the test and
dropped after it, so runs never see each other's rows or touch anything else. Without
a reachable server (or without asyncpg) every test here is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator

import pytest

from duplex.errors import StoreError
from duplex.store import open_store
from duplex.store.base import NewMessage
from duplex.testing.store_conformance import (
    CHECKS,
    Check,
    check_durable_across_reopen,
    new_id,
    run_check,
)

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is not installed (duplex[cluster])")

from duplex.store.postgres import PostgresStore  # noqa: E402

DSN = os.environ.get("DUPLEX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_serial = itertools.count()


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _reachable() -> str | None:
    try:
        asyncio.run(_admin("SELECT 1"))
    except Exception as exc:
        return f"PostgreSQL not reachable at {DSN} ({type(exc).__name__}: {exc})"
    return None


_UNREACHABLE = _reachable()
pytestmark = pytest.mark.skipif(_UNREACHABLE is not None, reason=str(_UNREACHABLE))


@pytest.fixture
def schema() -> Iterator[str]:
    """A schema name unique to this test; the schema is dropped afterwards."""
    name = f"duplex_test_{os.getpid()}_{next(_serial)}"
    yield name
    asyncio.run(_admin(f"DROP SCHEMA IF EXISTS {name} CASCADE"))


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_conformance(schema: str, check: Check) -> None:
    asyncio.run(run_check(lambda: PostgresStore(DSN, schema=schema), check))


def test_durable_across_reopen(schema: str) -> None:
    asyncio.run(check_durable_across_reopen(lambda: PostgresStore(DSN, schema=schema)))


def test_group_commit_batches(schema: str) -> None:
    async def main() -> None:
        store = PostgresStore(DSN, schema=schema)
        await store.open()
        try:
            await asyncio.gather(
                *(
                    store.store_message(NewMessage("a", f"r{i % 7}", new_id(), "x", i))
                    for i in range(1000)
                )
            )
        finally:
            await store.close()
        assert store.write_count == 1000
        assert store.commit_count <= 20, store.commit_count

    asyncio.run(main())


def test_nodes_starting_together_migrate_once(schema: str) -> None:
    """Three stores open at once on an empty schema: the advisory lock serialises them."""

    async def main() -> None:
        stores = [PostgresStore(DSN, schema=schema, pool_size=2) for _ in range(3)]
        await asyncio.gather(*(s.open() for s in stores))
        try:
            conn = await asyncpg.connect(DSN, server_settings={"search_path": schema})
            try:
                rows = await conn.fetch("SELECT version FROM schema_version ORDER BY version")
            finally:
                await conn.close()
            assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
        finally:
            for s in stores:
                await s.close()

    asyncio.run(main())


def test_two_nodes_share_mailboxes_without_gaps(schema: str) -> None:
    """Two stores (two hub nodes) append to the same mailboxes and ack concurrently."""

    async def main() -> None:
        a = PostgresStore(DSN, schema=schema, pool_size=3)
        b = PostgresStore(DSN, schema=schema, pool_size=3)
        await a.open()
        await b.open()
        try:
            sends = [
                (a if i % 2 else b).store_message(
                    NewMessage(f"s{i % 3}", f"r{i % 4}", new_id(), "x", i)
                )
                for i in range(800)
            ]
            results = await asyncio.gather(*sends)
            # The same resent message through both nodes at once: stored once.
            m = NewMessage("s0", "r0", new_id(), "once", 1)
            pair = await asyncio.gather(a.store_message(m), b.store_message(m))
            assert sorted(r.duplicate for r in pair) == [False, True]
            receipts = await asyncio.gather(
                *((a if k % 2 else b).ack(f"r{k}", "phone", 10_000, 5) for k in range(4))
            )
            assert sum(len(r) for r in receipts) == 801
            for k in range(4):
                box = await a.fetch(f"r{k}", 0, 10_000)
                assert [e.seq for e in box] == list(range(1, len(box) + 1))
            for k in range(3):
                box = await b.fetch(f"s{k}", 0, 10_000)
                assert [e.seq for e in box] == list(range(1, len(box) + 1))
                assert all(e.kind == "receipt" for e in box)
            assert len({r.entry.msg_id for r in results}) == 800
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_unreachable_server_is_a_store_error() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/none", pool_size=2)
    with pytest.raises(StoreError, match="PostgreSQL store"):
        asyncio.run(store.open())


def test_open_store_postgres_url(schema: str) -> None:
    store = open_store(DSN, schema=schema, pool_size=4)
    assert isinstance(store, PostgresStore) and store.pool_size == 4
    with pytest.raises(ValueError, match="schema"):
        PostgresStore(DSN, schema="Robert'); DROP TABLE students;--")
