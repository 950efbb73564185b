"""Direct peer-to-peer links with fallback to the hub (DESIGN.md section 3, path 1)."""

from __future__ import annotations

from duplex.p2p.link import PeerLink
from duplex.p2p.router import DirectRouter

__all__ = ["DirectRouter", "PeerLink"]
