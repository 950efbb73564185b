"""I/O multiplexing models: ``select`` (CSAPP's ``echoservers``) and ``epoll``.

One thread, no blocking calls: the loop asks the kernel which descriptors are ready
and does only the work that will not block. Each connection keeps a buffer of bytes
the handler produced but the socket would not take yet; while that buffer is above
:data:`HIGH_WATER` we stop reading from the connection (backpressure: a client that
does not read its echo cannot make us buffer without bound).

``select()`` takes bitmaps of FD_SETSIZE (1024) bits: a descriptor numbered 1024 or
above cannot be watched at all (glibc's ``FD_SET`` would write past the bitmap;
CPython refuses with ``ValueError``). The ``select`` model therefore refuses such a
connection with a logged reason and keeps serving the others; ``epoll`` has no such
limit. ``duplex lab select-limit`` shows the cliff.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time

from duplex.errors import DuplexError
from duplex.protocol.handler import Handler, SocketPair
from duplex.server.base import (
    BUFSIZE,
    Driver,
    accept_connection,
    answer_datagrams,
    pair_of,
)

__all__ = ["FD_SETSIZE", "HIGH_WATER", "EpollDriver", "SelectDriver"]

log = logging.getLogger("duplex.server")

FD_SETSIZE = 1024
"""The size of select()'s descriptor bitmaps in glibc (``<sys/select.h>``)."""

HIGH_WATER = 1 << 20
"""Unsent bytes per connection above which we stop reading from it."""

_R = selectors.EVENT_READ
_W = selectors.EVENT_WRITE


class _Conn:
    """One non-blocking connection: socket, handler, unsent bytes, and both directions."""

    __slots__ = ("events", "handler", "out", "pair", "read_open", "shut_after_flush", "sock")

    def __init__(self, sock: socket.socket, handler: Handler, pair: SocketPair) -> None:
        self.sock = sock
        self.handler = handler
        self.pair = pair
        self.out = bytearray()
        self.read_open = True
        self.shut_after_flush = False  # the handler sent b"": shut down once flushed
        self.events = _R


class _ReactorDriver(Driver):
    """The shared loop; subclasses pick the selector class."""

    selector_class: type[selectors.BaseSelector] = selectors.DefaultSelector
    fd_limit: int | None = None

    def serve_forever(self) -> None:
        """Runs the single-threaded event loop until shutdown and drain."""
        sel = self.selector_class()
        self._sel = sel
        self._conns: dict[int, _Conn] = {}
        lsock = self.listener.sock
        lsock.setblocking(False)
        sel.register(lsock, _R, None)
        sel.register(self._waker.fileno(), _R, "wake")
        if self.udp is not None:
            self.udp.sock.setblocking(False)
            sel.register(self.udp.sock, _R, "udp")
        listening = True
        aborted = False
        try:
            while True:
                if self.stopping:
                    if listening:
                        listening = False
                        sel.unregister(lsock)
                        if self.udp is not None:
                            sel.unregister(self.udp.sock)
                        self.close_listener()
                    if not self._conns:
                        break
                    if not aborted and time.monotonic() >= self.deadline:
                        aborted = True
                        for conn in list(self._conns.values()):
                            self._close(conn)
                        break
                for key, mask in sel.select(0.2 if self.stopping else None):
                    data = key.data
                    if data is None:
                        self._accept(lsock)
                    elif data == "wake":
                        self._waker.drain()
                    elif data == "udp":
                        assert self.udp is not None
                        answer_datagrams(self.udp)
                    else:
                        if mask & _W:
                            self._on_writable(data)
                        if mask & _R and data.sock.fileno() >= 0:
                            self._on_readable(data)
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            sel.close()
            if listening:
                self.close_listener()
            self._waker.close()

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(64):
            sock = accept_connection(lsock)
            if sock is None:
                return
            if self.fd_limit is not None and sock.fileno() >= self.fd_limit:
                log.warning(
                    "refusing a connection: its descriptor %d is >= FD_SETSIZE (%d), "
                    "which select() cannot watch; use the epoll model for more clients",
                    sock.fileno(),
                    self.fd_limit,
                )
                sock.close()
                continue
            self.prepare_connection(sock)
            sock.setblocking(False)
            try:
                pair = pair_of(sock)
            except OSError:
                sock.close()
                continue
            conn = _Conn(sock, self.factory(), pair)
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, _R, conn)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("open %s", pair)
            try:
                conn.handler.on_connect(pair)
            except Exception as exc:
                self._fail(conn, exc)
                continue
            self._collect(conn)

    def _collect(self, conn: _Conn) -> None:
        """Moves the handler's output into the buffer and tries to send it now."""
        for chunk in conn.handler.data_to_send():
            if chunk:
                if not conn.shut_after_flush:
                    conn.out += chunk
            else:
                conn.shut_after_flush = True
        self._on_writable(conn)

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(BUFSIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("broken %s: %s", conn.pair, exc)
            self._close(conn)
            return
        try:
            if data:
                conn.handler.receive_data(data)
            else:
                conn.read_open = False
                conn.handler.receive_eof()
        except Exception as exc:
            self._fail(conn, exc)
            return
        self._collect(conn)

    def _on_writable(self, conn: _Conn) -> None:
        sock = conn.sock
        if conn.out:
            try:
                sent = sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                log.debug("broken %s: %s", conn.pair, exc)
                self._close(conn)
                return
            del conn.out[:sent]
        if not conn.out and conn.shut_after_flush:
            if not conn.read_open:
                self._close(conn)
                return
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self._update_interest(conn)

    def _update_interest(self, conn: _Conn) -> None:
        events = 0
        if conn.read_open and len(conn.out) < HIGH_WATER:
            events |= _R
        if conn.out:
            events |= _W
        if events != conn.events:
            conn.events = events
            if events:
                self._sel.modify(conn.sock, events, conn)
            else:
                # Nothing to read (EOF seen) and nothing to write: wait for nothing.
                self._sel.unregister(conn.sock)
                if not conn.read_open:
                    self._close(conn, registered=False)

    def _fail(self, conn: _Conn, exc: Exception) -> None:
        if isinstance(exc, DuplexError):
            log.info("closing %s: %s", conn.pair, exc)
        else:
            log.error("handler failed on %s", conn.pair, exc_info=exc)
        self._close(conn)

    def _close(self, conn: _Conn, registered: bool = True) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        self._conns.pop(fd, None)
        if registered and conn.events:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("close %s", conn.pair)


class SelectDriver(_ReactorDriver):
    """One thread, ``select(2)``; refuses descriptors at or above FD_SETSIZE."""

    name = "select"
    selector_class = selectors.SelectSelector
    fd_limit = FD_SETSIZE


class EpollDriver(_ReactorDriver):
    """One thread, ``epoll(7)`` through :mod:`selectors`."""

    name = "epoll"
    selector_class = selectors.EpollSelector
