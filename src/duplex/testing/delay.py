"""A user-space TCP relay that adds delay: netem's job, where ``tc netem`` is missing.

This kernel has no ``sch_netem`` (and modules cannot be loaded), so the chaos tests
delay traffic the way a WAN would, in user space: every connection accepted here is
carried to its destination, and every chunk read on one side is written to the other
``delay`` seconds (plus up to ``jitter``) after it arrived. Order within a connection
is kept (a chunk is never due before the one ahead of it), half-closes are carried
after the data ahead of them, and a reset on one side resets the other.

The destination is either fixed (``--target``) or, behind an nftables ``redirect``,
the address the client dialled (``--original-dst``: ``SO_ORIGINAL_DST`` from the
connection tracker), which makes the relay transparent to both ends: the chaos tests
put it on the direct path between two peers without either knowing.

Memory is bounded: past :data:`MAX_QUEUED` bytes in flight one way, the relay stops
reading that side until the writer catches up (the sender then sees TCP backpressure,
as through any slow link).

Run it as ``python -m duplex.testing.delay --listen HOST:PORT --target HOST:PORT
--delay 0.05``; it prints one JSON line once it listens (``{"event": "listening",
"host": ..., "port": ...}``) and runs until SIGTERM. :class:`DelayRelayProcess` does
that from a test, inside a network namespace if asked.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["MAX_QUEUED", "DelayRelay", "DelayRelayProcess", "main", "original_destination"]

MAX_QUEUED = 1 << 20
"""Bytes held per direction of a connection before the relay stops reading that side."""

SO_ORIGINAL_DST = 80
"""``<linux/netfilter_ipv4.h>``: the destination before a DNAT/redirect."""


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """The address a redirected IPv4 connection was dialled to (before the redirect).

    Raises:
        OSError: the connection was not redirected by the connection tracker.
    """
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), int(port)


class _Pipe:
    """One direction of a relayed connection: read, hold ``delay``, write."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        delay: float,
        jitter: float,
        rng: random.Random,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.delay = delay
        self.jitter = jitter
        self.rng = rng
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.changed = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    async def read_side(self) -> None:
        loop = asyncio.get_running_loop()
        last_due = 0.0
        while True:
            await self.room.wait()
            data = await self.reader.read(65536)
            due = loop.time() + self.delay + self.rng.uniform(0.0, self.jitter)
            last_due = max(last_due, due)  # never overtake the chunk ahead
            self.queue.append((last_due, data))
            self.queued += len(data)
            if self.queued > MAX_QUEUED:
                self.room.clear()
            self.changed.set()
            if not data:
                return

    async def write_side(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self.changed.clear()
                await self.changed.wait()
            due, data = self.queue[0]
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.queue.popleft()
            self.queued -= len(data)
            if self.queued <= MAX_QUEUED // 2:
                self.room.set()
            if not data:
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                return
            self.writer.write(data)
            await self.writer.drain()


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    with contextlib.suppress(OSError):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER 0: close with a reset, as the broken side did.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class DelayRelay:
    """The relay on the current event loop.

    Args:
        listen: ``(host, port)`` to listen on (port 0 picks one).
        target: where to carry connections; None means ``SO_ORIGINAL_DST``.
        delay: seconds added one way (each direction gets it).
        jitter: up to this many seconds more, at random (order is kept).
        seed: seed of the jitter.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int] | None,
        delay: float,
        jitter: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.listen = listen
        self.target = target
        self.delay = delay
        self.jitter = jitter
        self.rng = random.Random(seed)
        self.server: asyncio.Server | None = None
        self.connections = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> tuple[str, int]:
        """Where the relay listens."""
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        """Starts listening."""
        self.server = await asyncio.start_server(
            self._serve, self.listen[0], self.listen[1], reuse_address=True
        )

    async def close(self) -> None:
        """Stops listening and drops every relayed connection."""
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self.server is not None:
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            sock = writer.get_extra_info("socket")
            target = self.target or original_destination(sock)
            up_reader, upstream = await asyncio.open_connection(*target)
            for end in (writer, upstream):
                end.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipes = [
                _Pipe(reader, upstream, self.delay, self.jitter, self.rng),
                _Pipe(up_reader, writer, self.delay, self.jitter, self.rng),
            ]
            parts = [
                asyncio.ensure_future(coro)
                for pipe in pipes
                for coro in (pipe.read_side(), pipe.write_side())
            ]
            try:
                # Done when both directions carried their EOF, or at the first error
                # (a reset): then the other side is reset too.
                done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_EXCEPTION)
                if any(t.exception() is not None for t in done if not t.cancelled()):
                    raise ConnectionResetError("one side broke")
                writer.close()
                upstream.close()
            finally:
                for part in parts:
                    part.cancel()
                await asyncio.gather(*parts, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            _abort(writer)
            if upstream is not None:
                _abort(upstream)
        finally:
            self._tasks.discard(task)


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    target = None
    if args.target:
        t_host, _, t_port = args.target.rpartition(":")
        target = (t_host, int(t_port))
    relay = DelayRelay((host, int(port)), target, args.delay, args.jitter, args.seed)
    await relay.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    r_host, r_port = relay.address
    sys.stdout.write(json.dumps({"event": "listening", "host": r_host, "port": r_port}) + "\n")
    sys.stdout.flush()
    await stop.wait()
    await relay.close()


def main(argv: list[str] | None = None) -> None:
    """Runs the relay (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m duplex.testing.delay")
    parser.add_argument("--listen", required=True, help="HOST:PORT (port 0 picks one)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--target", help="HOST:PORT to carry connections to")
    group.add_argument(
        "--original-dst",
        action="store_true",
        help="carry each connection where it was dialled (behind an nftables redirect)",
    )
    parser.add_argument("--delay", type=float, default=0.05, help="seconds one way")
    parser.add_argument("--jitter", type=float, default=0.0, help="up to this much more")
    parser.add_argument("--seed", type=int, default=None)
    asyncio.run(_main(parser.parse_args(argv)))


class DelayRelayProcess:
    """The relay in a subprocess (maybe inside a namespace), ready when constructed.

    Args:
        listen: ``HOST:PORT`` to listen on.
        target: ``HOST:PORT``, or None for ``--original-dst``.
        delay: seconds one way.
        jitter: up to this many seconds more.
        prefix: a command prefix, e.g. ``["ip", "netns", "exec", "ns1"]``.
    """

    def __init__(
        self,
        listen: str,
        target: str | None,
        delay: float,
        jitter: float = 0.0,
        prefix: Sequence[str] = (),
    ) -> None:
        where = ["--target", target] if target else ["--original-dst"]
        cmd = [
            *prefix,
            sys.executable,
            "-m",
            "duplex.testing.delay",
            "--listen",
            listen,
            *where,
            "--delay",
            str(delay),
            "--jitter",
            str(jitter),
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
        )
        line: list[str] = []
        reader = threading.Thread(
            target=lambda: line.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(30)
        if not line or not line[0]:
            self.stop()
            raise RuntimeError(f"delay relay did not start: {self.stderr}")
        self.info: dict[str, Any] = json.loads(line[0])
        self._stderr = ""

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.info["port"])

    @property
    def stderr(self) -> str:
        """What it wrote to stderr (once stopped)."""
        return getattr(self, "_stderr", "")

    def stop(self) -> None:
        """SIGTERM, wait, and release the pipes."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
        self._stderr = err or ""

    def __enter__(self) -> DelayRelayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
