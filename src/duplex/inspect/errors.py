"""The errors of :mod:`duplex.inspect`; they live in the one tree, :mod:`duplex.errors`."""

from __future__ import annotations

from duplex.errors import InspectError, NoSuchProcess, ProcFormatError

__all__ = ["InspectError", "NoSuchProcess", "ProcFormatError"]
