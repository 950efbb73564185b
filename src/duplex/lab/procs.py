"""The processes an experiment starts, and the guarantee that it ends them all.

Every helper is a ``python -m ...`` subprocess that speaks JSON lines: one object per
line on stdout (a ready line first, then one answer per request), requests on stdin.
Reads have deadlines, so no experiment can hang on a helper. :class:`Children`
tracks every process an experiment starts, with the descendants they fork (prefork
workers, forked children), and ends each one *by its PID* when the experiment leaves
its ``with`` block, however it leaves.

Helpers also bound themselves: they exit at EOF on stdin (the lab died) and after a
maximum lifetime (``signal.alarm``), so even a killed lab leaves nothing behind for long.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any

import psutil

from duplex.lab.errors import ExperimentError

__all__ = ["Child", "Children", "EchoServer"]


class Child:
    """A helper subprocess speaking JSON lines.

    Args:
        argv: the command.
        name: a label for error messages.
        env: extra environment variables.
    """

    eof_grace = 1.0
    """Seconds the helper gets to exit by itself after EOF on stdin (0: it does not watch)."""

    def __init__(self, argv: Sequence[str], name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        # Closed in stop(): it must outlive this method, so no context manager here.
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=full_env,
        )
        self._buf = b""
        self._known: dict[int, float] = {}  # pid -> create time, against PID reuse

    @property
    def pid(self) -> int:
        """The helper's process id."""
        return self.proc.pid

    def stderr_text(self, limit: int = 4000) -> str:
        """Returns the last ``limit`` characters the helper wrote to stderr."""
        try:
            self._err.seek(0)
            data = self._err.read()
        except (OSError, ValueError):
            return ""
        return data.decode("utf-8", "replace")[-limit:]

    def read(self, timeout: float) -> dict[str, Any]:
        """Reads the next JSON line.

        Raises:
            ExperimentError: no complete line within ``timeout``, or the helper exited.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                remaining = end - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise ExperimentError(
                        f"{self.name} (pid {self.pid}) did not answer within {timeout:g} s; "
                        f"stderr: {self.stderr_text(500)!r}"
                    )
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise ExperimentError(
                        f"{self.name} (pid {self.pid}) exited (status {self.proc.poll()}); "
                        f"stderr: {self.stderr_text(500)!r}"
                    )
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            value: dict[str, Any] = json.loads(line)
        except ValueError as exc:
            raise ExperimentError(f"{self.name} wrote {line[:200]!r}, not JSON") from exc
        if value.get("error") and value.get("fatal"):
            raise ExperimentError(f"{self.name}: {value['error']}")
        return value

    def send(self, request: dict[str, Any]) -> None:
        """Writes one request line."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise ExperimentError(f"{self.name} (pid {self.pid}) is gone") from exc

    def request(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Sends ``request`` and returns the answer."""
        self.send(request)
        return self.read(timeout)

    def descendants(self) -> list[int]:
        """Returns the PIDs of the helper's descendants (and remembers them)."""
        try:
            found = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            found = []
        for proc in found:
            with contextlib.suppress(psutil.Error):
                self._known.setdefault(proc.pid, proc.create_time())
        return [p.pid for p in found]

    def send_signal(self, sig: int) -> None:
        """Sends ``sig`` to the helper if it still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int | None:
        """Ends the helper: EOF on stdin, then ``sig``, then SIGKILL; and its descendants.

        Returns:
            The helper's exit status (None if it could not be reaped).
        """
        self.descendants()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        status: int | None = None
        try:
            if self.eof_grace <= 0:
                raise subprocess.TimeoutExpired(self.proc.args, 0)
            status = self.proc.wait(min(timeout, self.eof_grace))
        except subprocess.TimeoutExpired:
            self.send_signal(sig)
            try:
                status = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    status = self.proc.wait(5)
        for pid, created in sorted(self._known.items()):
            _kill_if_ours(pid, created)
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()
        with contextlib.suppress(OSError):
            self._err.close()
        return status


def _kill_if_ours(pid: int, created: float) -> None:
    """Kills a descendant we recorded, unless its PID now names another process."""
    try:
        proc = psutil.Process(pid)
        if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
            proc.kill()
    except psutil.Error:
        pass


class EchoServer(Child):
    """``duplex echo serve`` in a subprocess, ready once its JSON line is read.

    Args:
        model: the concurrency model.
        args: further arguments (``--workers 2``...).
        ready_timeout: seconds to wait for the ready line.

    Attributes:
        info: the ready line (``port``, ``pid``, ``effective_backlog``, ``workers``...).
    """

    def __init__(self, model: str, args: Sequence[str] = (), ready_timeout: float = 30.0) -> None:
        argv = [sys.executable, "-m", "duplex", "echo", "serve", "--model", model, "--json"]
        argv += ["--host", "127.0.0.1", "--port", "0", "--grace", "1", *args]
        super().__init__(argv, f"echo server ({model})")
        self.eof_grace = 0
        try:
            self.info = self.read(ready_timeout)
        except BaseException:
            self.stop(1)
            raise
        self.model = model

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.info["port"])

    def all_pids(self) -> list[int]:
        """The server process and its workers or children."""
        return [self.pid, *self.descendants()]

    def rss(self) -> int:
        """Resident memory of the server and its descendants, in bytes."""
        total = 0
        for pid in self.all_pids():
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(pid).memory_info().rss
        return total

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM (a graceful stop), then SIGKILL after ``timeout``."""
        return super().stop(timeout, sig)


class Children:
    """Every helper an experiment starts; ``with`` ends them all, each by its PID."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def add(self, child: Child) -> Child:
        """Tracks ``child`` and returns it."""
        self._children.append(child)
        return child

    def echo_server(self, model: str, *args: str) -> EchoServer:
        """Starts and tracks ``duplex echo serve --model model``."""
        server = EchoServer(model, args)
        self._children.append(server)
        return server

    def helper(
        self,
        module: str,
        *args: str,
        name: str = "",
        ready: bool = True,
        timeout: float = 30.0,
        watches_stdin: bool = True,
    ) -> tuple[Child, dict[str, Any]]:
        """Starts ``python -m module args`` and reads its ready line.

        Args:
            module: the helper's module.
            args: its arguments.
            name: a label for messages.
            ready: read a ready line first.
            timeout: seconds to wait for the ready line.
            watches_stdin: the helper exits by itself at EOF on stdin; if not, it is
                sent SIGTERM at once when stopped.

        Returns:
            The child and its ready line (``{}`` when ``ready`` is False).
        """
        child = Child([sys.executable, "-m", module, *args], name or module)
        if not watches_stdin:
            child.eof_grace = 0
        self._children.append(child)
        info = child.read(timeout) if ready else {}
        return child, info

    def stop(self, child: Child) -> None:
        """Stops one child now."""
        if child in self._children:
            self._children.remove(child)
        child.stop()

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        while self._children:
            self._children.pop().stop()
