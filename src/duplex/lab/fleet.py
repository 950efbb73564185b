"""Several holder processes driven together: more connections than one process may hold.

The open-files limit is per process (20,000 here, hard), so an experiment that needs
70,000 client sockets spreads them over holders (:mod:`duplex.lab.holder`), each
with its own source address if asked, and talks to all of them at once: requests
are sent to every holder first and the answers read afterwards, so the holders
connect in parallel.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from duplex.lab.errors import ExperimentError
from duplex.lab.procs import Child, Children

__all__ = ["Fleet"]


class Fleet:
    """Holder processes started through a :class:`Children`, which ends them.

    Args:
        children: the experiment's process tracker.
        max_seconds: each holder's own time limit.
    """

    def __init__(self, children: Children, max_seconds: float) -> None:
        self.children = children
        self.max_seconds = max_seconds
        self.holders: list[Child] = []

    def start(self, count: int = 1) -> list[Child]:
        """Starts ``count`` more holders and waits until each is ready."""
        started = []
        for _ in range(count):
            child = Child(
                [
                    sys.executable,
                    "-m",
                    "duplex.lab.holder",
                    "--max-seconds",
                    str(int(self.max_seconds)),
                ],
                f"holder {len(self.holders) + 1}",
            )
            self.children.add(child)
            self.holders.append(child)
            started.append(child)
        for child in started:
            child.read(30)
        return started

    def connect_all(
        self,
        holders: Sequence[Child],
        requests: Sequence[dict[str, Any]],
        timeout: float,
    ) -> list[dict[str, Any]]:
        """Sends one connect request to each holder, then collects the answers.

        Args:
            holders: the holders, one per request.
            requests: the connect requests (``host``, ``port``, ``count``...).
            timeout: seconds to wait for all of them.

        Returns:
            The answers, in the order of ``holders``.
        """
        if len(holders) != len(requests):
            raise ExperimentError("one request per holder")
        for child, req in zip(holders, requests, strict=True):
            child.send({"op": "connect", "timeout": timeout, **req})
        return [child.read(timeout + 30) for child in holders]

    def ask_all(self, request: dict[str, Any], timeout: float = 60) -> list[dict[str, Any]]:
        """Sends ``request`` to every holder and returns their answers."""
        for child in self.holders:
            child.send(request)
        return [child.read(timeout) for child in self.holders]

    def close_all(self) -> int:
        """Closes every held connection with RST (no TIME_WAIT); returns how many."""
        return sum(int(a.get("closed", 0)) for a in self.ask_all({"op": "close", "abort": True}))
