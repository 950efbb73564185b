#!/usr/bin/env python3
"""Echo throughput of one concurrency model, or of all of them: requests/s, p50, p99.

The simple benchmark of issue #2, built on :mod:`duplex.bench` (the same generator,
server handling and reports as ``duplex bench echo``). The server runs in its own
process pinned to CPU 0 and the generator on the other CPUs (when there are two or
more); every echoed byte is checked.

Examples::

    python benchmarks/echo_throughput.py --model uvloop -c 100 --size 64 --duration 5
    python benchmarks/echo_throughput.py --all-models            # what `make bench` runs
    python benchmarks/echo_throughput.py --all-models --reference --csv bench.csv
"""

from __future__ import annotations

import argparse
import sys

from duplex.bench.live import LiveLine
from duplex.bench.matrix import ServerChoice, run_series
from duplex.bench.report import append_csv, format_metadata, format_table, reference_ratios
from duplex.bench.result import RunResult
from duplex.bench.servers import REFERENCE_LABEL
from duplex.bench.spec import BenchError, LoadSpec
from duplex.errors import DuplexError
from duplex.server.base import model_names

__all__ = ["ALL_MODELS_CONNECTIONS", "ALL_MODELS_SIZE", "main"]

ALL_MODELS_CONNECTIONS = (1, 10, 100)
"""Connection counts of ``--all-models``."""

ALL_MODELS_SIZE = 64
"""Payload of ``--all-models``, in bytes."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Echo throughput and latency of duplex's concurrency models.",
        epilog="example: %(prog)s --model uvloop -c 100 --size 64 --duration 5",
    )
    parser.add_argument("--model", "-m", default="epoll", help="model (default: epoll)")
    parser.add_argument(
        "--all-models",
        action="store_true",
        help=f"every model at {', '.join(map(str, ALL_MODELS_CONNECTIONS))} connections, "
        f"{ALL_MODELS_SIZE} B, as a table",
    )
    parser.add_argument("-c", "--connections", type=int, default=10, help="default: 10")
    parser.add_argument("--size", "-s", type=int, default=64, help="payload bytes (default: 64)")
    parser.add_argument(
        "--duration", "-d", type=float, default=3.0, help="seconds measured (default: 3)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds not measured first (default: 1)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="seconds before a request counts as a timeout (default: 2)",
    )
    parser.add_argument("--workers", "-w", type=int, default=None, help="pool/prefork workers")
    parser.add_argument(
        "--reference", action="store_true", help="also run the C epoll server and give ratios"
    )
    parser.add_argument("--csv", default=None, metavar="FILE", help="append one row per run")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and generator")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        spec = LoadSpec(
            connections=args.connections,
            size=args.size,
            duration=args.duration,
            warmup=args.warmup,
            timeout=args.timeout,
        )
        if args.all_models:
            servers = [ServerChoice.for_model(m, args.workers) for m in model_names()]
            connections: list[int] = list(ALL_MODELS_CONNECTIONS)
            sizes = [ALL_MODELS_SIZE]
        else:
            servers = [ServerChoice.for_model(args.model, args.workers)]
            connections, sizes = [args.connections], [args.size]
        if args.reference:
            servers.insert(0, ServerChoice.for_reference())

        def show(result: RunResult) -> None:
            fails = result.error_count + result.timeouts + result.connect_failed
            print(
                f"{result.label:<10} c={result.connections:<4} {result.size} B  "
                f"{result.throughput:>11,.0f} requests/s  p50 {result.latency['p50']:.3f} ms  "
                f"p99 {result.latency['p99']:.3f} ms" + (f"  ({fails} failed)" if fails else ""),
                flush=True,
            )

        def failed(title: str, exc: BenchError) -> None:
            print(f"{title}: failed: {exc}", file=sys.stderr, flush=True)

        results = run_series(
            servers,
            spec,
            connections=connections,
            sizes=sizes,
            pin=not args.no_pin,
            live=LiveLine(),
            on_result=show,
            on_error=failed,
        )
    except DuplexError as exc:
        print(f"echo_throughput: {exc}", file=sys.stderr)
        return 1
    ratios = reference_ratios(results, REFERENCE_LABEL)
    cpu_ratios = reference_ratios(results, REFERENCE_LABEL, "efficiency")
    print()
    print(format_table(results, ratios, cpu_ratios))
    if results:
        print()
        print(format_metadata(results[0].metadata))
    for result in results:
        for warning in result.warnings:
            # The table marks saturation and a busy machine with "!".
            if "saturated" not in warning and "machine was busy" not in warning:
                print(f"warning: {result.label} c={result.connections}: {warning}")
    if args.csv:
        append_csv(args.csv, results, ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
