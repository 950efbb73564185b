"""A small, bounded, closed-loop load generator for the lab.

Each of C connections sends one fixed-size request, waits for the whole answer, and
sends the next: C requests are in flight at any time (a closed loop), so the
throughput measured is what the server sustains with C concurrent clients. One
thread drives all connections with epoll, so the generator itself costs one core
at most. The run stops by itself after ``duration`` seconds.

(The project's full load generator is ``duplex.bench``, issue #5; this one exists so
the lab does not depend on it and stays small enough to read in one sitting.)
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import socket
import time

from duplex.lab.errors import ExperimentError

__all__ = ["LoadResult", "closed_loop"]


@dataclasses.dataclass(frozen=True, slots=True)
class LoadResult:
    """Round trips completed in a measured window.

    Attributes:
        requests: round trips completed in the window.
        seconds: the window's length.
        latencies: round-trip times in seconds (every one in the window).
    """

    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        """Round trips per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100) of the round-trip times, in seconds."""
        ordered = sorted(self.latencies)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def closed_loop(
    host: str,
    port: int,
    *,
    connections: int,
    size: int,
    duration: float,
    warmup: float = 0.2,
    timeout: float = 10.0,
) -> LoadResult:
    """Drives an echo-like server with ``connections`` closed-loop clients.

    Args:
        host: server address.
        port: server port.
        connections: concurrent clients, one request in flight each.
        size: bytes per request; the server answers with as many.
        duration: seconds measured (after ``warmup``).
        warmup: seconds run before measuring.
        timeout: seconds without any answer after which the run fails.

    Returns:
        The requests completed in the measured window.

    Raises:
        ExperimentError: a connection failed or the server stalled for ``timeout``.
    """
    payload = os.urandom(size)
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    try:
        for _ in range(connections):
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            socks.append(sock)
        got = {s.fileno(): 0 for s in socks}
        sent_at = {s.fileno(): 0.0 for s in socks}
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ, sock)
            sent_at[sock.fileno()] = time.perf_counter()
            sock.send(payload)
        start = time.perf_counter()
        begin, end = start + warmup, start + warmup + duration
        done = 0
        latencies: list[float] = []
        last_progress = start
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            events = sel.select(min(0.5, end - now))
            if not events:
                if time.perf_counter() - last_progress > timeout:
                    raise ExperimentError(f"the server at {host}:{port} stopped answering")
                continue
            for key, _ in events:
                sock = key.data
                fd = sock.fileno()
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise ExperimentError(f"the server at {host}:{port} closed a connection")
                got[fd] += len(chunk)
                if got[fd] >= size:
                    got[fd] = 0
                    now = time.perf_counter()
                    last_progress = now
                    if begin <= now < end:
                        done += 1
                        latencies.append(now - sent_at[fd])
                    sent_at[fd] = now
                    sock.send(payload)
        return LoadResult(done, duration, latencies)
    except OSError as exc:
        raise ExperimentError(f"load against {host}:{port} failed: {exc}") from exc
    finally:
        sel.close()
        for sock in socks:
            sock.close()
