"""The driver interface, the model registry, and the pieces every driver shares.

A *driver* is one concurrency model: it owns the listening socket, accepts, and runs
one fresh :class:`~duplex.protocol.handler.Handler` per connection. Drivers differ
only in how they wait (a blocking ``accept`` loop, a thread or process per connection,
a pool, ``select``/``epoll``, an event loop, several processes): the same handler runs
unchanged under each, so comparing models compares models and nothing else.

Models are chosen by name from :data:`MODELS`, imported lazily so that, say, the
``select`` model never imports asyncio.
"""

from __future__ import annotations

import abc
import dataclasses
import errno
import importlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from typing import ClassVar

from duplex.config import ListenerConfig
from duplex.errors import DuplexError, ServerError, UnknownModel
from duplex.protocol.handler import DatagramHandler, Endpoint, Handler, HandlerFactory, SocketPair
from duplex.server.listener import Listener, create_listener

__all__ = [
    "ACCEPT_OVERLOAD_ERRNOS",
    "BUFSIZE",
    "MODELS",
    "ConnectionTracker",
    "Driver",
    "DriverOptions",
    "ModelInfo",
    "UdpService",
    "Waker",
    "accept_connection",
    "answer_datagrams",
    "get_driver_class",
    "model_names",
    "pair_of",
    "register_model",
    "send_chunks",
    "serve_blocking",
]

log = logging.getLogger("duplex.server")

BUFSIZE = 65536
"""Bytes asked of each ``recv()``: one loopback segment burst, the asyncio default too."""

ACCEPT_OVERLOAD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""accept() failures that mean "the process or system is out of something", not "this
client is bad". The connection stays in the kernel's accept queue; we log, wait a
little, and try again (trio's serve_listeners does the same)."""

ACCEPT_CLIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN})
"""accept() failures caused by one client (it reset before we accepted): skip it."""

OVERLOAD_BACKOFF = 0.1
"""Seconds to wait after an overload error before accepting again."""


@dataclasses.dataclass(frozen=True, slots=True)
class DriverOptions:
    """What every driver is told besides its listener and handler factory."""

    workers: int = 0
    """Threads of ``pool``, processes of ``prefork``; 0 = the model's default."""

    grace: float = 5.0
    """Seconds connections in flight may take to finish after a graceful shutdown."""

    nodelay: bool = True
    """Set TCP_NODELAY on accepted TCP connections."""


@dataclasses.dataclass(slots=True)
class UdpService:
    """A bound UDP socket and the datagram handler that answers on it."""

    sock: socket.socket
    handler: DatagramHandler


class Waker:
    """A self-pipe: a signal handler or another thread wakes a blocking ``select()``.

    Writing one byte to a non-blocking pipe is async-signal-safe, which is why this
    works from a Python signal handler while the main thread sits in ``select()``.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_wakeup: int | None = None

    def catch_signals(self) -> None:
        """Makes every signal that has a Python handler wake the waiter as well.

        Python runs a signal handler between two bytecodes of the main thread. A
        signal that lands after the last such check but before the thread enters
        ``select()``/``epoll_wait()`` only sets a flag, and the handler waits for the
        next event: on an idle server, forever (CI caught a pool server ignoring its
        SIGTERM this way, about once in twenty loaded runs). With the pipe as the
        wakeup fd, the C-level handler writes the signal number into it, ``select()``
        returns and the handler runs. Main thread only; undone by :meth:`close`.
        """
        self._previous_wakeup = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)

    def fileno(self) -> int:
        """The read end, to register with a selector."""
        return self._r

    def wake(self) -> None:
        """Makes the read end readable (a full pipe is already readable)."""
        try:
            os.write(self._w, b"\0")
        except (BlockingIOError, OSError):
            pass

    def drain(self) -> None:
        """Empties the read end."""
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Closes both ends (and gives the wakeup fd back, if it took it)."""
        if self._previous_wakeup is not None:
            try:
                current = signal.set_wakeup_fd(self._previous_wakeup)
                if current != self._w:  # someone took it after us: leave theirs
                    signal.set_wakeup_fd(current)
            except ValueError:  # not the main thread: it was never ours here
                pass
            self._previous_wakeup = None
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


class ConnectionTracker:
    """The live connections of a threaded driver, so a shutdown can end them.

    Finished connections remove themselves, so nothing grows with the number of
    connections served (the leak of ``socketserver.ThreadingMixIn``'s ``_threads``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._empty = threading.Condition(self._lock)

    def add(self, sock: socket.socket) -> None:
        """Starts tracking ``sock``."""
        with self._lock:
            self._socks.add(sock)

    def discard(self, sock: socket.socket) -> None:
        """Stops tracking ``sock``; wakes :meth:`wait_empty` when none are left."""
        with self._lock:
            self._socks.discard(sock)
            if not self._socks:
                self._empty.notify_all()

    def __len__(self) -> int:
        with self._lock:
            return len(self._socks)

    def wait_empty(self, deadline: float) -> bool:
        """Waits until no connection is left or ``deadline`` (monotonic) passes."""
        with self._lock:
            while self._socks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._empty.wait(remaining)
            return True

    def abort_all(self) -> int:
        """Shuts down every live connection, which makes its blocked ``recv`` return.

        ``shutdown()`` rather than ``close()``: the descriptor stays valid, so the
        thread that owns it closes it and no other thread can race on a reused number.

        Returns:
            How many connections were aborted.
        """
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(socks)


def pair_of(sock: socket.socket) -> SocketPair:
    """Returns the connection's socket pair as the server sees it."""
    return SocketPair(
        client=Endpoint.from_sockaddr(sock.getpeername()),
        server=Endpoint.from_sockaddr(sock.getsockname()),
    )


def accept_connection(listener: socket.socket) -> socket.socket | None:
    """Accepts one connection, surviving overload.

    On an overload error (EMFILE, ENFILE, ENOBUFS, ENOMEM) it logs, sleeps for
    :data:`OVERLOAD_BACKOFF` so the loop does not spin on a queue it cannot drain, and
    returns None; the connection waits in the kernel's accept queue meanwhile.

    Returns:
        The connected socket, or None when there was nothing to accept, the client
        gave up first, or the process is out of resources.
    """
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in ACCEPT_OVERLOAD_ERRNOS:
            _log_overload(exc)
            time.sleep(OVERLOAD_BACKOFF)
            return None
        if exc.errno in ACCEPT_CLIENT_ERRNOS:
            return None
        raise
    return conn


_last_overload_log = 0.0


def _log_overload(exc: OSError) -> None:
    # One line a second at most: under overload, the log must not become the load.
    global _last_overload_log
    now = time.monotonic()
    if now - _last_overload_log >= 1.0:
        _last_overload_log = now
        log.warning(
            "accept() failed: %s (%s); backing off %.0f ms, connections wait in the accept queue",
            errno.errorcode.get(exc.errno or 0, "?"),
            exc.strerror,
            OVERLOAD_BACKOFF * 1000,
        )


def send_chunks(sock: socket.socket, chunks: Iterable[bytes]) -> bool:
    """Writes a handler's output on a blocking socket.

    Returns:
        False once the handler asked to stop sending (``b""``): the write side is then
        shut down and nothing more may be written.
    """
    for chunk in chunks:
        if chunk:
            sock.sendall(chunk)
        else:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return False
    return True


def serve_blocking(sock: socket.socket, handler: Handler) -> None:
    """Runs one connection to its end on a blocking socket, then closes the socket.

    Used by the iterative, fork and thread models. A peer that resets, or a handler
    that raises a protocol error, ends this connection only.
    """
    pair = None
    try:
        pair = pair_of(sock)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("open %s", pair)
        handler.on_connect(pair)
        writing = send_chunks(sock, handler.data_to_send())
        recv = sock.recv
        while True:
            data = recv(BUFSIZE)
            if not data:
                handler.receive_eof()
                if writing:
                    send_chunks(sock, handler.data_to_send())
                break
            handler.receive_data(data)
            if writing:
                writing = send_chunks(sock, handler.data_to_send())
    except OSError as exc:
        log.debug("broken %s: %s", pair, exc)
    except DuplexError as exc:
        log.info("closing %s: %s", pair, exc)
    except Exception:
        log.exception("handler failed on %s", pair)
    finally:
        sock.close()
        if pair is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("close %s", pair)


def answer_datagrams(service: UdpService, limit: int = 64) -> None:
    """Answers up to ``limit`` waiting datagrams on a non-blocking UDP socket."""
    sock, handler = service.sock, service.handler
    for _ in range(limit):
        try:
            data, addr = sock.recvfrom(BUFSIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. ECONNREFUSED from an earlier ICMP error
            log.debug("udp recvfrom: %s", exc)
            continue
        for payload, dest in handler.datagram_received(data, addr):
            try:
                sock.sendto(payload, dest)
            except OSError as exc:
                log.debug("udp sendto %s: %s", dest, exc)


class Driver(abc.ABC):
    """One concurrency model. Subclasses implement :meth:`serve_forever`.

    A driver is built by the runner after the listener is open, runs in the thread
    that calls :meth:`serve_forever`, and stops when :meth:`shutdown` is called from a
    signal handler or another thread.

    Attributes:
        name: the model's registry name.
        listener: the listening socket (closed by the driver when it stops).
        factory: makes a handler per connection.
        options: workers, grace period, TCP_NODELAY.
        udp: an optional datagram service answered on the same port.
    """

    name: ClassVar[str] = "?"
    summary: ClassVar[str] = ""

    def __init__(
        self,
        listener: Listener,
        factory: HandlerFactory,
        options: DriverOptions | None = None,
        udp: UdpService | None = None,
    ) -> None:
        self.listener = listener
        self.factory = factory
        self.options = options or DriverOptions()
        self.udp = udp
        self.stopping = False
        self.deadline = float("inf")
        self._waker = Waker()
        self._nodelay = self.options.nodelay and listener.sock.family in (
            socket.AF_INET,
            socket.AF_INET6,
        )

    @classmethod
    def open_listener(cls, config: ListenerConfig) -> Listener:
        """Creates the listener this model serves on (prefork overrides it)."""
        return create_listener(config)

    @classmethod
    def default_workers(cls) -> int | None:
        """Returns the default worker count, or None for models without workers."""
        return None

    @property
    def workers(self) -> int | None:
        """The worker count this driver runs with, or None for models without workers."""
        default = self.default_workers()
        if default is None:
            return None
        return self.options.workers or default

    def start(self) -> None:  # noqa: B027 - optional hook
        """Gets ready to accept before the server reports itself ready.

        Most models are ready once the listener is open; prefork waits here until
        every worker listens.
        """

    @abc.abstractmethod
    def serve_forever(self) -> None:
        """Accepts and serves connections until :meth:`shutdown`, then cleans up.

        Returns only when every connection, thread and child process it made is gone.
        """

    def shutdown(self) -> None:
        """Begins a graceful stop: no new connections; those in flight get the grace.

        Safe to call from a signal handler or another thread; later calls do nothing.
        """
        if self.stopping:
            return
        self.stopping = True
        self.deadline = time.monotonic() + self.options.grace
        self._waker.wake()

    @property
    def waker(self) -> Waker:
        """Wakes the driver's wait: written by :meth:`shutdown` and by caught signals."""
        return self._waker

    def kill(self) -> None:  # noqa: B027 - optional hook
        """Stops at once (the second signal): ends child processes; the caller exits."""

    def prepare_connection(self, conn: socket.socket) -> None:
        """Applies per-connection options (blocking mode, TCP_NODELAY)."""
        conn.setblocking(True)
        if self._nodelay:
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def close_listener(self) -> None:
        """Stops accepting: closes the listening socket (and the UDP socket)."""
        self.listener.close()
        if self.udp is not None:
            self.udp.sock.close()


@dataclasses.dataclass(frozen=True, slots=True)
class ModelInfo:
    """A registry entry: where a model's driver lives and what it is."""

    target: str
    """``"module:Class"`` of the driver, imported on first use."""
    summary: str
    """One line for ``--help`` and reports."""


MODELS: dict[str, ModelInfo] = {}
"""Every registered model, by name, in the order of the texts."""


def register_model(name: str, target: str, summary: str) -> None:
    """Registers a concurrency model (third parties may add their own).

    Args:
        name: the name users type after ``--model``.
        target: ``"package.module:DriverClass"``, imported lazily.
        summary: one line shown in ``--help``.
    """
    MODELS[name] = ModelInfo(target, summary)


def model_names() -> list[str]:
    """Returns the registered model names."""
    return list(MODELS)


def get_driver_class(name: str) -> type[Driver]:
    """Imports and returns the driver class of model ``name``.

    Raises:
        UnknownModel: no such model; the message lists the models.
        ServerError: the model's optional dependency (uvloop) is not installed.
    """
    try:
        info = MODELS[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
    module_name, _, attr = info.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ServerError(
            f"model {name!r} needs {exc.name}, which is not installed "
            f"(pip install 'duplex[{exc.name}]')"
        ) from exc
    cls: type[Driver] = getattr(module, attr)
    return cls


for _name, _target, _summary in (
    (
        "iterative",
        "duplex.server.iterative:IterativeDriver",
        "accept, serve that client to the end, accept the next (CSAPP echoserveri)",
    ),
    (
        "fork",
        "duplex.server.forking:ForkDriver",
        "a child process per connection; the parent closes connfd and reaps (echoserverp)",
    ),
    (
        "thread",
        "duplex.server.threaded:ThreadDriver",
        "a thread per connection, finished threads not retained (echoservert)",
    ),
    (
        "pool",
        "duplex.server.pool:PoolDriver",
        "prethreaded workers fed ready connections through a bounded queue (echoservert_pre)",
    ),
    (
        "select",
        "duplex.server.selector:SelectDriver",
        "one thread multiplexing with select(); refuses descriptors >= FD_SETSIZE (echoservers)",
    ),
    (
        "epoll",
        "duplex.server.selector:EpollDriver",
        "one thread multiplexing with epoll through selectors",
    ),
    ("asyncio", "duplex.server.aio:AsyncioDriver", "an asyncio Protocol on the default event loop"),
    ("uvloop", "duplex.server.uv:UvloopDriver", "the same asyncio Protocol on uvloop (libuv)"),
    (
        "prefork",
        "duplex.server.prefork:PreforkDriver",
        "N worker processes (default: CPUs), each with its own SO_REUSEPORT socket on the port",
    ),
):
    register_model(_name, _target, _summary)
