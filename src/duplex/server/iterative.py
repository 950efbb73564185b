"""The iterative model: one client at a time (CSAPP's ``echoserveri``).

The server accepts a connection, serves it until the client closes, and only then
accepts the next. Clients that connect meanwhile complete their handshake in the
kernel (the accept queue) and wait there: they are connected, but nobody reads what
they send until the first client is gone. ``duplex lab iterative`` measures that wait.

Datagrams (``--udp``) are answered between connections, on the same loop, which is
exactly what "iterative" means for them.
"""

from __future__ import annotations

import selectors
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

__all__ = ["IterativeDriver"]


class IterativeDriver(Driver):
    """Serves one connection at a time on the calling thread."""

    name = "iterative"

    def __init__(
        self,
        listener: Listener,
        factory: HandlerFactory,
        options: DriverOptions | None = None,
        udp: UdpService | None = None,
    ) -> None:
        super().__init__(listener, factory, options, udp)
        self._tracker = ConnectionTracker()
        self._grace_timer: threading.Timer | None = None

    def serve_forever(self) -> None:
        """Accept, serve to the end, accept the next, until shutdown."""
        tracker = self._tracker
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
                    elif key.data == "udp":
                        assert self.udp is not None
                        answer_datagrams(self.udp)
                    elif not self.stopping:
                        conn = accept_connection(lsock)
                        if conn is not None:
                            self.prepare_connection(conn)
                            tracker.add(conn)
                            try:
                                serve_blocking(conn, self.factory())
                            finally:
                                tracker.discard(conn)
        finally:
            sel.close()
            self.close_listener()
            self._cancel_timer()
            self._waker.close()

    def _cancel_timer(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer.join()

    def shutdown(self) -> None:
        """Stops accepting; the client being served gets the grace period.

        The only thread is busy in ``recv()`` for that client, so a timer ends the
        connection when the grace runs out (the timer is joined before we return).
        """
        if self.stopping:
            return
        super().shutdown()
        timer = threading.Timer(self.options.grace, self._tracker.abort_all)
        timer.daemon = True
        self._grace_timer = timer
        timer.start()
