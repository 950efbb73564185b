"""Messages per second through the hub, durably stored and delivered, and their latency.

    .venv/bin/python benchmarks/hub_relay.py                 # 100 pairs, closed loop, then
                                                             # open loop at half that rate
    .venv/bin/python benchmarks/hub_relay.py --pairs 10 --window 8 --duration 10 --json out.json
    .venv/bin/python benchmarks/hub_relay.py --window 32 --reference  # and mosquitto, same run

The hub runs as its own process (``duplex serve``, SQLite with synchronous=FULL: every
message is fsync'd, in group commits, before the sender hears ``stored``), pinned to
CPU 0; the clients run here, pinned to the other CPUs, so the client load is in the
same run and measured (its CPU use is printed). Latency is from the send to the
recipient's receipt of the message.

``--reference`` then drives an MQTT broker (mosquitto, ``--mqtt``, default
``$DUPLEX_TEST_MQTT`` or 127.0.0.1:1883) the same way with a C client
(``benchmarks/reference/mqtt_pairs.c``, built on demand): the same pairs, window and
payload, QoS 1, the next publish on the broker's PUBACK as the next duplex message on
``stored``; the client on the clients' CPU, the broker where the OS puts it. It prints
the broker's figures and duplex's rate as a ratio of them. The broker keeps nothing on
disk; duplex fsyncs every message before it says ``stored``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from duplex.bench.chat import RelayResult, register_users, run_relay
from duplex.bench.machine import process_cpu_seconds
from duplex.bench.reference import parse_broker, run_mqtt_pairs
from duplex.bench.spec import BenchError
from duplex.testing.hubs import HubProcess


def _pin(cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        pass


def _broker(text: str) -> str:
    try:
        parse_broker(text)
    except BenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _line(label: str, result: RelayResult) -> str:
    lat = result.latency_ms
    return (
        f"{label:<28} {result.per_second:>10,.0f} msg/s   p50 {lat['p50']:7.2f} ms   "
        f"p99 {lat['p99']:7.2f} ms   max {lat['max']:8.2f} ms   errors {result.errors}   "
        f"client CPU {result.generator_cpu:4.0%}   hub CPU {result.server_cpu or 0.0:4.0%}"
    )


async def main(args: argparse.Namespace) -> list[dict[str, object]]:
    cpus = sorted(os.sched_getaffinity(0))
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
                os.sched_setaffinity(hub.proc.pid, {cpus[0]})
                _pin(set(cpus[1:]))
            users = [f"br{i}" for i in range(args.pairs)] + [f"bs{i}" for i in range(args.pairs)]
            await register_users(hub.address, users)
            results = []

            def hub_cpu() -> float:
                return process_cpu_seconds(hub.proc.pid)

            closed = await run_relay(
                hub.address, pairs=args.pairs, window=args.window, payload=args.payload,
                duration=args.duration, warmup=args.warmup, server_cpu=hub_cpu,
            )  # fmt: skip
            print(_line(f"closed loop, window {args.window}", closed))
            results.append({"mode": "closed", **closed.as_dict()})
            rate = args.rate or closed.per_second / 2
            opened = await run_relay(
                hub.address, pairs=args.pairs, payload=args.payload, duration=args.duration,
                warmup=args.warmup, rate=rate, server_cpu=hub_cpu,
            )  # fmt: skip
            print(_line(f"open loop at {rate:,.0f}/s", opened))
            if opened.per_second < 0.95 * rate:
                # Latency then measures a growing queue, not the hub at that rate.
                print(
                    f"  the hub fell behind: {opened.per_second:,.0f} of {rate:,.0f} msg/s "
                    "offered; try a lower --rate"
                )
            results.append({"mode": "open", **opened.as_dict()})
        finally:
            hub.kill()
    if args.reference:
        pin = cpus[1] if len(cpus) >= 2 and args.pin else None
        mqtt = await asyncio.to_thread(
            run_mqtt_pairs, args.mqtt, pairs=args.pairs, window=args.window,
            payload=args.payload, duration=args.duration, warmup=args.warmup, cpu=pin,
        )  # fmt: skip
        print(
            f"{'mosquitto QoS 1, window ' + str(args.window):<28} {mqtt['msgs_per_s']:>10,.0f}"
            f" msg/s   p50 {mqtt['p50_ms']:7.2f} ms   p99 {mqtt['p99_ms']:7.2f} ms   "
            f"max {mqtt['max_ms']:8.2f} ms   (C client, CPU {mqtt['cpu']:4.0%})"
        )
        ratio = closed.per_second / mqtt["msgs_per_s"] if mqtt["msgs_per_s"] else 0.0
        print(f"duplex / mosquitto QoS 1, closed loop: {ratio:.2f}")
        results.append({"mode": "mosquitto-qos1", **mqtt, "duplex_ratio": ratio})
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--window", type=int, default=1, help="messages in flight per pair")
    parser.add_argument("--payload", type=int, default=64, help="bytes per message body")
    parser.add_argument("--duration", type=float, default=5.0)
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
