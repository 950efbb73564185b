"""The messenger hub: accounts, presence, relay, offline store, end-to-end acks.

It depends only on the :class:`~duplex.store.base.Store` and
:class:`~duplex.broker.base.Broker` protocols (DESIGN.md section 3).
"""

from __future__ import annotations

from duplex.hub.core import Hub, LiveSession
from duplex.hub.run import HubInfo, run_hub, serve_hub

__all__ = ["Hub", "HubInfo", "LiveSession", "run_hub", "serve_hub"]
