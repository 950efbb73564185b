"""Servers under test, each in its own process, pinned, measured and always stopped.

The bench never loads a server that shares its process: a server in the generator's
process would compete with it for the GIL and the CPU, and the figures would measure
both. :class:`BenchServer` starts ``duplex echo serve --json`` (or the C reference)
as a subprocess, reads its JSON ready line (printed only after ``listen()``), and
pins it with ``sched_setaffinity`` *before* it executes, so that the prefork model's
workers, forked later, inherit the same CPUs.

On a machine with at least two CPUs, :func:`plan_cpus` gives the server CPU 0 and
the generator the others. Without pinning, the scheduler would move both around and
each run would measure a different mix of contention.
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
from pathlib import Path
from typing import IO, Any

from duplex.bench.machine import process_cpu_seconds
from duplex.bench.spec import BenchError, Target

__all__ = ["REFERENCE_LABEL", "BenchServer", "plan_cpus"]

REFERENCE_LABEL = "c-epoll"
"""The label of the C reference server in reports."""

READY_TIMEOUT = 30.0
"""Seconds a server may take to print its ready line."""

STOP_TIMEOUT = 10.0
"""Seconds a server may take to exit after SIGTERM before it is killed."""


def plan_cpus(pin: bool = True) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Splits this process's CPUs between the server and the generator.

    Args:
        pin: False leaves both unpinned.

    Returns:
        ``(server_cpus, generator_cpus)``: the first CPU for the server and the rest
        for the generator when there are at least two; ``(None, None)`` otherwise.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return (cpus[0],), tuple(cpus[1:])


class BenchServer:
    """An echo server in its own process (a duplex model or the C reference).

    Use :meth:`duplex` or :meth:`reference` to start one, and always :meth:`stop` it
    (it is a context manager).

    Attributes:
        label: the model name or :data:`REFERENCE_LABEL`.
        model: the duplex model, or None for the reference.
        cpus: the CPUs it is pinned to, or None.
        info: the parsed ready line.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        label: str,
        model: str | None,
        cpus: tuple[int, ...] | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.label = label
        self.model = model
        self.cpus = cpus
        self.cmd = list(cmd)
        # The server's stderr goes to a file, not a pipe: nothing has to read it while
        # the load runs, and a chatty server can never block on a full pipe.
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _close
        preexec = None
        if cpus:
            pinned = set(cpus)

            def preexec() -> None:
                os.sched_setaffinity(0, pinned)

        try:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                preexec_fn=preexec,
                start_new_session=True,  # a Ctrl-C to the bench does not reach it
            )
        except OSError as exc:
            self._stderr.close()
            raise BenchError(f"cannot start {label} server: {exc}") from exc
        try:
            self.info: dict[str, Any] = self._read_ready(ready_timeout)
        except BaseException:
            self.kill()
            raise

    @classmethod
    def duplex(
        cls,
        model: str,
        *,
        workers: int | None = None,
        cpus: tuple[int, ...] | None = None,
        host: str = "127.0.0.1",
        extra: Sequence[str] = (),
    ) -> BenchServer:
        """Starts ``duplex echo serve --model MODEL`` on an ephemeral port.

        Args:
            model: the concurrency model.
            workers: pool threads or prefork processes (None: the model's default).
            cpus: CPUs to pin the server (and every process it forks) to.
            host: the address to listen on.
            extra: further ``duplex echo serve`` arguments.

        Raises:
            BenchError: it did not start or print its ready line.
        """
        cmd = [sys.executable, "-m", "duplex", "echo", "serve", "--model", model]
        cmd += ["--host", host, "--port", "0", "--json", "--grace", "1"]
        cmd += ["--log-level", "warning"]
        if workers:
            cmd += ["--workers", str(workers)]
        cmd += list(extra)
        return cls(cmd, label=model, model=model, cpus=cpus)

    @classmethod
    def reference(
        cls, binary: Path, *, cpus: tuple[int, ...] | None = None, host: str = "127.0.0.1"
    ) -> BenchServer:
        """Starts the C reference server (see :mod:`duplex.bench.reference`).

        Raises:
            BenchError: it did not start or print its ready line.
        """
        return cls([str(binary), host, "0"], label=REFERENCE_LABEL, model=None, cpus=cpus)

    def _read_ready(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        end = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = end - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise BenchError(
                        f"{self.label} server printed no ready line in {timeout:g} s"
                        f"{self._stderr_tail()}"
                    )
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait(5)
                    raise BenchError(
                        f"{self.label} server exited with status {self.proc.returncode} "
                        f"before it was ready{self._stderr_tail()}"
                    )
                buf += chunk
        line = buf.split(b"\n", 1)[0]
        try:
            info: dict[str, Any] = json.loads(line)
        except ValueError:
            raise BenchError(f"{self.label} server's ready line is not JSON: {line!r}") from None
        return info

    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            text = self._stderr.read()[-1000:].decode("utf-8", "replace").strip()
            if text:
                return f": {text.splitlines()[-1]}"
        return ""

    @property
    def target(self) -> Target:
        """Where the server listens."""
        return Target(str(self.info.get("host", "127.0.0.1")), int(self.info["port"]))

    @property
    def alive(self) -> bool:
        """True while the server process runs."""
        return self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    @property
    def workers(self) -> int | None:
        """The worker count the server reported (pool threads, prefork processes)."""
        workers = self.info.get("workers")
        return int(workers) if workers else None

    @property
    def cpu_limit(self) -> int:
        """How many CPUs the server may run on."""
        return len(self.cpus) if self.cpus else len(os.sched_getaffinity(0))

    def cpu_seconds(self) -> float | None:
        """Returns the CPU seconds used so far by the server and every process it made.

        Children that already exited count through their parent's ``children_*``
        times once reaped (the fork model reaps each connection's child).
        """
        try:
            return process_cpu_seconds(self.proc.pid, descendants=True)
        except Exception:  # gone, or psutil cannot read it here
            return None

    def stop(self) -> int | None:
        """Stops the server (SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`).

        Returns:
            Its exit status, or None if it had to be killed.
        """
        status: int | None = None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                status = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            status = self.proc.returncode
        self._close()
        return status

    def kill(self) -> None:
        """Kills the server and every process it made, at once."""
        with contextlib.suppress(Exception):
            import psutil

            for child in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._close()

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> BenchServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
