"""The experiments, by name, in the order the report tells them."""

from __future__ import annotations

import importlib
from typing import Any

from duplex.lab.common import Experiment
from duplex.lab.errors import ExperimentError

__all__ = ["EXPERIMENTS", "get_experiment", "names"]

EXPERIMENTS: dict[str, str] = {
    "iterative": "duplex.lab.iterative",
    "backlog": "duplex.lab.backlog",
    "ephemeral": "duplex.lab.ephemeral",
    "one-port": "duplex.lab.oneport",
    "select-limit": "duplex.lab.selectlimit",
    "threads-vs-cpus": "duplex.lab.threads",
    "socket-pair": "duplex.lab.socketpair",
    "fork-refcount": "duplex.lab.forkref",
    "lifecycle": "duplex.lab.lifecycle",
}
"""Experiment name to the module that defines its ``EXPERIMENT``."""


def names() -> list[str]:
    """Returns the experiment names in report order."""
    return list(EXPERIMENTS)


def get_experiment(name: str) -> Experiment[Any]:
    """Returns the experiment called ``name``.

    Raises:
        ExperimentError: no such experiment; the message lists them.
    """
    try:
        module = importlib.import_module(EXPERIMENTS[name])
    except KeyError:
        raise ExperimentError(
            f"unknown experiment {name!r}; choose from: {', '.join(EXPERIMENTS)}"
        ) from None
    experiment: Experiment[Any] = module.EXPERIMENT
    return experiment
