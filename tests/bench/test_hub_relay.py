"""``benchmarks/hub_relay.py`` (issue #3's benchmark), its C load generator
(``benchmarks/reference/hub_pairs.c``) and its MQTT reference, for real.

The reference tests need an MQTT broker at ``$DUPLEX_TEST_MQTT`` (default mosquitto on
127.0.0.1:1883), and they and the C client's tests need a C compiler; they skip, saying
which is missing, without them.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from duplex.bench.chat import register_users, run_relay, run_relay_native
from duplex.bench.histogram import decode_histogram
from duplex.bench.reference import (
    HUB_PAIRS,
    build_reference,
    find_compiler,
    listener_pid,
    run_mqtt_pairs,
)
from duplex.bench.spec import BenchError
from duplex.testing.hubs import HubProcess

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "hub_relay.py"
SHORT = ["--pairs", "3", "--duration", "0.6", "--warmup", "0.2"]
MQTT = os.environ.get("DUPLEX_TEST_MQTT", "127.0.0.1:1883")


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _need_compiler() -> None:
    try:
        find_compiler()
    except BenchError as exc:
        pytest.skip(f"cannot build benchmarks/reference/mqtt_pairs.c: {exc}")


def _need_broker_and_compiler() -> None:
    _need_compiler()
    host, _, port = MQTT.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        pytest.skip(f"no MQTT broker at {MQTT} ($DUPLEX_TEST_MQTT): {exc}")


def _free_port() -> int:
    """A loopback port with nobody listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    """A hub as ``hub_relay.py`` runs it: a subprocess with logins unthrottled (and
    sends: one pair here may send as fast as a hundred do there)."""
    env = {
        "DUPLEX_HUB_IP_LOGIN_BURST": "100000",
        "DUPLEX_HUB_IP_LOGIN_RATE": "100000",
        "DUPLEX_HUB_SEND_BURST": "100000",
        "DUPLEX_HUB_SEND_RATE": "100000",
    }
    with HubProcess(tmp_path / "hub", args=["--log-level", "warning"], env=env) as proc:
        yield proc


@pytest.mark.parametrize("client", ["c", "python"])
def test_closed_then_open_loop(tmp_path: Path, client: str) -> None:
    if client == "c":
        _need_compiler()
    out = tmp_path / "relay.json"
    done = _script(*SHORT, "--window", "2", "--client", client, "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "closed loop, window 2" in done.stdout
    build = "plain Python" if os.environ.get("DUPLEX_COMPILE") == "0" else "compiled hot path"
    assert done.stdout.startswith(f"hub: {build}")  # (tests/test_compiled.py: which holds)
    assert f"clients: {'C (' if client == 'c' else 'Python ('}" in done.stdout
    assert "open loop at" in done.stdout
    closed, opened = json.loads(out.read_text())
    assert (closed["mode"], opened["mode"]) == ("closed", "open")
    for result in (closed, opened):
        assert result["client"] == client
        assert result["per_second"] > 0
        assert result["errors"] == 0
        assert result["server_cpu"] > 0
        # Where the hub's CPU went, by thread, adding up (every message is journaled
        # in the run; the applier may apply nothing in so short a one).
        threads = result["hub_threads"]
        assert {"event loop", "duplex-journal"} <= set(threads), threads
        assert sum(threads.values()) == pytest.approx(result["server_cpu"], abs=0.05)
    assert "  hub CPU by thread: event loop " in done.stdout


def test_c_client_speaks_the_protocol_and_hands_over_to_the_python_one(
    hub: HubProcess,
) -> None:
    _need_compiler()
    pairs, window = 2, 3
    users = [f"br{i}" for i in range(pairs)] + [f"bs{i}" for i in range(pairs)]
    asyncio.run(register_users(hub.address, users))
    held: dict[str, int] = {}
    native = run_relay_native(
        hub.address, pairs=pairs, window=window, duration=0.5, warmup=0.2, resume=held
    )
    assert native.client == "c"
    assert native.delivered > 0 and native.errors == 0 and native.stale == 0
    # Every measured message has its latency, and the latencies are the run's.
    hist = decode_histogram(native.histogram)
    assert hist.get_total_count() == native.delivered
    assert 0 < native.latency_ms["p50"] <= native.latency_ms["max"] < 10_000
    # The devices' last sequences came back: receivers got messages, senders receipts.
    assert sorted(held) == sorted(users) and all(held[user] > 0 for user in users)
    # The Python clients log in as the same devices and resume there: what reaches
    # them from the C run is only what was in flight when it stopped (per pair, its
    # window sent and not stored, and its window stored and not received), not the
    # thousands it sent. Without the handed-over sequences every one would be stale.
    python = asyncio.run(
        run_relay(hub.address, pairs=pairs, window=window, duration=0.3, warmup=0.1, resume=held)
    )
    assert python.client == "python" and python.delivered > 0
    assert 0 <= python.stale <= 2 * pairs * window < native.delivered
    again = run_relay_native(
        hub.address, pairs=pairs, window=window, duration=0.3, warmup=0.1, resume=held
    )
    assert again.delivered > 0 and 0 <= again.stale <= 2 * pairs * window
    # A window whose first sends outgrow the client's output buffer (64 KiB) goes out
    # in pieces. (The devices resume where they stopped, and the send budget is the
    # fixture's: otherwise the runs before leave this one a replay of thousands and
    # a per-user budget spent, and it measures those.)
    wide = run_relay_native(hub.address, pairs=1, window=700, duration=0.3, warmup=0.1, resume=held)
    assert wide.window == 700 and wide.delivered > 0


def test_c_client_open_loop_keeps_to_its_schedule(hub: HubProcess) -> None:
    _need_compiler()
    asyncio.run(register_users(hub.address, ["or0", "or1", "os0", "os1"]))
    # 100 messages/s for one measured second: a closed loop would do thousands.
    result = run_relay_native(hub.address, pairs=2, rate=100, duration=1.0, warmup=0.3, prefix="o")
    assert result.rate == 100
    assert 50 <= result.delivered <= 110, result.delivered
    assert result.errors == 0


def test_c_client_refused_login_is_one_clear_error(hub: HubProcess) -> None:
    _need_compiler()  # nobody registered: every login is refused
    with pytest.raises(BenchError, match=r"the hub refused b[rs]\d"):
        run_relay_native(hub.address, pairs=1, duration=0.2, warmup=0)


def test_c_client_unreachable_hub_is_one_clear_error() -> None:
    _need_compiler()
    with pytest.raises(BenchError, match="connect to the hub"):
        run_relay_native(("127.0.0.1", _free_port()), pairs=1, duration=0.2, warmup=0)


def test_c_client_without_a_compiler_points_to_the_python_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc or clang on it
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(BenchError, match=r"need a C compiler .*\(--client python\) need none"):
        run_relay_native(("127.0.0.1", _free_port()), pairs=1, duration=0.2, warmup=0)


def test_c_client_refuses_bad_arguments() -> None:
    _need_compiler()
    binary = str(build_reference(name=HUB_PAIRS))
    env = {**os.environ, "DUPLEX_PASSWORD": "x"}
    for args, env_used in [(["-p", "0"], env), (["-p", "9", "-s", "5"], env), (["-p", "9"], {})]:
        done = subprocess.run([binary, *args], capture_output=True, text=True, env=env_used,
                              timeout=30, check=False)  # fmt: skip
        assert done.returncode == 2, (args, done.stderr)
        assert "$DUPLEX_PASSWORD set" in done.stderr


def test_reference_gives_the_brokers_figures_and_the_ratio(tmp_path: Path) -> None:
    _need_broker_and_compiler()
    out = tmp_path / "relay.json"
    done = _script(*SHORT, "--reference", "--mqtt", MQTT, "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "mosquitto QoS 1, window 1" in done.stdout
    assert "duplex / mosquitto QoS 1, closed loop:" in done.stdout
    closed, _, mqtt = json.loads(out.read_text())
    assert mqtt["mode"] == "mosquitto-qos1"
    assert mqtt["pairs"] == 3 and mqtt["messages"] > 0
    assert mqtt["p50_ms"] <= mqtt["p99_ms"] <= mqtt["max_ms"]
    assert mqtt["duplex_ratio"] == pytest.approx(closed["per_second"] / mqtt["msgs_per_s"])
    # CPU per message: the hub's always, the broker's when it runs on this machine.
    assert closed["server_us"] == pytest.approx(closed["server_cpu"] / closed["per_second"] * 1e6)
    assert f"{closed['server_us']:.0f} us/msg" in done.stdout
    if listener_pid(int(MQTT.rpartition(":")[2])) is not None:
        assert mqtt["broker_us"] > 0
        assert "CPU per message: duplex" in done.stdout


def test_repeat_alternates_with_the_reference_and_takes_medians(tmp_path: Path) -> None:
    _need_broker_and_compiler()
    out = tmp_path / "relay.json"
    done = _script(*SHORT, "--repeat", "3", "--reference", "--mqtt", MQTT, "--json", str(out))
    assert done.returncode == 0, done.stderr
    labels = [line[:32].strip() for line in done.stdout.splitlines() if "/3) " in line]
    assert labels == [  # alternating: both see the machine in the same state
        "closed loop, window 1 (1/3)",
        "mosquitto QoS 1, window 1 (1/3)",
        "closed loop, window 1 (2/3)",
        "mosquitto QoS 1, window 1 (2/3)",
        "closed loop, window 1 (3/3)",
        "mosquitto QoS 1, window 1 (3/3)",
    ]
    results = json.loads(out.read_text())
    assert [r["mode"] for r in results] == ["closed"] * 3 + ["open"] + ["mosquitto-qos1"] * 3
    median = sorted(r["per_second"] for r in results[:3])[1]
    reference = sorted(r["msgs_per_s"] for r in results[4:])[1]
    assert f"closed loop, median of 3: {median:,.0f} msg/s" in done.stdout
    assert f"mosquitto, median of 3: {reference:,.0f} msg/s" in done.stdout
    assert results[-1]["duplex_ratio"] == pytest.approx(median / reference)
    assert f"open loop at {median / 2:,.0f}/s" in done.stdout
    # What one run left in flight reaches the next one's login: shown, never counted.
    # Per pair at most its window sent and not stored yet, plus its window stored and
    # not received yet (3 pairs, window 1 here).
    stale = [r["stale"] for r in results[:4]]
    assert stale[0] == 0 and all(0 <= n <= 2 * 3 for n in stale), stale
    for n in stale:
        assert (f"stale {n}" in done.stdout) == (n > 0)


def test_repeat_must_be_positive() -> None:
    done = _script("--repeat", "0")
    assert done.returncode == 2
    assert "a positive whole number, not '0'" in done.stderr


@pytest.mark.parametrize(("qos", "window"), [(0, 1), (1, 4)])
def test_mqtt_pairs_delivers_at_either_qos_and_window(qos: int, window: int) -> None:
    _need_broker_and_compiler()
    result = run_mqtt_pairs(MQTT, pairs=2, window=window, qos=qos, duration=0.5, warmup=0.1)
    assert (result["qos"], result["window"], result["pairs"]) == (qos, window, 2)
    assert result["messages"] > 0 and result["msgs_per_s"] > 0


def test_unreachable_broker_is_one_clear_error() -> None:
    _need_compiler()
    port = _free_port()
    with pytest.raises(BenchError, match="connect to the broker"):
        run_mqtt_pairs(f"127.0.0.1:{port}", pairs=1, duration=0.2, warmup=0)
    with pytest.raises(BenchError, match="HOST:PORT"):
        run_mqtt_pairs("nohost", duration=0.2)


def test_an_open_loop_the_hub_cannot_keep_up_with_is_flagged() -> None:
    # 2,500 messages/s per sender for 0.6 s: within the hub's per-user burst (2,000 at
    # once, then 1,000/s), and 200,000/s in all: more than twice what this hub
    # delivers even in its largest batches (about 86,000/s at 32 in flight per pair,
    # compiled; 70,000/s offered stopped being enough once it got there).
    done = _script("--pairs", "80", "--duration", "0.5", "--warmup", "0.1", "--rate", "200000")
    assert done.returncode == 0, done.stderr
    assert "the hub fell behind:" in done.stdout
    assert "of 200,000 msg/s offered; try a lower --rate" in done.stdout


def test_bad_broker_address_is_refused_before_the_run() -> None:
    done = _script("--reference", "--mqtt", "nohost")
    assert done.returncode == 2
    assert "an MQTT broker is HOST:PORT, not 'nohost'" in done.stderr
