"""The socket server core: listeners and the nine concurrency-model drivers.

See DESIGN.md section 2. Models are looked up by name with
:func:`~duplex.server.base.get_driver_class` and imported lazily.
"""

from __future__ import annotations

from duplex.server.base import (
    MODELS,
    Driver,
    DriverOptions,
    UdpService,
    get_driver_class,
    model_names,
    register_model,
)
from duplex.server.listener import Listener, create_listener, raise_nofile_limit
from duplex.server.runner import ServerInfo, build_driver, run_driver, serve

__all__ = [
    "MODELS",
    "Driver",
    "DriverOptions",
    "Listener",
    "ServerInfo",
    "UdpService",
    "build_driver",
    "create_listener",
    "get_driver_class",
    "model_names",
    "raise_nofile_limit",
    "register_model",
    "run_driver",
    "serve",
]
