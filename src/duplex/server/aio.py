"""Event-loop models: an asyncio ``Protocol`` on asyncio's loop or on uvloop.

The protocol class is the thinnest possible driver: ``data_received`` feeds the handler
and writes what it returns, with no streams, no tasks and no per-message allocation
beyond the handler's own. Write backpressure is the transport's: when its buffer
passes the high-water mark it calls ``pause_writing``, and we stop reading from that
connection until it drains (asyncio's ``FlowControlMixin`` does the same for streams).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from duplex.errors import DuplexError
from duplex.protocol.handler import DatagramHandler, Endpoint, Handler, SocketPair
from duplex.server.base import Driver

__all__ = ["AsyncioDriver", "HandlerProtocol", "serve_on_loop"]

log = logging.getLogger("duplex.server")

READ_SIZE = 65536
"""Bytes asked of each read on asyncio's transports (see connection_made)."""


class _Live:
    """The open connections of one server, and an event set while there are none."""

    __slots__ = ("_protos", "idle")

    def __init__(self) -> None:
        self._protos: set[HandlerProtocol] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    def add(self, proto: HandlerProtocol) -> None:
        self._protos.add(proto)
        self.idle.clear()

    def discard(self, proto: HandlerProtocol) -> None:
        self._protos.discard(proto)
        if not self._protos:
            self.idle.set()

    def __iter__(self) -> Iterator[HandlerProtocol]:
        return iter(list(self._protos))


class HandlerProtocol(asyncio.Protocol):
    """Runs one :class:`~duplex.protocol.handler.Handler` on an asyncio transport."""

    __slots__ = ("_eof", "_handler", "_live", "_pair", "_transport")

    def __init__(self, handler: Handler, live: _Live) -> None:
        self._handler = handler
        self._live = live
        self._eof = False
        self._transport: asyncio.Transport | None = None
        self._pair: SocketPair | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, hence a cast, not a check.
        self._transport = transport = cast(asyncio.Transport, transport)
        if getattr(transport, "max_size", 0) > READ_SIZE:
            # asyncio reads into a fresh 256 KiB buffer per recv(), above glibc's mmap
            # threshold: every read cost an mmap, mremap and munmap (a 4.5x slowdown
            # the bench found until glibc raised its threshold). 64 KiB stays on the heap.
            transport.max_size = READ_SIZE  # type: ignore[attr-defined]
        self._live.add(self)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self._pair = pair = SocketPair(Endpoint.from_sockaddr(peer), Endpoint.from_sockaddr(local))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("open %s", pair)
        try:
            self._handler.on_connect(pair)
        except Exception as exc:
            self._fail(exc)
            return
        self._flush()

    def data_received(self, data: bytes) -> None:
        handler = self._handler
        try:
            handler.receive_data(data)
            out = handler.data_to_send()
        except Exception as exc:
            self._fail(exc)
            return
        # The hot path: one chunk in, one chunk out.
        if len(out) == 1 and out[0]:
            self._transport.write(out[0])  # type: ignore[union-attr]
        elif out:
            self._write(out)

    def eof_received(self) -> bool:
        self._eof = True
        try:
            self._handler.receive_eof()
        except Exception as exc:
            self._fail(exc)
            return False
        self._flush()
        return True  # keep the transport open; we close it once our side is done

    def _flush(self) -> None:
        try:
            out = self._handler.data_to_send()
        except Exception as exc:
            self._fail(exc)
            return
        if out:
            self._write(out)

    def _write(self, out: list[bytes]) -> None:
        transport = self._transport
        assert transport is not None
        for chunk in out:
            if chunk:
                transport.write(chunk)
            elif self._eof or not transport.can_write_eof():
                transport.close()  # flushes the buffer first
                return
            else:
                transport.write_eof()

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, DuplexError):
            log.info("closing %s: %s", self._pair, exc)
        else:
            log.error("handler failed on %s", self._pair, exc_info=exc)
        if self._transport is not None:
            self._transport.abort()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("close %s%s", self._pair, f": {exc}" if exc else "")

    def abort(self) -> None:
        """Drops the connection at once (the end of a grace period)."""
        if self._transport is not None:
            self._transport.abort()


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: DatagramHandler, sock: socket.socket) -> None:
        self._handler = handler
        self._sock = sock
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self._transport is not None
        for payload, dest in self._handler.datagram_received(data, addr):
            if payload:
                self._transport.sendto(payload, dest)
            else:
                # asyncio's sendto() silently drops an empty datagram, but an empty
                # datagram is a datagram, and RFC 862 answers every one.
                try:
                    self._sock.sendto(payload, dest)
                except OSError as exc:
                    log.debug("udp sendto %s: %s", dest, exc)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp: %s", exc)


async def serve_on_loop(driver: Driver, stop: asyncio.Event) -> None:
    """Serves ``driver``'s listener on the running loop until ``stop`` is set.

    Then stops accepting, gives connections in flight the driver's grace period, and
    aborts the rest. Used by the asyncio and uvloop models and by prefork workers.
    """
    loop = asyncio.get_running_loop()
    live = _Live()
    factory = driver.factory

    def make_protocol() -> HandlerProtocol:
        return HandlerProtocol(factory(), live)

    # A signal caught just before the loop sleeps writes to the waker (see
    # Waker.catch_signals); reading it wakes the loop so the Python handler runs.
    waker = driver.waker
    loop.add_reader(waker.fileno(), waker.drain)
    sock = driver.listener.sock
    sock.setblocking(False)
    # Pass the backlog: asyncio calls listen() again and would otherwise use 100.
    if sock.family == socket.AF_UNIX:
        server = await loop.create_unix_server(
            make_protocol, sock=sock, backlog=driver.listener.backlog
        )
    else:
        server = await loop.create_server(make_protocol, sock=sock, backlog=driver.listener.backlog)
    udp_transport = None
    if driver.udp is not None:
        driver.udp.sock.setblocking(False)
        handler, udp_sock = driver.udp.handler, driver.udp.sock
        udp_transport, _ = await loop.create_datagram_endpoint(
            lambda: _DatagramProtocol(handler, udp_sock), sock=udp_sock
        )
    await stop.wait()
    server.close()
    if udp_transport is not None:
        udp_transport.close()
    # The driver's deadline is time.monotonic(), and so is loop.time() by default.
    remaining = max(0.0, driver.deadline - time.monotonic())
    try:
        await asyncio.wait_for(live.idle.wait(), remaining)
    except TimeoutError:
        for proto in live:
            proto.abort()
    await asyncio.sleep(0)  # let connection_lost run
    await server.wait_closed()
    loop.remove_reader(waker.fileno())


class AsyncioDriver(Driver):
    """An asyncio Protocol on asyncio's default event loop."""

    name = "asyncio"

    def _loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop]:
        return asyncio.new_event_loop

    def serve_forever(self) -> None:
        """Runs the event loop on this thread until shutdown."""
        with asyncio.Runner(loop_factory=self._loop_factory()) as runner:
            # The event first: a SIGTERM between the two found the loop and no event
            # (AttributeError in the handler, exit status 1; seen about once in 20).
            self._stop = asyncio.Event()
            self._loop = runner.get_loop()
            if self.stopping:
                self._stop.set()
            try:
                runner.run(serve_on_loop(self, self._stop))
            finally:
                self.close_listener()
                self._waker.close()

    def shutdown(self) -> None:
        """Begins a graceful stop; safe from a signal handler or another thread."""
        if self.stopping:
            return
        super().shutdown()
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
