#!/usr/bin/env python3
"""duplex chat with a conversation of 100,000 messages: open, page, jump, memory.

Fills a local store (the client's SQLite file) with N messages between alice and
bob, a mix of one-line and wrapped multi-line messages in both directions, then runs
the real :class:`~duplex.tui.ChatApp` headless over a real (never started, so
offline) :class:`~duplex.client.Client` on that file and measures:

* **open**: ``open_conversation("bob")`` until its first screen is drawn (reading
  the conversation's keys from the index, laying out one screen);
* **page**: one Page Up or Page Down, from the newest message back through
  ``--pages`` screens, then Home and ``--pages`` screens down from the oldest; as the
  view's own work (re-anchor, lay out, draw every line of the screen: the cost that
  grows with the length of a conversation if anything does) and as a key press
  through Textual's pilot (key dispatch, compositing and all);
* **memory**: resident set size after the fill, after opening, and after paging
  through (the caches are bounded, so it must stay flat).

Examples::

    python benchmarks/tui_scroll.py                        # 100,000 messages
    python benchmarks/tui_scroll.py -n 1000000 --pages 200 --json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from duplex.client import Client
from duplex.client.core import new_message_id
from duplex.client.local import LocalStore
from duplex.config import ClientConfig

__all__ = ["fill", "main", "measure"]

_TEXT = (
    "the hub stores it durably and the peer gets it once on screen whatever the path "
    "direct relayed stored queue backoff ticket fingerprint heartbeat grace presence"
)
WORDS = _TEXT.split(" ")


def fill(path: Path, messages: int) -> float:
    """Writes ``messages`` alternating messages with bob (1 a minute); returns seconds."""
    store = LocalStore(path)
    start = time.perf_counter()
    base = 1_700_000_000_000
    store.begin()
    for i in range(messages):
        ts = base + i * 60_000
        words = 3 + (i * 7919) % 40  # 3..42 words: one to three lines at 120 columns
        body = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))
        if i % 10 == 9:
            body += "\nand a second line"
        if i % 2:
            store.add_incoming("bob", new_message_id(ts), body, ts, "relayed")
        else:
            store.add_outgoing("bob", body, new_message_id(ts), ts)
            store.set_state(new_message_id(ts), "delivered", "direct")
        if i % 10_000 == 9_999:
            store.commit()
            store.begin()
    store.add_incoming("carol", new_message_id(base), "hi", base + messages * 60_000, "relayed")
    store.commit()
    # All read: the view opens at the newest message (unread ones would open it at the
    # unread marker, which for a fresh 100,000 is the oldest message).
    store.set_read_marker("bob", (base + messages * 60_000, 2**62))
    store.close()
    return time.perf_counter() - start


def _rss() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 2**20


def _summary(samples: list[float], cpu: list[float] | None = None) -> dict[str, float]:
    ordered = sorted(samples)
    row = {
        "mean_ms": statistics.fmean(ordered) * 1000,
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "max_ms": ordered[-1] * 1000,
    }
    if cpu:
        spent = sorted(cpu)
        row["cpu_p50_ms"] = spent[len(spent) // 2] * 1000
        row["cpu_p99_ms"] = spent[min(len(spent) - 1, int(len(spent) * 0.99))] * 1000
    return row


async def measure(data_dir: Path, *, pages: int, size: tuple[int, int]) -> dict[str, Any]:
    """Runs the app over ``data_dir/alice/local.db`` and returns the figures."""
    from duplex.tui import ChatApp, ChatBackend
    from duplex.tui.chat import ChatScreen
    from duplex.tui.log import MessageLog

    class NoTokens:
        def load(self, config: ClientConfig) -> str:
            return ""

        def save(self, config: ClientConfig, token: str) -> None:
            return

        def forget(self, config: ClientConfig) -> None:
            return

    async def no_client(config: ClientConfig, password: str | None) -> Any:
        raise RuntimeError("the benchmark makes its own client")

    from duplex.client import PinStore

    rss_before = _rss()
    # Port 9 (discard) is never dialled: the client is not started.
    client = Client(("127.0.0.1", 9), "alice", data_dir=data_dir / "alice", reconnect=False)
    config = ClientConfig(user="alice", data_dir=str(data_dir))
    backend = ChatBackend(data_dir / "duplex.toml", NoTokens(), PinStore(data_dir / "pins"),
                          no_client)  # fmt: skip
    app = ChatApp(backend, config, client=client, notify=())
    results: dict[str, Any] = {}
    try:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, ChatScreen)
            view = screen.query_one(MessageLog)
            height = view.size.height

            def draw() -> None:
                for y in range(height):
                    view.render_line(y)

            start, cpu = time.perf_counter(), time.thread_time()
            screen.open_conversation("bob")
            draw()
            results["open_ms"] = (time.perf_counter() - start) * 1000
            results["open_cpu_ms"] = (time.thread_time() - cpu) * 1000
            assert screen.timeline is not None
            results["messages"] = len(screen.timeline)
            await pilot.pause()
            results["rss_open_mb"] = _rss()

            up: list[float] = []
            up_cpu: list[float] = []
            for _ in range(pages):
                start, cpu = time.perf_counter(), time.thread_time()
                view.action_page(-1)
                draw()
                up.append(time.perf_counter() - start)
                up_cpu.append(time.thread_time() - cpu)
            results["after_page_ups_top"] = view.top
            assert view.top < len(screen.timeline) - pages, "Page Up did not move the view"
            start = time.perf_counter()
            view.action_top()
            draw()
            results["home_ms"] = (time.perf_counter() - start) * 1000
            down: list[float] = []
            down_cpu: list[float] = []
            for _ in range(pages):
                start, cpu = time.perf_counter(), time.thread_time()
                view.action_page(1)
                draw()
                down.append(time.perf_counter() - start)
                down_cpu.append(time.thread_time() - cpu)
            middle = len(screen.timeline) // 2
            start = time.perf_counter()
            view.jump_to(middle)
            draw()
            results["jump_middle_ms"] = (time.perf_counter() - start) * 1000
            results["page_up"] = _summary(up, up_cpu)
            results["page_down"] = _summary(down, down_cpu)
            results["messages_shown_from"] = view.shown[0]

            keys: list[float] = []
            view.action_bottom()
            await pilot.pause()
            for key in ["pageup"] * (pages // 2) + ["pagedown"] * (pages // 2):
                start = time.perf_counter()
                await pilot.press(key)
                keys.append(time.perf_counter() - start)
            results["key_press_pilot"] = _summary(keys)
            idle: list[float] = []
            for _ in range(pages // 2):
                start = time.perf_counter()
                await pilot.press("f12")  # bound to nothing: the pilot's own waiting
                idle.append(time.perf_counter() - start)
            results["no_op_key_pilot"] = _summary(idle)
            results["cached_blocks"] = screen.timeline.cached_blocks
            results["rss_after_paging_mb"] = _rss()
            assert not screen.errors, screen.errors
    finally:
        await client.close()
    results["rss_before_open_mb"] = rss_before
    return results


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=300, help="Page Ups, then Page Downs.")
    parser.add_argument("--size", default="120x40", help="Terminal COLUMNSxROWS.")
    parser.add_argument("--json", action="store_true", help="One JSON object.")
    args = parser.parse_args(argv)
    columns, rows = (int(part) for part in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="tui-scroll-") as tmp:
        data_dir = Path(tmp)
        fill_s = fill(data_dir / "alice" / "local.db", args.messages)
        db_mb = (data_dir / "alice" / "local.db").stat().st_size / 2**20
        results = asyncio.run(measure(data_dir, pages=args.pages, size=(columns, rows)))
    results.update(fill_s=fill_s, db_mb=db_mb, size=args.size, pages=args.pages)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"duplex chat, {results['messages']:,} messages with bob, terminal {args.size}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"  fill (not the UI)     {fill_s:7.2f} s   local.db {db_mb:.0f} MiB")
    print(f"  open conversation     {results['open_ms']:7.1f} ms  (CPU "
          f"{results['open_cpu_ms']:.1f} ms; keys + first screen)")  # fmt: skip
    labels = {
        "page_up": "page up (view)",
        "page_down": "page down (view)",
        "key_press_pilot": "PgUp/PgDn (pilot)",
        "no_op_key_pilot": "no-op key (pilot)",
    }
    for name, label in labels.items():
        row = results[name]
        line = (f"  {label:<20}  p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                f"max {row['max_ms']:6.2f} ms")  # fmt: skip
        if "cpu_p50_ms" in row:
            line += f"   CPU p50 {row['cpu_p50_ms']:5.2f} p99 {row['cpu_p99_ms']:5.2f} ms"
        print(line)
    print(f"  home (oldest)         {results['home_ms']:7.2f} ms")
    print(f"  jump to the middle    {results['jump_middle_ms']:7.2f} ms")
    print(f"  memory (RSS)          {results['rss_before_open_mb']:.0f} MiB before open, "
          f"{results['rss_open_mb']:.0f} after, {results['rss_after_paging_mb']:.0f} after "
          f"{2 * args.pages} pages ({results['cached_blocks']} blocks cached)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
