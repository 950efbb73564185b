"""Cluster mode against the real services: PostgreSQL and Redis on this machine.

The URLs come from ``$DUPLEX_TEST_PG`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
and ``$DUPLEX_TEST_REDIS`` (default ``redis://127.0.0.1:6379/0``). Each test gets a
PostgreSQL schema and a Redis key prefix of its own, removed afterwards, so tests never
see each other's data and leave the shared servers as they found them. A test that
needs a service that is absent (or a client library that is not installed) is skipped,
saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from duplex.testing.servers import free_port, scaled

PG = os.environ.get("DUPLEX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("DUPLEX_TEST_REDIS", "redis://127.0.0.1:6379/0")
_serial = itertools.count()


def _pg_problem() -> str | None:
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install 'duplex[cluster]')"

    async def probe() -> None:
        conn = await asyncpg.connect(PG, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG} ({type(exc).__name__}: {exc})"
    return None


def _redis_problem() -> str | None:
    try:
        import redis
    except ImportError:
        return "redis is not installed (pip install 'duplex[cluster]')"
    try:
        client = redis.Redis.from_url(REDIS, socket_connect_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"Redis not reachable at {REDIS} ({type(exc).__name__}: {exc})"
    return None


PG_PROBLEM = _pg_problem()
REDIS_PROBLEM = _redis_problem()
needs_pg = pytest.mark.skipif(PG_PROBLEM is not None, reason=str(PG_PROBLEM))
needs_redis = pytest.mark.skipif(REDIS_PROBLEM is not None, reason=str(REDIS_PROBLEM))
CLUSTER_PROBLEM = PG_PROBLEM or REDIS_PROBLEM
needs_cluster = pytest.mark.skipif(CLUSTER_PROBLEM is not None, reason=str(CLUSTER_PROBLEM))


def unique_name() -> str:
    """A name no other test (of this run or a parallel one) uses."""
    return f"duplex_t{os.getpid()}_{next(_serial)}"


def drop_schema(schema: str) -> None:
    """Drops a test's PostgreSQL schema."""
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(PG, timeout=5)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()

    asyncio.run(drop())


def delete_prefix(url: str, prefix: str) -> None:
    """Deletes every Redis key under ``prefix`` (SCAN, never FLUSHDB: the server is shared)."""
    import redis

    client = redis.Redis.from_url(url.split("?", 1)[0], socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@dataclass(frozen=True)
class Backends:
    """The store and broker URLs of one test, and what to clean up."""

    store: str
    broker: str
    prefix: str
    schema: str


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    if REDIS_PROBLEM is not None:
        pytest.skip(REDIS_PROBLEM)
    prefix = unique_name() + ":"
    yield prefix
    delete_prefix(REDIS, prefix)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A PostgreSQL schema of this test's own, dropped afterwards."""
    if PG_PROBLEM is not None:
        pytest.skip(PG_PROBLEM)
    schema = unique_name()
    yield schema
    drop_schema(schema)


@pytest.fixture
def cluster(pg_schema: str, redis_prefix: str) -> Backends:
    """PostgreSQL and Redis URLs for hub nodes sharing one user population."""
    sep = "&" if "?" in PG else "?"
    rsep = "&" if "?" in REDIS else "?"
    return Backends(
        store=f"{PG}{sep}schema={pg_schema}",
        broker=f"{REDIS}{rsep}prefix={redis_prefix}",
        prefix=redis_prefix,
        schema=pg_schema,
    )


class PrivateRedis:
    """A ``redis-server`` of this test's own (on a free port, nothing saved), so a test
    can stop and restart Redis without touching the machine's shared one."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Starts the server and waits until it answers."""
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        end = time.monotonic() + scaled(10)
        while True:
            try:
                client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
                try:
                    client.ping()
                    return
                finally:
                    client.close()
            except redis.ConnectionError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stops the server (by its pid) and waits for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(scaled(10))
        self.proc = None

    def restart(self) -> None:
        """SIGKILL, then a new server on the same port (empty: nothing was saved)."""
        self.stop()
        self.start()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A throw-away Redis server, killed after the test."""
    server = PrivateRedis()
    try:
        yield server
    finally:
        server.stop()
