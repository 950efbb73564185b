"""The thread-per-connection model (CSAPP's ``echoservert``).

The main thread accepts; each connection gets its own thread, which serves it with
blocking calls and ends with it. CSAPP detaches its threads so the system reclaims
them; CPython's ``socketserver.ThreadingMixIn`` instead keeps every thread object in
``_threads`` so it can join them at close, and that list grows with every connection
ever served. Here a thread removes itself from the live set when it finishes, so the
bookkeeping is bounded by the connections *open now*, and a graceful shutdown can
still join them all.
"""

from __future__ import annotations

import selectors
import socket
import threading

from duplex.protocol.handler import HandlerFactory
from duplex.server.base import (
    ConnectionTracker,
    Driver,
    DriverOptions,
    UdpService,
    accept_connection,
    answer_datagrams,
    serve_blocking,
)
from duplex.server.listener import Listener

__all__ = ["ThreadDriver"]


class ThreadDriver(Driver):
    """A new thread for every accepted connection."""

    name = "thread"

    def __init__(
        self,
        listener: Listener,
        factory: HandlerFactory,
        options: DriverOptions | None = None,
        udp: UdpService | None = None,
    ) -> None:
        super().__init__(listener, factory, options, udp)
        self.tracker = ConnectionTracker()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._counter = 0

    @property
    def live_threads(self) -> int:
        """Connection threads alive now (tests check it returns to zero)."""
        with self._lock:
            return len(self._threads)

    def _run(self, conn: socket.socket) -> None:
        try:
            serve_blocking(conn, self.factory())
        finally:
            self.tracker.discard(conn)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _udp_loop(self) -> None:
        assert self.udp is not None
        sel = selectors.DefaultSelector()
        sel.register(self.udp.sock, selectors.EVENT_READ)
        try:
            while not self.stopping:
                if sel.select(0.2):
                    answer_datagrams(self.udp)
        finally:
            sel.close()

    def serve_forever(self) -> None:
        """Accepts on this thread and starts a thread per connection until shutdown."""
        sel = selectors.DefaultSelector()
        lsock = self.listener.sock
        lsock.setblocking(False)
        sel.register(lsock, selectors.EVENT_READ, "accept")
        sel.register(self._waker.fileno(), selectors.EVENT_READ, "wake")
        udp_thread = None
        if self.udp is not None:
            self.udp.sock.setblocking(False)
            udp_thread = threading.Thread(target=self._udp_loop, name="udp-echo")
            udp_thread.start()
        try:
            while not self.stopping:
                for key, _ in sel.select():
                    if key.data == "wake":
                        self._waker.drain()
                        continue
                    conn = accept_connection(lsock)
                    if conn is not None:
                        self.prepare_connection(conn)
                        self.tracker.add(conn)
                        self._counter += 1
                        thread = threading.Thread(
                            target=self._run, args=(conn,), name=f"conn-{self._counter}"
                        )
                        with self._lock:
                            self._threads.add(thread)
                        thread.start()
        finally:
            sel.close()
            self.stopping = True
            if udp_thread is not None:
                udp_thread.join()
            self.close_listener()
            self._finish()
            self._waker.close()

    def _finish(self) -> None:
        # Connections in flight get the grace period; then their sockets are shut
        # down, which ends each thread's blocking recv(); then every thread is joined.
        if not self.tracker.wait_empty(self.deadline):
            self.tracker.abort_all()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()
