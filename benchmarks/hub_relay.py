"""Messages per second through the hub, durably stored and delivered, and their latency.

    .venv/bin/python benchmarks/hub_relay.py                 # 100 pairs, closed loop, then
                                                             # open loop at half that rate
    .venv/bin/python benchmarks/hub_relay.py --pairs 10 --window 8 --duration 10 --json out.json
    .venv/bin/python benchmarks/hub_relay.py --window 32 --reference  # and mosquitto, same run
    .venv/bin/python benchmarks/hub_relay.py --reference --repeat 5   # medians of 5 alternations
    .venv/bin/python benchmarks/hub_relay.py --client python          # the load from Python

The load comes from a C client by default (``benchmarks/reference/hub_pairs.c``, built
on demand, as the MQTT reference's client is): the real protocol, the same users,
devices, messages and acks as the Python clients (``--client python``, through the
sans-I/O session of :mod:`duplex.protocol.hub`), at about half their CPU per message,
so that more of the machine is left to the hub and the comparison with the broker
is like with like.

The hub runs as its own process (``duplex serve``, SQLite with synchronous=FULL: every
message is fsync'd, in group commits, before the sender hears ``stored``), pinned to
CPU 0 with all its threads; its store's applier process (which writes the journal to
the tables) and the clients run on the other CPUs, so the client load is in the same
run and measured (its CPU use is printed). Latency is from
the send to the recipient's receipt of the message.

``--reference`` then drives an MQTT broker (mosquitto, ``--mqtt``, default
``$DUPLEX_TEST_MQTT`` or 127.0.0.1:1883) the same way with a C client
(``benchmarks/reference/mqtt_pairs.c``, built on demand): the same pairs, window and
payload, QoS 1, the next publish on the broker's PUBACK as the next duplex message on
``stored``; the client on the clients' CPU, the broker where the OS puts it. It prints
the broker's figures and duplex's rate as a ratio of them. The broker keeps nothing on
disk; duplex fsyncs every message before it says ``stored``.

Each line also gives the server's CPU time per message (the hub's and its applier's
over the measured seconds; the broker's, when it runs here, over the whole run): on a
shared machine it moves less from run to run than the rate does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from duplex.bench.chat import RelayResult, register_users, run_relay, run_relay_native
from duplex.bench.machine import process_cpu_seconds, thread_cpu_seconds
from duplex.bench.reference import parse_broker, run_mqtt_pairs
from duplex.bench.spec import BenchError
from duplex.testing.hubs import HubProcess

CLIENTS = {
    "c": "C (benchmarks/reference/hub_pairs.c), like the MQTT reference's",
    "python": "Python (the sans-I/O session's handshake, then lean frame handling)",
}


def _pin(cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        pass


def _pin_process(pid: int, cpus: set[int]) -> None:
    """Pins every thread of ``pid`` (``sched_setaffinity(pid)`` moves only its main
    thread; the store's writer threads, started earlier, would stay free)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except OSError:  # the thread ended meanwhile
            pass


def _pin_hub(pid: int, cpus: list[int]) -> None:
    """The hub on the first CPU, its store's applier process with the clients on the
    others. (Left to the kernel, the applier mostly runs where the hub wakes it, on
    the hub's CPU, which leaves the other CPU's spare time unused.)"""
    import psutil

    _pin_process(pid, {cpus[0]})
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            _pin_process(child.pid, set(cpus[1:]))


def _by_thread(snapshots: list[dict[str, float]], result: RelayResult) -> dict[str, float]:
    """Each hub thread's (and applier's) share of a CPU over the measured seconds,
    from the two snapshots taken at their start and end: the main thread is the
    ``event loop``, the store's threads and its applier process are named
    (``duplex-journal``, ...). Shares below 1% are left out."""
    if len(snapshots) < 2 or not result.server_cpu:
        return {}
    start, end = snapshots
    spent = {name: end[name] - start.get(name, 0.0) for name in end}
    total = sum(spent.values())
    if total <= 0:
        return {}
    shares = {
        ("event loop" if name == "main" else name): t / total * result.server_cpu
        for name, t in spent.items()
    }
    return {name: v for name, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v >= 0.01}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a positive whole number, not {text!r}")
    return value


def _broker(text: str) -> str:
    try:
        parse_broker(text)
    except BenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _line(label: str, result: RelayResult) -> str:
    lat = result.latency_ms
    return (
        f"{label:<32} {result.per_second:>10,.0f} msg/s   p50 {lat['p50']:7.2f} ms   "
        f"p99 {lat['p99']:7.2f} ms   max {lat['max']:8.2f} ms   errors {result.errors}   "
        f"client CPU {result.generator_cpu:4.0%}   hub CPU {result.server_cpu or 0.0:4.0%}"
        + (f" = {result.server_us:.0f} us/msg" if result.server_us else "")
        # Left in flight by the run before (replayed at login): acked, not counted.
        + (f"   stale {result.stale}" if result.stale else "")
    )


async def _run(
    args: argparse.Namespace,
    address: tuple[str, int],
    cpus: list[int],
    *,
    window: int = 1,
    rate: float | None = None,
    server_cpu: Callable[[], float],
    resume: dict[str, int],
) -> RelayResult:
    """One run with the chosen load generator."""
    if args.client == "python":
        return await run_relay(
            address, pairs=args.pairs, window=window, payload=args.payload,
            duration=args.duration, warmup=args.warmup, rate=rate, server_cpu=server_cpu,
            resume=resume,
        )  # fmt: skip
    return await asyncio.to_thread(
        run_relay_native, address, pairs=args.pairs, window=window, payload=args.payload,
        duration=args.duration, warmup=args.warmup, rate=rate, server_cpu=server_cpu,
        resume=resume, cpu=cpus[1] if len(cpus) >= 2 and args.pin else None,
    )  # fmt: skip


def _build() -> str:
    """How the hub's hot path runs: compiled by ``make`` (mypyc) or plain Python (the
    hub process imports duplex from the same place as this script)."""
    import duplex.hub.core

    if Path(str(duplex.hub.core.__file__)).suffix == ".so":
        return "compiled hot path (mypyc)"
    return "plain Python (`make compile` builds the hot path: about a fifth less CPU)"


async def main(args: argparse.Namespace) -> list[dict[str, object]]:
    cpus = sorted(os.sched_getaffinity(0))
    print(f"hub: {_build()}")
    print(f"clients: {CLIENTS[args.client]}")
    mqtt_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        hub = HubProcess(
            Path(tmp) / "hub",
            args=[
                "--synchronous",
                args.synchronous,
                "--max-connections",
                "100000",
                "--log-level",
                "warning",
            ],
            # 2 x pairs registrations from one address: lift the per-address budget.
            env={"DUPLEX_HUB_IP_LOGIN_BURST": "100000", "DUPLEX_HUB_IP_LOGIN_RATE": "100000"},
        )
        try:
            if len(cpus) >= 2 and args.pin:
                _pin_hub(hub.proc.pid, cpus)
                _pin(set(cpus[1:]))
            users = [f"br{i}" for i in range(args.pairs)] + [f"bs{i}" for i in range(args.pairs)]
            await register_users(hub.address, users)
            results = []

            snapshots: list[dict[str, float]] = []  # per thread, at each hub_cpu()

            def hub_cpu() -> float:
                snapshots.append(thread_cpu_seconds(hub.proc.pid))
                return process_cpu_seconds(hub.proc.pid, descendants=True)

            def report(label: str, result: RelayResult, **fields: object) -> None:
                print(_line(label, result))
                split = _by_thread(snapshots[-2:], result)
                if split:
                    print(
                        "  hub CPU by thread: "
                        + ", ".join(f"{k} {v:.0%}" for k, v in split.items())
                    )
                results.append({**fields, **result.as_dict(), "hub_threads": split})

            resume: dict[str, int] = {}  # each device's last sequence, across the runs
            closed_runs: list[RelayResult] = []
            for i in range(args.repeat):
                run = f" ({i + 1}/{args.repeat})" if args.repeat > 1 else ""
                closed = await _run(
                    args, hub.address, cpus, window=args.window, server_cpu=hub_cpu,
                    resume=resume,
                )  # fmt: skip
                report(f"closed loop, window {args.window}{run}", closed, mode="closed", run=i + 1)
                closed_runs.append(closed)
                if args.reference:  # alternating, so both see the same machine
                    mqtt = await _mqtt(args, cpus)
                    print(_mqtt_line(f"mosquitto QoS 1, window {args.window}{run}", mqtt))
                    mqtt_runs.append(mqtt)
            closed_rate = statistics.median(c.per_second for c in closed_runs)
            if args.repeat > 1:
                rates = [c.per_second for c in closed_runs]
                print(
                    f"closed loop, median of {args.repeat}: {closed_rate:,.0f} msg/s "
                    f"(runs {min(rates):,.0f} to {max(rates):,.0f})"
                )
            rate = args.rate or closed_rate / 2
            opened = await _run(
                args, hub.address, cpus, rate=rate, server_cpu=hub_cpu, resume=resume
            )
            report(f"open loop at {rate:,.0f}/s", opened, mode="open")
            if opened.per_second < 0.95 * rate:
                # Latency then measures a growing queue, not the hub at that rate.
                print(
                    f"  the hub fell behind: {opened.per_second:,.0f} of {rate:,.0f} msg/s "
                    "offered; try a lower --rate"
                )
        finally:
            hub.kill()
    if mqtt_runs:
        reference = statistics.median(float(m["msgs_per_s"]) for m in mqtt_runs)
        ratio = closed_rate / reference if reference else 0.0
        if args.repeat > 1:
            print(f"mosquitto, median of {args.repeat}: {reference:,.0f} msg/s")
            print(f"duplex / mosquitto QoS 1, closed loop: {ratio:.2f} (medians)")
        else:
            print(f"duplex / mosquitto QoS 1, closed loop: {ratio:.2f}")
        hub_us = [c.server_us for c in closed_runs if c.server_us]
        broker_us = [float(m["broker_us"]) for m in mqtt_runs if "broker_us" in m]
        if hub_us and broker_us:
            mine, theirs = statistics.median(hub_us), statistics.median(broker_us)
            print(
                f"CPU per message: duplex {mine:.0f} us, mosquitto {theirs:.0f} us "
                f"({mine / theirs:.1f}x)"
            )
        for i, mqtt in enumerate(mqtt_runs):
            results.append({"mode": "mosquitto-qos1", "run": i + 1, **mqtt, "duplex_ratio": ratio})
    return results


async def _mqtt(args: argparse.Namespace, cpus: list[int]) -> dict[str, Any]:
    pin = cpus[1] if len(cpus) >= 2 and args.pin else None
    return await asyncio.to_thread(
        run_mqtt_pairs, args.mqtt, pairs=args.pairs, window=args.window,
        payload=args.payload, duration=args.duration, warmup=args.warmup, cpu=pin,
    )  # fmt: skip


def _mqtt_line(label: str, mqtt: dict[str, Any]) -> str:
    broker = f", broker {mqtt['broker_us']:.0f} us/msg" if "broker_us" in mqtt else ""
    return (
        f"{label:<32} {mqtt['msgs_per_s']:>10,.0f} msg/s   p50 {mqtt['p50_ms']:7.2f} ms   "
        f"p99 {mqtt['p99_ms']:7.2f} ms   max {mqtt['max_ms']:8.2f} ms   "
        f"(C client, CPU {mqtt['cpu']:4.0%}{broker})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="c",
        help="the load generator: c (default; needs a C compiler) or python",
    )
    parser.add_argument("--window", type=int, default=1, help="messages in flight per pair")
    parser.add_argument("--payload", type=int, default=64, help="bytes per message body")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument(
        "--repeat",
        type=_positive,
        default=1,
        help="closed-loop runs (alternating with the reference), summed up by their "
        "median: on a shared machine one run can be 10%% off the next",
    )
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open-loop rate (default: half the closed-loop rate)",
    )
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also drive an MQTT broker the same way (C client) and give the ratio",
    )
    parser.add_argument(
        "--mqtt",
        default=os.environ.get("DUPLEX_TEST_MQTT", "127.0.0.1:1883"),
        metavar="HOST:PORT",
        type=_broker,
        help="the broker for --reference (default: $DUPLEX_TEST_MQTT or 127.0.0.1:1883)",
    )
    parser.add_argument("--json", default="", help="write the results to this file")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let the hub and the clients share both CPUs (default: hub on CPU 0)",
    )
    parsed = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        out = runner(main(parsed))
    except BenchError as exc:
        sys.exit(f"hub_relay: {exc}")
    if parsed.json:
        Path(parsed.json).write_text(json.dumps(out, indent=2))
