"""The #3 conformance scenarios on every backend: SQLite + the in-process broker (one
node), PostgreSQL + Redis with one node, and PostgreSQL + Redis with two nodes that
split every scenario's users between them (cross-node delivery, presence, receipts
and introductions)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.cluster.conftest import CLUSTER_PROBLEM, Backends
from tests.cluster.scenarios import SCENARIOS, Scenario, deployment

BACKENDS = [
    pytest.param("sqlite-local", id="sqlite-local"),
    pytest.param(
        "pg-redis", id="pg-redis",
        marks=pytest.mark.skipif(CLUSTER_PROBLEM is not None, reason=str(CLUSTER_PROBLEM)),
    ),
    pytest.param(
        "pg-redis-2nodes", id="pg-redis-2nodes",
        marks=pytest.mark.skipif(CLUSTER_PROBLEM is not None, reason=str(CLUSTER_PROBLEM)),
    ),
]  # fmt: skip


@pytest.fixture
def backends(request: pytest.FixtureRequest, backend: str) -> Backends | None:
    """The cluster URLs (own schema and prefix) when the backend needs them."""
    if backend == "sqlite-local":
        return None
    cluster: Backends = request.getfixturevalue("cluster")
    return cluster


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_scenario(
    tmp_path: Path, backend: str, backends: Backends | None, scenario: Scenario
) -> None:
    async def main() -> None:
        if backends is None:
            async with deployment(backend, tmp_path, 1) as dep:
                await scenario(dep)
        else:
            nodes = 2 if backend.endswith("2nodes") else 1
            async with deployment(
                backend, tmp_path, nodes, store=backends.store, broker=backends.broker
            ) as dep:
                await scenario(dep)

    asyncio.run(main())
