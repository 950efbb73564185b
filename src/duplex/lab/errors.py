"""The errors of :mod:`duplex.lab`; they live in the one tree, :mod:`duplex.errors`."""

from __future__ import annotations

from duplex.errors import ExperimentError

__all__ = ["ExperimentError"]
