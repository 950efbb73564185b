"""The ``uvloop`` model: the asyncio model's Protocol on uvloop (libuv).

Imports uvloop at module level, so that choosing the model without uvloop installed
fails at once with an install hint (see :func:`duplex.server.base.get_driver_class`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import uvloop

from duplex.server.aio import AsyncioDriver

__all__ = ["UvloopDriver"]


class UvloopDriver(AsyncioDriver):
    """The asyncio Protocol driver on a uvloop event loop."""

    name = "uvloop"

    def _loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop]:
        return uvloop.new_event_loop
