"""TCP hole punching by simultaneous open.

Two peers behind NATs cannot accept connections from outside, but each NAT lets in
packets that belong to a connection its inside host opened. If both peers call
``connect()`` towards each other at the same moment, each SYN opens a mapping in its
own NAT, and the other's SYN then matches it; TCP's simultaneous open (RFC 793, the
SYN-SENT + SYN case) turns the two half-connections into one. This works only if each
NAT maps the punching socket to the *same* public port the hub saw, which is why the
socket binds the local address and port of the hub connection (SO_REUSEADDR and
SO_REUSEPORT make that legal while the hub connection is open). Linux's masquerade
keeps the source port when it can (endpoint-independent mapping); with
``masquerade random`` (a symmetric NAT) the ports differ, and the attempt times out
within the budget, as it must, so the hub relays.

A SYN that arrives before the other side's own SYN left may be answered with a RST
(a NAT that does not drop unsolicited packets) or dropped; either way we try again
with a fresh socket until the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

__all__ = ["punch_socket"]

RETRY = 0.1
"""Seconds between attempts after a refusal."""

ATTEMPT = 0.5
"""Seconds one attempt may take (a dropped SYN is retried by the kernel only after 1 s)."""


def _bound_socket(local: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setblocking(False)
    sock.bind(local)
    return sock


async def punch_socket(
    local: tuple[str, int],
    remote: tuple[str, int],
    deadline: float,
    loop: asyncio.AbstractEventLoop,
) -> socket.socket | None:
    """Connects from ``local`` to ``remote`` until it works or ``deadline`` passes.

    Args:
        local: the hub connection's local (address, port).
        remote: the peer's public (address, port) as the hub saw it.
        deadline: ``loop.time()`` after which we give up.
        loop: the running loop.

    Returns:
        The connected socket, or None.
    """
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            sock = _bound_socket(local)
        except OSError:
            return None
        try:
            await asyncio.wait_for(loop.sock_connect(sock, remote), min(ATTEMPT, remaining))
        except (OSError, TimeoutError):
            sock.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.sleep(min(RETRY, max(0.0, deadline - loop.time())))
            continue
        return sock
