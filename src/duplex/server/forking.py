"""The process-per-connection model (CSAPP's ``echoserverp``).

The parent accepts and forks; the child serves the connection and exits. Three rules
from the texts, each one a classic bug when forgotten:

1. The parent closes its copy of the connected descriptor right after ``fork()``. A
   socket is a kernel object with a reference count; if the parent kept its copy, the
   connection would stay open after the child closed it, and the client would never
   see EOF (``duplex lab fork-refcount`` shows it).
2. Children are reaped (``waitpid(-1, WNOHANG)`` after SIGCHLD), or they stay zombies.
3. A child always ends with ``os._exit``: it must never return into the parent's
   accept loop, nor run the parent's ``atexit`` handlers and buffered-file flushes.

The parent stays single-threaded (forking a multi-threaded process copies only the
calling thread, with every lock the other threads held), so its grace period is kept
by its own select loop, not by a timer thread.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import socket
import time
from types import FrameType

from duplex.server.base import (
    OVERLOAD_BACKOFF,
    Driver,
    accept_connection,
    answer_datagrams,
    serve_blocking,
)

__all__ = ["ForkDriver"]

log = logging.getLogger("duplex.server")


class ForkDriver(Driver):
    """A child process for every accepted connection."""

    name = "fork"

    children: set[int]

    def _on_sigchld(self, signum: int, frame: FrameType | None) -> None:
        self._waker.wake()

    def reap(self) -> None:
        """Collects every child that has exited (never blocks)."""
        while self.children:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)

    def _spawn(self, conn: socket.socket) -> None:
        try:
            pid = os.fork()
        except OSError as exc:
            # Out of processes or memory: refuse this client, keep serving.
            log.warning("fork() failed: %s; dropping one connection", exc)
            conn.close()
            time.sleep(OVERLOAD_BACKOFF)
            return
        if pid == 0:  # child
            status = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
                # Below the parent: with hundreds of busy children on one core, the
                # acceptor must still get the CPU to accept and fork for the next client
                # (at nice 19 a child weighs 15 against the parent's 1024 under CFS). The
                # bench measured it at 1,000 connections on one core: children at nice 5
                # left 281 clients unanswered for 5 s, at nice 10 188, at nice 19 none;
                # the price is throughput at that size (16k instead of 66k requests/s),
                # which is what a process per connection costs there anyway.
                os.nice(19)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                self.listener.sock.close()
                if self.udp is not None:
                    self.udp.sock.close()
                self._waker.close()
                serve_blocking(conn, self.factory())
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        conn.close()  # rule 1: the child owns the connection now
        self.children.add(pid)

    def serve_forever(self) -> None:
        """Accepts and forks until shutdown, then waits out the grace period."""
        self.children = set()
        previous = signal.signal(signal.SIGCHLD, self._on_sigchld)
        sel = selectors.DefaultSelector()
        lsock = self.listener.sock
        lsock.setblocking(False)
        sel.register(lsock, selectors.EVENT_READ, "accept")
        sel.register(self._waker.fileno(), selectors.EVENT_READ, "wake")
        if self.udp is not None:
            self.udp.sock.setblocking(False)
            sel.register(self.udp.sock, selectors.EVENT_READ, "udp")
        try:
            while not self.stopping:
                for key, _ in sel.select():
                    if key.data == "wake":
                        self._waker.drain()
                        self.reap()
                    elif key.data == "udp":
                        assert self.udp is not None
                        answer_datagrams(self.udp)
                    elif not self.stopping:
                        # Drain a burst of waiting clients per wakeup: with hundreds of
                        # children on the CPU, every return to select() costs a turn.
                        for _ in range(64):
                            conn = accept_connection(lsock)
                            if conn is None:
                                break
                            self.prepare_connection(conn)
                            self._spawn(conn)
            self.close_listener()
            sel.unregister(lsock)
            if self.udp is not None:
                sel.unregister(self.udp.sock)
            # Grace: children finish their connections on their own.
            while self.children:
                self.reap()
                remaining = self.deadline - time.monotonic()
                if not self.children or remaining <= 0:
                    break
                if sel.select(min(remaining, 0.5)):
                    self._waker.drain()
            self._end_children(signal.SIGTERM)
        finally:
            sel.close()
            self.close_listener()
            signal.signal(signal.SIGCHLD, previous)
            self._waker.close()

    def _end_children(self, sig: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                self.children.discard(pid)
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            except OSError as exc:  # pragma: no cover - EINTR is retried by Python
                if exc.errno != errno.EINTR:
                    raise
            self.children.discard(pid)

    def kill(self) -> None:
        """Kills every child at once (the second signal)."""
        for pid in list(getattr(self, "children", ())):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
