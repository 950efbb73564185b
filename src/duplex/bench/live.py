"""A live progress line during runs (rich), shown only on a terminal.

The line goes to stderr and disappears when the run ends (``transient``), so stdout
keeps only the summaries and stays fit for a pipe. It is off when stderr is not a
terminal, and with ``--quiet``.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from duplex.bench.runner import Progress

__all__ = ["LiveLine"]


class LiveLine:
    """Shows one updating line per run while it lasts.

    Args:
        enabled: False turns it into a no-op; None shows it when stderr is a terminal.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    @contextlib.contextmanager
    def run(self, title: str) -> Iterator[Progress | None]:
        """Shows the line for one run; yields the callback to pass to ``run_load``.

        Yields:
            A progress callback, or None when the line is off.
        """
        if not self.enabled:
            yield None
            return
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        # (time, answers in the window) whenever the total changed: the rate is taken
        # over the last two seconds of these, so it neither jumps nor lags much.
        samples: collections.deque[tuple[float, int]] = collections.deque()

        def render(info: dict[str, Any]) -> Text:
            now = time.monotonic()
            count = int(info["in_window"])
            if info["measuring"] and (not samples or samples[-1][1] != count):
                samples.append((now, count))
            while len(samples) > 2 and now - samples[0][0] > 2.0:
                samples.popleft()
            rate = 0.0
            if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
                rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
            phase = "measuring" if info["measuring"] else "warm-up"
            text = (
                f"{title}  {phase} {info['elapsed']:.1f}/{info['limit']:.1f} s  "
                f"{rate:,.0f} req/s  err {info['errors']}  t/o {info['timeouts']}"
            )
            return Text(text, no_wrap=True, overflow="ellipsis")

        console = Console(stderr=True)
        with Live(Text(f"{title}  starting"), console=console, transient=True) as live:

            def update(info: dict[str, Any]) -> None:
                live.update(render(info))

            yield update
