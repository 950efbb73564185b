"""The prefork model: N worker processes sharing one port through SO_REUSEPORT.

Each worker binds *its own* listening socket to the same address with SO_REUSEPORT,
and the kernel spreads incoming connections over their accept queues by a hash of
the 4-tuple. This is the nginx ``reuseport`` design, and it is better than the older
prefork of Apache, where every worker inherits one listening socket and they all wake
for each connection (the thundering herd) and then race to ``accept()`` it. Each
worker runs the event-loop model (uvloop when installed, else asyncio), so the server
uses every core with one process per core and no GIL between them.

The supervisor binds the port *without* listening, to hold it: a bound socket that
is not listening never joins the kernel's reuseport lookup, so it receives nothing,
but while it exists no other program can take the port, and a worker that is
restarted binds the same port again. The supervisor restarts a worker that dies.

Two cases share one socket instead, inherited across ``fork()``: a Unix domain socket
(SO_REUSEPORT does not apply to it) and the UDP socket of ``--udp`` (a bound UDP socket
in a reuseport group receives datagrams, so the supervisor could not hold that port
without swallowing a share of them).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING

from duplex.config import ListenerConfig
from duplex.server.base import Driver
from duplex.server.listener import Listener, create_listener

if TYPE_CHECKING:
    from duplex.server.aio import AsyncioDriver

__all__ = ["PreforkDriver"]

log = logging.getLogger("duplex.server")

RESTART_BACKOFF_MAX = 5.0
"""Seconds, at most, before restarting a worker that keeps dying at start."""


class PreforkDriver(Driver):
    """A supervisor process and N worker processes, each with its own listener."""

    name = "prefork"

    @classmethod
    def default_workers(cls) -> int:
        """One worker per CPU."""
        return os.cpu_count() or 1

    @classmethod
    def open_listener(cls, config: ListenerConfig) -> Listener:
        """Holds the port: bound with SO_REUSEPORT, not listening (TCP); listening (Unix)."""
        if config.unix:
            return create_listener(config)
        return create_listener(config, reuse_port=True, listen=False)

    @property
    def inner_model(self) -> str:
        """The model each worker runs: uvloop when installed, else asyncio."""
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "asyncio"
        return "uvloop"

    def _on_sigchld(self, signum: int, frame: FrameType | None) -> None:
        self._waker.wake()

    def start(self) -> None:
        """Starts the workers and waits until each one listens (or gives up after 30 s).

        A worker reports "listening" by writing one byte to a pipe, once it serves and
        its SIGTERM handler is in place; only then does the server announce itself, so
        a client that connects right after the ready line never meets a port with no
        listener behind it, and a SIGTERM right after it stops every worker at once.
        """
        self.pids: dict[int, int] = {}  # pid -> slot
        self._started: dict[int, float] = {}  # slot -> start time
        self._failures: dict[int, int] = {}  # slot -> quick deaths in a row
        self._previous_sigchld = signal.signal(signal.SIGCHLD, self._on_sigchld)
        ready_r, self._ready_w = os.pipe2(os.O_CLOEXEC)
        try:
            for slot in range(self.workers or 1):
                self._spawn(slot)
            os.close(self._ready_w)
            self._ready_w = -1
            wanted, got = len(self.pids), 0
            end = time.monotonic() + 30
            while got < wanted and time.monotonic() < end:
                with selectors.DefaultSelector() as sel:
                    sel.register(ready_r, selectors.EVENT_READ)
                    if not sel.select(max(0.0, end - time.monotonic())):
                        break
                data = os.read(ready_r, wanted)
                if not data:
                    break  # every worker exited before saying so
                got += len(data)
            if got < wanted:
                log.warning("only %d of %d workers came up", got, wanted)
        finally:
            os.close(ready_r)

    def serve_forever(self) -> None:
        """Supervises the workers until shutdown, then stops them gracefully."""
        pending: dict[int, float] = {}  # slot -> when to restart
        previous = self._previous_sigchld
        sel = selectors.DefaultSelector()
        sel.register(self._waker.fileno(), selectors.EVENT_READ)
        try:
            while not self.stopping:
                timeout = None
                if pending:
                    timeout = max(0.0, min(pending.values()) - time.monotonic())
                if sel.select(timeout):
                    self._waker.drain()
                for slot, _status in self._reap():
                    quick = time.monotonic() - self._started.get(slot, 0.0) < 1.0
                    self._failures[slot] = self._failures.get(slot, 0) + 1 if quick else 0
                    delay = (
                        min(RESTART_BACKOFF_MAX, 0.1 * 2 ** self._failures[slot]) if quick else 0
                    )
                    log.warning(
                        "worker %d died (%s); restarting it%s",
                        slot,
                        _status,
                        f" in {delay:.1f} s" if delay else "",
                    )
                    pending[slot] = time.monotonic() + delay
                now = time.monotonic()
                for slot, when in list(pending.items()):
                    if when <= now:
                        del pending[slot]
                        self._respawn(slot)
            self._stop_workers(sel)
        finally:
            sel.close()
            signal.signal(signal.SIGCHLD, previous)
            self.close_listener()
            self._waker.close()

    def _reap(self) -> list[tuple[int, str]]:
        dead = []
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            slot = self.pids.pop(pid, None)
            if slot is not None:
                if os.WIFSIGNALED(status):
                    how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
                else:
                    how = f"exit status {os.waitstatus_to_exitcode(status)}"
                dead.append((slot, how))
        return dead

    def _stop_workers(self, sel: selectors.BaseSelector) -> None:
        # Each worker drains its own connections within the grace period.
        for pid in list(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = self.deadline + 1.0
        while self.pids and time.monotonic() < end:
            self._reap()
            if self.pids and sel.select(min(0.2, max(0.0, end - time.monotonic()))):
                self._waker.drain()
        self.kill()
        for pid in list(self.pids):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids.clear()

    def kill(self) -> None:
        """Kills every worker at once (the second signal)."""
        for pid in list(getattr(self, "pids", {})):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _respawn(self, slot: int) -> None:
        if not self.stopping:  # a signal may have come while we reaped
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        try:
            pid = os.fork()
        except OSError as exc:
            log.error("cannot start worker %d: %s", slot, exc)
            return
        if pid:
            self.pids[pid] = slot
            self._started[slot] = time.monotonic()
            return
        status = 1
        try:
            status = self._worker_main(slot)
        except BaseException:
            log.exception("worker %d failed", slot)
        finally:
            os._exit(status)

    def _worker_main(self, slot: int) -> int:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # Ctrl-C reaches the whole process group; the supervisor alone decides.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Our own SIGTERM handler first: until it is in place the supervisor's,
        # inherited through fork, would take the signal and do nothing here, and the
        # worker would serve on until the supervisor kills it past the grace (a
        # SIGTERM right after "ready" took grace + 1 s every time). A signal that comes
        # before the driver exists stops it as soon as it does.
        inner: AsyncioDriver | None = None
        signals = 0

        def on_term(signum: int, frame: FrameType | None) -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                os._exit(128 + signum)
            if inner is not None:
                inner.shutdown()

        signal.signal(signal.SIGTERM, on_term)
        self._waker.close()
        if self.listener.address.is_unix:
            listener = self.listener
        else:
            self.listener.sock.close()
            config = self.listener.config
            config = ListenerConfig(
                host=config.host,
                port=self.listener.address.port,
                backlog=config.backlog,
                reuse_address=config.reuse_address,
                nodelay=config.nodelay,
            )
            listener = create_listener(config, reuse_port=True)
        from duplex.server.aio import AsyncioDriver

        inner_class: type[AsyncioDriver] = AsyncioDriver
        if self.inner_model == "uvloop":
            from duplex.server.uv import UvloopDriver

            inner_class = UvloopDriver
        inner = inner_class(listener, self.factory, self.options, self.udp)
        inner.waker.catch_signals()
        if signals:
            inner.shutdown()
        if self._ready_w >= 0:  # ready: serving, and a SIGTERM stops it gracefully
            os.write(self._ready_w, b"1")
            os.close(self._ready_w)
            self._ready_w = -1
        log.debug("worker %d (pid %d) listening on %s", slot, os.getpid(), listener.address)
        inner.serve_forever()
        return 0
