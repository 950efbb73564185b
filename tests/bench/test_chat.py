"""duplex bench chat: both paths measured end to end against a hub of its own."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from duplex.cli.bench import bench


def test_bench_chat_measures_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "chat.json"
    plot = tmp_path / "chat.png"
    cpus = os.sched_getaffinity(0)
    result = CliRunner().invoke(
        bench,
        [
            "chat",
            "--pairs",
            "2",
            "--window",
            "2",
            "-d",
            "0.6",
            "--warmup",
            "0.4",
            "--synchronous",
            "NORMAL",
            "--json",
            str(out),
            "--plot",
            str(plot),
            "--csv",
            str(tmp_path / "chat.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    # The command pins itself beside the hub while it runs, then lets go: run in-process
    # it once left the whole test session on one core.
    assert os.sched_getaffinity(0) == cpus
    runs = {r["path"]: r for r in json.loads(out.read_text())}
    assert set(runs) == {"relayed", "direct"}
    for run in runs.values():
        assert run["delivered"] > 0
        assert run["errors"] == 0  # every "direct" message really went direct
        assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["max"]
    assert plot.stat().st_size > 10_000
    lines = (tmp_path / "chat.csv").read_text().splitlines()
    assert lines[0].startswith("path,") and len(lines) == 3
    assert "relayed" in result.output and "direct" in result.output


def test_rate_needs_the_relayed_path() -> None:
    result = CliRunner().invoke(bench, ["chat", "--path", "direct", "--rate", "100"])
    assert result.exit_code == 2
    assert "--rate applies to the relayed path" in result.output


def test_runs_against_one_hub_resume_where_the_last_left_off(tmp_path: Path) -> None:
    """A second run's devices say what they hold, as real clients do: without that,
    each login first replays every earlier run's messages (a repeated benchmark
    against one hub fell to 0 msg/s by its third run). What an earlier run left in
    flight still arrives: it is acked and counted apart, never as this run's.
    """
    import asyncio

    from duplex.bench.chat import RelayResult, register_users, run_relay
    from duplex.testing.hubs import hub_test_config, running_hub

    pairs, window = 3, 4

    async def scenario() -> tuple[RelayResult, RelayResult, RelayResult, dict[str, int]]:
        # Three senders flat out for three runs: past the default per-user send rate.
        config = hub_test_config(tmp_path, send_rate=1e6, send_burst=10**6)
        async with running_hub(config) as hub:
            users = [f"br{i}" for i in range(pairs)] + [f"bs{i}" for i in range(pairs)]
            await register_users(hub.address, users)
            held: dict[str, int] = {}
            kw = {"pairs": pairs, "window": window, "duration": 0.4, "warmup": 0.0}
            first = await run_relay(hub.address, resume=held, **kw)  # type: ignore[arg-type]
            after_first = dict(held)
            resumed = await run_relay(hub.address, resume=held, **kw)  # type: ignore[arg-type]
            replayed = await run_relay(hub.address, **kw)  # type: ignore[arg-type]
            return first, resumed, replayed, after_first

    first, resumed, replayed, held = asyncio.run(scenario())
    assert set(held) == {f"br{i}" for i in range(pairs)} | {f"bs{i}" for i in range(pairs)}
    assert all(seq > 0 for seq in held.values())  # messages and receipts were held
    assert first.stale == 0
    # Only what the first run left in flight: per pair, at most a window sent and not
    # stored yet and a window stored and not received yet.
    assert resumed.stale <= 2 * pairs * window
    assert replayed.stale >= first.delivered + resumed.delivered  # the control: everything
    for run in (first, resumed, replayed):
        assert run.delivered > 0 and run.errors == 0
