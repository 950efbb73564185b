"""Real servers in real processes, for tests: start, wait until ready, always stop.

Tests never sleep to synchronise: a server is ready when it has printed its JSON
ready line, which it does only after ``listen()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["MS", "EchoServerProcess", "free_port", "scaled", "wait_for"]

MS = float(os.environ.get("DUPLEX_TEST_MS", "0.001"))
"""One millisecond, scaled by ``$DUPLEX_TEST_MS`` on slow machines (websockets' idea)."""


def scaled(seconds: float) -> float:
    """Returns ``seconds`` scaled like :data:`MS`."""
    return seconds * MS / 0.001


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Polls ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    end = time.monotonic() + scaled(timeout)
    while True:
        if predicate():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a port that was free a moment ago (for tests that need it up front)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EchoServerProcess:
    """``duplex echo serve`` in a subprocess, with its ready line parsed.

    Args:
        model: the concurrency model.
        args: further command-line arguments.
        env: extra environment variables.
        preexec_fn: run in the child before exec (e.g. to lower RLIMIT_NOFILE).
        ready_timeout: seconds to wait for the ready line.

    Attributes:
        info: the parsed JSON ready line (``port``, ``pid``, ``effective_backlog``, ...).
        proc: the :class:`subprocess.Popen`.
    """

    def __init__(
        self,
        model: str,
        args: Sequence[str] = (),
        *,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        ready_timeout: float = 20.0,
    ) -> None:
        self.model = model
        cmd = [sys.executable, "-m", "duplex", "echo", "serve", "--model", model, "--json"]
        if not any(a == "--port" or a == "--unix" for a in args):
            cmd += ["--port", "0"]
        cmd += list(args)
        self.cmd = cmd
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            preexec_fn=preexec_fn,
            text=True,
        )
        self._stderr: list[str] = []
        self._stderr_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr_thread.start()
        self.info: dict[str, Any] = self._read_ready(scaled(ready_timeout))

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        """What the server wrote to stderr so far."""
        return "".join(self._stderr)

    def _read_ready(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(
            target=lambda: result.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            self.kill()
            raise RuntimeError(
                f"server {self.model} did not become ready: rc={self.proc.poll()} "
                f"stderr={self.stderr[-2000:]!r}"
            )
        info: dict[str, Any] = json.loads(result[0])
        return info

    @property
    def host(self) -> str:
        """The host the server listens on."""
        return str(self.info["host"])

    @property
    def port(self) -> int:
        """The port the server listens on (the real one when 0 was asked)."""
        return int(self.info["port"])

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` for ``socket.create_connection``."""
        return (self.host, self.port)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """Opens a TCP (or Unix) connection to the server."""
        if self.info.get("unix"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(scaled(timeout))
            sock.connect(self.host)
            return sock
        sock = socket.create_connection(self.address, timeout=scaled(timeout))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Sends ``sig`` (SIGTERM by default) to the server."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        """Waits for the server to exit; returns its status.

        Raises:
            subprocess.TimeoutExpired: it did not exit in time.
        """
        return self.proc.wait(scaled(timeout))

    def kill(self) -> None:
        """Ends the server and every process it started, at once.

        The server first (a prefork supervisor killed after its workers would restart
        one in between, and leave it orphaned), then the children noted before.
        """
        children = []
        with contextlib.suppress(Exception):
            import psutil

            children = psutil.Process(self.proc.pid).children(recursive=True)
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(5)
        for child in children:
            with contextlib.suppress(Exception):
                child.kill()

    def stop(self, timeout: float = 15.0) -> int:
        """Stops gracefully (SIGTERM), then kills if that takes longer than ``timeout``."""
        self.terminate()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self.close_pipes()

    def close_pipes(self) -> None:
        """Closes our ends of the server's pipes (stderr once it is read to its end)."""
        if self.proc.stdout is not None:
            with contextlib.suppress(Exception):
                self.proc.stdout.close()
        # The pump thread owns stderr until EOF, which comes when the server and
        # every child that inherited the pipe have exited.
        self._stderr_thread.join(scaled(5))
        if self.proc.stderr is not None and not self._stderr_thread.is_alive():
            with contextlib.suppress(Exception):
                self.proc.stderr.close()

    def __enter__(self) -> EchoServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.close_pipes()


@contextlib.contextmanager
def echo_server(model: str, *args: str, **kwargs: Any) -> Iterator[EchoServerProcess]:
    """A context manager around :class:`EchoServerProcess` that always stops it."""
    server = EchoServerProcess(model, args, **kwargs)
    try:
        yield server
    finally:
        server.kill()
        server.close_pipes()
