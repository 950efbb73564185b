"""duplex: a socket-server toolkit and a QQ-style messenger.

The layers, from the bottom: :mod:`duplex.wire` and :mod:`duplex.protocol` (sans-I/O),
:mod:`duplex.server` (the concurrency models), :mod:`duplex.services` (RFC 862 echo),
and the command line in :mod:`duplex.cli`. See DESIGN.md.
"""

from __future__ import annotations

from duplex._build import warn_if_stale
from duplex.errors import DuplexError

warn_if_stale()

__all__ = ["DuplexError", "__version__"]

__version__ = "0.1.0"
