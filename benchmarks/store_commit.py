#!/usr/bin/env python3
"""Durable messages per second: group commit against one commit per message.

Runs ``store_message`` from N concurrent senders (a closed loop: each sends its next
message when the previous one is acknowledged, as a hub connection does) for a few
seconds on each backend, once with group commit (the default: every queued request in
one transaction) and once with ``max_batch=1`` (one transaction, one fsync, per
message), and prints messages/s, messages per commit and the latency of
``store_message``. SQLite runs with ``synchronous=FULL`` (the default: fsync before the
ack) and ``NORMAL`` (no fsync at commit; can lose the last acks on a power cut).
PostgreSQL runs when the server in ``$DUPLEX_TEST_PG`` (default trust auth on
127.0.0.1:5432, database ``test``) answers, in a schema made for the run and dropped
after it.

With ``--relay`` each sender does what one relayed message costs the hub's store:
``store_message``, the recipient's ``ack`` (which appends the receipt), then the
sender's ``ack`` of that receipt. The CPU column is this process's per message (the
store's threads and the loop that drives them; not PostgreSQL's server). Message
ids are UUIDv7, as the client makes them.

Examples::

    python benchmarks/store_commit.py                      # short run, every backend
    python benchmarks/store_commit.py -c 1000 -d 5 --no-pg
    python benchmarks/store_commit.py --relay -c 100 -d 4 --no-pg
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from duplex.client.core import new_message_id
from duplex.errors import DuplexError
from duplex.store.base import NewMessage, Store
from duplex.store.sqlite import SqliteStore

__all__ = ["Result", "main", "measure"]

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


class Result:
    """One row of the table."""

    def __init__(
        self,
        label: str,
        messages: int,
        seconds: float,
        commits: int,
        lat: list[float],
        cpu: float = 0.0,
    ):
        self.label = label
        self.rate = messages / seconds
        self.per_commit = messages / max(1, commits)
        self.cpu_us = cpu / messages * 1e6 if messages else 0.0
        lat.sort()
        self.p50 = lat[len(lat) // 2] * 1000 if lat else 0.0
        self.p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0


async def measure(
    label: str,
    factory: Callable[[], Store],
    *,
    concurrency: int,
    recipients: int,
    body: str,
    duration: float,
    relay: bool = False,
) -> Result:
    """Opens a store, runs the closed loop for ``duration`` seconds, closes it.

    Args:
        label: the row's name.
        factory: makes the unopened store.
        concurrency: senders, each with one message in flight.
        recipients: distinct mailboxes written to.
        body: each message's text.
        duration: seconds measured (after a short warm-up).
        relay: after each message, the recipient's ack and the sender's ack of the
            receipt, as for a relayed message (latency then covers all three).

    Returns:
        The row.
    """
    store = factory()
    await store.open()
    counted = False
    stop = False
    sent = 0
    latencies: list[float] = []

    async def sender(k: int) -> None:
        nonlocal sent
        i = 0
        while not stop:
            recipient = f"r{(k + i) % recipients}"
            message = NewMessage(f"s{k}", recipient, new_message_id(), body, i)
            start = time.perf_counter()
            stored = await store.store_message(message)
            if relay:
                for receipt in await store.ack(recipient, "d", stored.entry.seq, i):
                    await store.ack(receipt.user, "d", receipt.seq, i)
            if counted:
                latencies.append(time.perf_counter() - start)
                sent += 1
            i += 1

    try:
        tasks = [asyncio.create_task(sender(k)) for k in range(concurrency)]
        await asyncio.sleep(min(0.3, duration / 3))  # warm-up: caches, first pages
        commits0 = int(getattr(store, "commit_count", 0))
        counted = True
        start = time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.sleep(duration)
        counted = False
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        commits = int(getattr(store, "commit_count", 0)) - commits0
        stop = True
        await asyncio.gather(*tasks)
    finally:
        await store.close()
    return Result(label, sent, elapsed, commits, latencies, cpu)


async def _pg_schema(dsn: str, sql: str) -> str | None:
    try:
        import asyncpg

        conn = await asyncpg.connect(dsn, timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    return None


def _sqlite(path: Path, synchronous: str, batch: int) -> Callable[[], Store]:
    return lambda: SqliteStore(path, synchronous=synchronous, max_batch=batch)


def _postgres(dsn: str, schema: str, batch: int) -> Callable[[], Store]:
    from duplex.store.postgres import PostgresStore

    return lambda: PostgresStore(dsn, schema=schema, max_batch=batch)


async def _run(args: argparse.Namespace) -> list[Result]:
    common: dict[str, Any] = {
        "concurrency": args.concurrency,
        "recipients": args.recipients,
        "body": "x" * args.size,
        "duration": args.duration,
        "relay": args.relay,
    }
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="duplex-bench-", dir=args.dir) as tmp:
        for sync in ("FULL", "NORMAL"):
            for batch, mode in ((8192, "group commit"), (1, "per message")):
                path = Path(tmp) / f"{sync}-{batch}.db"
                label = f"SQLite {sync:<6}  {mode}"
                print(f"  {label} ...", file=sys.stderr, flush=True)
                results.append(await measure(label, _sqlite(path, sync, batch), **common))
    if args.no_pg:
        return results
    schema = f"duplex_bench_{os.getpid()}"
    why = await _pg_schema(args.pg, "SELECT 1")
    if why is not None:
        print(f"  PostgreSQL skipped: not reachable at {args.pg} ({why})", file=sys.stderr)
        return results
    try:
        for batch, mode in ((8192, "group commit"), (1, "per message")):
            label = f"PostgreSQL      {mode}"
            print(f"  {label} ...", file=sys.stderr, flush=True)
            await _pg_schema(args.pg, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            results.append(await measure(label, _postgres(args.pg, schema, batch), **common))
    finally:
        await _pg_schema(args.pg, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return results


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the table. Returns the exit status."""
    parser = argparse.ArgumentParser(
        description="Durable messages/s of the stores: group commit vs one commit per message.",
        epilog="example: %(prog)s -c 200 -d 2",
    )
    parser.add_argument("-c", "--concurrency", type=int, default=200, help="default: 200")
    parser.add_argument("-r", "--recipients", type=int, default=100, help="default: 100")
    parser.add_argument("-s", "--size", type=int, default=100, help="body bytes (default: 100)")
    parser.add_argument("-d", "--duration", type=float, default=1.5, help="seconds (default: 1.5)")
    parser.add_argument("--dir", default=None, help="where the SQLite files go (default: tmp)")
    parser.add_argument("--pg", default=os.environ.get("DUPLEX_TEST_PG", DEFAULT_PG))
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    parser.add_argument(
        "--relay", action="store_true", help="each message also acked by both sides"
    )
    args = parser.parse_args(argv)
    what = "store_message + 2 acks" if args.relay else "store_message"
    print(
        f"{what}, {args.concurrency} senders in a closed loop, {args.recipients} "
        f"mailboxes, {args.size}-byte bodies, {args.duration:g} s per row",
        file=sys.stderr,
    )
    try:
        results = asyncio.run(_run(args))
    except DuplexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    header = (
        f"{'backend':<30} {'msgs/s':>9} {'msgs/commit':>12} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'CPU us/msg':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.label:<30} {r.rate:>9.0f} {r.per_commit:>12.1f} {r.p50:>8.2f} {r.p99:>8.2f}"
            f" {r.cpu_us:>11.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
