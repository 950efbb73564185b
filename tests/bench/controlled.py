"""A misbehaving echo server with knobs, to check that the generator measures truly.

:class:`ControlledEchoServer` is a thread-per-connection echo server in the test
process. It can add a known delay to every echo, stall once (stop reading for a
while) after a given number of requests, corrupt one byte, hang (read and never
answer) or close a connection after some requests. Every misbehaviour is triggered
by the server's own request count, so the tests never sleep to line things up with
it; the server records when it happened, and the tests assert on what the generator
measured relative to that known, injected behaviour.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time

from duplex.bench.spec import Target

__all__ = ["ControlledEchoServer", "Knobs"]

POLL = 0.1
"""Seconds a blocking call waits before it looks at the stop flag again."""


@dataclasses.dataclass
class Knobs:
    """How the server misbehaves. Counts are of ``size``-byte requests, all connections."""

    size: int = 64
    """Request size, to count requests from bytes."""
    delay: float = 0.0
    """Seconds added before each echo."""
    stall_after: int | None = None
    """Stop reading, once, after this many requests were echoed..."""
    stall: float = 0.0
    """...for this many seconds."""
    corrupt_byte: int | None = None
    """Flip this byte (an offset into all echoed bytes of the first connection)."""
    hang: bool = False
    """Read everything, answer nothing."""
    close_after: int | None = None
    """Close the first connection after echoing this many requests on it."""


class ControlledEchoServer:
    """An echo server on 127.0.0.1 with :class:`Knobs`; stop it with :meth:`close`."""

    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.listener.settimeout(POLL)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.stalled = threading.Event()
        self.corrupted = threading.Event()
        self.lock = threading.Lock()
        self.echoed = 0  # bytes echoed, all connections
        self.stall_until = 0.0
        self.connections = 0
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []
        self.acceptor = threading.Thread(target=self._accept, name="controlled-accept")
        self.acceptor.start()

    @property
    def target(self) -> Target:
        """Where to send the load."""
        return Target("127.0.0.1", self.port)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(POLL)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                number = self.connections
                self.connections += 1
                self.socks.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn, number))
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        knobs = self.knobs
        mine = 0  # bytes echoed on this connection
        try:
            while not self.stopping.is_set():
                wait = self.stall_until - time.monotonic()
                if wait > 0:
                    # The stall: this connection stops reading until it is over.
                    self.stopping.wait(wait)
                    continue
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                if knobs.hang:
                    continue
                if knobs.delay:
                    self.stopping.wait(knobs.delay)
                out = bytearray(data)
                with self.lock:
                    if (
                        number == 0
                        and knobs.corrupt_byte is not None
                        and not self.corrupted.is_set()
                        and mine <= knobs.corrupt_byte < mine + len(out)
                    ):
                        out[knobs.corrupt_byte - mine] ^= 0xFF
                        self.corrupted.set()
                    self.echoed += len(out)
                    requests = self.echoed // knobs.size
                    if (
                        knobs.stall_after is not None
                        and requests >= knobs.stall_after
                        and not self.stalled.is_set()
                    ):
                        self.stall_until = time.monotonic() + knobs.stall
                        self.stalled.set()
                conn.sendall(out)
                mine += len(out)
                if (
                    number == 0
                    and knobs.close_after is not None
                    and mine >= knobs.close_after * knobs.size
                ):
                    return
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        """Stops accepting, ends every connection thread, closes every socket."""
        self.stopping.set()
        self.acceptor.join(10)
        self.listener.close()
        for thread in self.threads:
            thread.join(10)
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()
