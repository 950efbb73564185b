"""``duplex serve --nodes N`` as real processes: refusal, concurrent migrations, restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from duplex.testing.clients import new_client
from duplex.testing.hubs import HubProcess
from duplex.testing.servers import scaled, wait_for
from tests.cluster.conftest import PG, Backends, needs_cluster


def test_nodes_without_shared_backends_are_refused_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "duplex", "serve", "--nodes", "2", "--port", "0",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=scaled(30),
    )  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--store postgresql://" in lines[0] and "--broker redis://" in lines[0]
    assert "one process" in lines[0]


@needs_cluster
def test_nodes_starting_together_migrate_once_and_a_dead_node_is_restarted(
    tmp_path: Path, cluster: Backends
) -> None:
    import asyncpg

    hub = HubProcess(
        tmp_path, args=["--nodes", "3", "--store", cluster.store, "--broker", cluster.broker]
    )
    with hub:
        workers = hub.info["workers"]
        assert len(workers) == 3 and len({w["node"] for w in workers}) == 3
        assert hub.info["pid"] not in {w["pid"] for w in workers}

        async def versions() -> list[int]:
            conn = await asyncpg.connect(PG, server_settings={"search_path": cluster.schema})
            try:
                rows = await conn.fetch("SELECT version FROM schema_version ORDER BY version")
            finally:
                await conn.close()
            return [int(r[0]) for r in rows]

        applied = asyncio.run(versions())
        assert applied and applied == sorted(set(applied)), "a migration was applied twice"
        # A node that dies is replaced; the port keeps serving meanwhile.
        victim = workers[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        children = lambda: {int(p) for p in _children(hub.proc.pid)}  # noqa: E731
        assert wait_for(lambda: victim not in children() and len(children()) == 3, 10)

        async def login() -> None:
            client = await new_client(hub.address, "alice")
            await client.close()

        asyncio.run(login())
        assert hub.stop() == 0
    assert not _children(hub.proc.pid)


def _children(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return f.read().split()
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("flag", ["--store", "--broker"])
def test_one_shared_backend_is_not_enough(tmp_path: Path, flag: str) -> None:
    value = "postgresql://u@127.0.0.1/db" if flag == "--store" else "redis://127.0.0.1/0"
    result = subprocess.run(
        [sys.executable, "-m", "duplex", "serve", "--nodes", "2", "--port", "0",
         "--data-dir", str(tmp_path), flag, value],
        capture_output=True, text=True, timeout=scaled(30),
    )  # fmt: skip
    assert result.returncode != 0
    other = "--broker redis://" if flag == "--store" else "--store postgresql://"
    assert other in result.stderr and len(result.stderr.strip().splitlines()) == 1
