"""Helper servers the experiments run in their own processes: ``python -m duplex.lab.helpers``.

``fork [--leak]``
    A process-per-connection server written as CSAPP's ``echoserverp``, with one
    deliberate difference under ``--leak``: the parent forgets ``close(connfd)``
    after ``fork()``. It lives here, not in :mod:`duplex.server`, because it is a
    bug on purpose (``duplex lab fork-refcount``).
``pool --workers N --work echo|cpu|wait --cost-ms C``
    The real ``pool`` model of :mod:`duplex.server` running a handler that answers
    each 64-byte record after C ms of work: none (``echo``), hashing that releases
    the GIL as C code does (``cpu``), or a blocking wait such as a database call
    (``wait``) (``duplex lab threads-vs-cpus``).
``pairs``
    Accepts connections and reports, for each, the descriptor and what
    ``getsockname()``/``getpeername()`` return on the server's side
    (``duplex lab socket-pair``).

Each prints one JSON ready line with its port and pid, and bounds its own life
with ``signal.alarm``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from duplex.config import ListenerConfig
from duplex.protocol.handler import Handler, SocketPair
from duplex.server.base import DriverOptions, get_driver_class
from duplex.server.listener import create_listener
from duplex.server.runner import run_driver

__all__ = ["RECORD", "WorkHandler", "calibrate_cpu", "main"]

RECORD = 64
"""Bytes of one request and of its answer in ``threads-vs-cpus``."""

_BLOCK = bytes(256 * 1024)


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def calibrate_cpu(cost_ms: float) -> int:
    """Returns how many SHA-256 passes over a 256 KiB block take about ``cost_ms``.

    hashlib releases the GIL for inputs above 2 KiB, so this work runs in parallel
    on several cores as compiled request handlers would.
    """
    start = time.perf_counter()
    for _ in range(20):
        hashlib.sha256(_BLOCK).digest()
    per_pass_ms = (time.perf_counter() - start) * 1000 / 20
    return max(1, round(cost_ms / per_pass_ms))


class WorkHandler:
    """Answers each 64-byte record with itself, after some work (a sans-I/O handler).

    Args:
        work: ``echo`` (none), ``cpu`` (hashing) or ``wait`` (sleep).
        cost_ms: the wait, in ms, for ``wait``.
        passes: hashing passes for ``cpu`` (see :func:`calibrate_cpu`).
    """

    def __init__(self, work: str, cost_ms: float, passes: int) -> None:
        self.work = work
        self.cost = cost_ms / 1000
        self.passes = passes
        self._buf = b""
        self._out: list[bytes] = []

    def on_connect(self, pair: SocketPair) -> None:
        """Nothing to say first."""

    def receive_data(self, data: bytes) -> None:
        """Does the work for each complete record and queues the answer."""
        self._buf += data
        while len(self._buf) >= RECORD:
            record, self._buf = self._buf[:RECORD], self._buf[RECORD:]
            if self.work == "cpu":
                for _ in range(self.passes):
                    hashlib.sha256(_BLOCK).digest()
            elif self.work == "wait":
                time.sleep(self.cost)
            self._out.append(record)

    def receive_eof(self) -> None:
        """Closes after the peer."""
        self._out.append(b"")

    def data_to_send(self) -> list[bytes]:
        """Returns the queued answers."""
        out, self._out = self._out, []
        return out


def _pool(args: argparse.Namespace) -> int:
    passes = args.passes or (calibrate_cpu(args.cost_ms) if args.work == "cpu" else 0)
    listener = create_listener(ListenerConfig(host="127.0.0.1", port=0, backlog=1024))
    cls = get_driver_class("pool")

    def factory() -> Handler:
        return WorkHandler(args.work, args.cost_ms, passes)

    driver = cls(listener, factory, DriverOptions(workers=args.workers, grace=1.0))
    return run_driver(
        driver,
        lambda: _say(
            {
                "event": "listening",
                "port": listener.address.port,
                "pid": os.getpid(),
                "workers": driver.workers,
                "passes": passes,
            }
        ),
    )


def _fork(args: argparse.Namespace) -> int:
    # SIG_IGN for SIGCHLD: the kernel reaps the children itself, so no zombies pile
    # up while the parent is blocked in accept() (POSIX.1-2001 semantics on Linux).
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    _say(
        {
            "event": "listening",
            "port": lsock.getsockname()[1],
            "pid": os.getpid(),
            "leak": args.leak,
        }
    )
    kept: list[socket.socket] = []
    while True:
        conn, _ = lsock.accept()
        fd = conn.fileno()
        pid = os.fork()
        if pid == 0:  # child: serve one message, close, exit
            status = 0
            try:
                lsock.close()
                conn.settimeout(args.max_seconds)
                data = conn.recv(1024)
                conn.sendall(data)
                conn.close()  # the child's reference goes; the socket lives on if the
                # parent still holds one (the --leak case)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        if args.leak:
            kept.append(conn)  # THE BUG: connfd stays open in the parent
        else:
            conn.close()  # CSAPP: "the parent must close its copy of connfd"
        _say(
            {
                "event": "forked",
                "child": pid,
                "parent_fd": fd if args.leak else None,
                "parent_open": len(kept),
            }
        )


def _pairs(args: argparse.Namespace) -> int:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    _say({"event": "listening", "port": lsock.getsockname()[1], "pid": os.getpid()})
    conns: list[socket.socket] = []

    def wait_for_eof() -> None:
        sys.stdin.read()  # the lab closes our stdin when it is done
        os._exit(0)

    threading.Thread(target=wait_for_eof, daemon=True).start()
    while True:
        conn, _ = lsock.accept()
        conns.append(conn)
        local, peer = conn.getsockname(), conn.getpeername()
        _say({"event": "accepted", "fd": conn.fileno(), "local": list(local), "peer": list(peer)})


def main(argv: list[str] | None = None) -> int:
    """Runs one helper server (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m duplex.lab.helpers")
    parser.add_argument("--max-seconds", type=int, default=300)
    sub = parser.add_subparsers(dest="kind", required=True)
    fork = sub.add_parser("fork")
    fork.add_argument("--leak", action="store_true")
    pool = sub.add_parser("pool")
    pool.add_argument("--workers", type=int, required=True)
    pool.add_argument("--work", choices=["echo", "cpu", "wait"], required=True)
    pool.add_argument("--cost-ms", type=float, default=1.0)
    pool.add_argument("--passes", type=int, default=0, help="hashing passes (0: calibrate)")
    sub.add_parser("pairs")
    args = parser.parse_args(argv)
    signal.alarm(max(1, args.max_seconds))
    if args.kind == "fork":
        return _fork(args)
    if args.kind == "pool":
        return _pool(args)
    return _pairs(args)


if __name__ == "__main__":
    sys.exit(main())
