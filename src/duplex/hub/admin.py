"""The admin listener: ``GET /healthz`` and ``GET /metrics`` (Prometheus text format).

Off by default; when on, it binds to the address given (127.0.0.1 unless told
otherwise). A deliberately tiny HTTP/1.0 responder: one request per connection,
bounded request size and time, no keep-alive, nothing else exposed.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from duplex.errors import ConfigError
from duplex.hub.core import Hub
from duplex.server.listener import bind_error

__all__ = ["start_admin"]

log = logging.getLogger("duplex.hub")

MAX_REQUEST = 8192
"""Bytes of request head read at most."""


def _parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"admin address must be host:port, not {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def start_admin(hub: Hub, address: str) -> asyncio.Server:
    """Starts the admin listener on ``address`` (``host:port``; port 0 picks one).

    Raises:
        ConfigError: the address is malformed.
        BindError: it cannot be bound (in use, not a local address, privileged).
    """
    host, port = _parse_address(address)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        parts = head.split(b" ", 2)
        path = parts[1].decode("latin-1") if len(parts) > 1 else ""
        if parts[0] != b"GET":
            status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
        elif path == "/healthz":
            status, ctype, body = "200 OK", "text/plain", b"ok\n"
        elif path == "/metrics":
            status, ctype, body = (
                "200 OK",
                CONTENT_TYPE_LATEST,
                generate_latest(hub.metrics.registry),
            )
        else:
            status, ctype, body = "404 Not Found", "text/plain", b"try /healthz or /metrics\n"
        writer.write(
            f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
            + body
        )
        try:
            await writer.drain()
        except OSError:
            pass
        writer.close()

    try:
        return await asyncio.start_server(serve, host, port, limit=MAX_REQUEST)
    except OSError as exc:
        raise bind_error(exc, f"the admin listener's {address}") from exc
