"""The prethreaded pool model (CSAPP's ``echoservert_pre`` with its ``sbuf``).

CSAPP's version hands each *connection* to a worker, which serves it to the end; with
N workers, client N+1 waits for a whole connection to finish, so a pool of 8 cannot
serve 100 long-lived clients at all. We keep its two parts, fixed workers and a
bounded hand-off buffer, but hand off *ready connections* instead (the half-sync /
half-async pattern): the main thread waits with epoll, each connection armed with
EPOLLONESHOT so at most one worker holds it at a time; a worker takes one ready
connection from the queue, does one ``recv`` and the handler's writes, and re-arms
it. Any number of connections share the N workers, and the workers still do all the
protocol work, which is what ``duplex lab threads-vs-cpus`` sweeps.

The hand-off queue is bounded (:data:`QUEUE_LIMIT`). Because of EPOLLONESHOT each
connection is in it at most once, so it fills only when more connections are ready
than it holds; the main thread then waits for room, and the kernel buffers the rest.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import threading
import time

from duplex.errors import DuplexError
from duplex.protocol.handler import Handler
from duplex.server.base import (
    BUFSIZE,
    Driver,
    accept_connection,
    answer_datagrams,
    pair_of,
    send_chunks,
)

__all__ = ["QUEUE_LIMIT", "PoolDriver"]

log = logging.getLogger("duplex.server")

QUEUE_LIMIT = 1024
"""Ready connections waiting for a worker, at most."""

_ARM = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT


class _Conn:
    __slots__ = ("fd", "handler", "pair", "registered", "sock", "writing")

    def __init__(self, sock: socket.socket, handler: Handler) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.handler = handler
        self.writing = True
        self.registered = False
        self.pair: object = None


class PoolDriver(Driver):
    """N worker threads serve ready connections handed over by one epoll thread."""

    name = "pool"

    @classmethod
    def default_workers(cls) -> int:
        """Four per CPU: enough to overlap a handler that waits, few enough to share."""
        return 4 * (os.cpu_count() or 1)

    def serve_forever(self) -> None:
        """Runs the epoll thread here and the workers beside it until shutdown."""
        nworkers = self.workers or 1
        self._ep = select.epoll()
        self._conns: dict[int, _Conn] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Conn | None] = queue.Queue(QUEUE_LIMIT)
        workers = [threading.Thread(target=self._work, name=f"pool-{i}") for i in range(nworkers)]
        for worker in workers:
            worker.start()
        lsock = self.listener.sock
        lsock.setblocking(False)
        lfd, wfd = lsock.fileno(), self._waker.fileno()
        ufd = -1
        self._ep.register(lfd, select.EPOLLIN)
        self._ep.register(wfd, select.EPOLLIN)
        if self.udp is not None:
            self.udp.sock.setblocking(False)
            ufd = self.udp.sock.fileno()
            self._ep.register(ufd, select.EPOLLIN)
        aborted = False
        try:
            while True:
                if self.stopping:
                    if lfd >= 0:
                        self._ep.unregister(lfd)
                        if ufd >= 0:
                            self._ep.unregister(ufd)
                        self.close_listener()
                        lfd = ufd = -1
                    with self._lock:
                        if not self._conns:
                            break
                    if not aborted and time.monotonic() >= self.deadline:
                        aborted = True
                        with self._lock:
                            socks = [c.sock for c in self._conns.values()]
                        for sock in socks:
                            try:
                                sock.shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass
                for fd, _ev in self._ep.poll(0.2 if self.stopping else -1):
                    if fd == wfd:
                        self._waker.drain()
                    elif fd == lfd:
                        self._accept(lsock)
                    elif fd == ufd:
                        assert self.udp is not None
                        answer_datagrams(self.udp)
                    else:
                        with self._lock:
                            conn = self._conns.get(fd)
                        if conn is not None:
                            self._hand_off(conn)
        finally:
            for _ in workers:
                self._queue.put(None)
            for worker in workers:
                worker.join()
            if lfd >= 0:
                self.close_listener()
            self._ep.close()
            self._waker.close()

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(64):  # drain a burst, but let other events in
            sock = accept_connection(lsock)
            if sock is None:
                return
            self.prepare_connection(sock)
            conn = _Conn(sock, self.factory())
            with self._lock:
                self._conns[conn.fd] = conn
            # The handler may have something to say first; let a worker start it.
            self._hand_off(conn)

    def _hand_off(self, conn: _Conn) -> None:
        while True:
            try:
                self._queue.put(conn, timeout=0.2)
                return
            except queue.Full:
                if self.stopping and time.monotonic() >= self.deadline:
                    self._close(conn)
                    return

    def _close(self, conn: _Conn) -> None:
        # Forget, unregister, then close: once the number is free the kernel may
        # hand it to the next accept(), which must not find this connection.
        with self._lock:
            if self._conns.get(conn.fd) is conn:
                del self._conns[conn.fd]
            if conn.registered:
                try:
                    self._ep.unregister(conn.fd)
                except (OSError, ValueError):
                    pass
        conn.sock.close()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("close %s", conn.pair)

    def _work(self) -> None:
        get = self._queue.get
        while True:
            conn = get()
            if conn is None:
                return
            if not self._step(conn):
                self._close(conn)
                continue
            try:
                # Re-arm: the connection goes back to the epoll thread.
                if conn.registered:
                    self._ep.modify(conn.fd, _ARM)
                else:
                    conn.registered = True
                    self._ep.register(conn.fd, _ARM)
            except OSError:
                self._close(conn)

    def _step(self, conn: _Conn) -> bool:
        """One unit of work on a ready connection; False when it is finished."""
        handler, sock = conn.handler, conn.sock
        try:
            if conn.pair is None:
                conn.pair = pair = pair_of(sock)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("open %s", pair)
                handler.on_connect(pair)
                conn.writing = send_chunks(sock, handler.data_to_send())
                return True
            data = sock.recv(BUFSIZE)
            if not data:
                handler.receive_eof()
                if conn.writing:
                    send_chunks(sock, handler.data_to_send())
                return False
            handler.receive_data(data)
            if conn.writing:
                conn.writing = send_chunks(sock, handler.data_to_send())
            return True
        except OSError as exc:
            log.debug("broken %s: %s", conn.pair, exc)
        except DuplexError as exc:
            log.info("closing %s: %s", conn.pair, exc)
        except Exception:
            log.exception("handler failed on %s", conn.pair)
        return False
