"""Test support shipped with duplex: server fixtures and the driver conformance suite.

Third parties who write a concurrency model can run :mod:`duplex.testing.conformance`
against it unchanged.
"""

from __future__ import annotations

from duplex.testing.servers import EchoServerProcess, free_port, scaled

__all__ = ["EchoServerProcess", "free_port", "scaled"]
