"""Presence and cross-node routing behind the :class:`~duplex.broker.base.Broker` protocol."""

from __future__ import annotations

from duplex.broker.base import Broker, Routed, SessionInfo
from duplex.broker.local import LocalBroker
from duplex.errors import ConfigError

__all__ = ["Broker", "LocalBroker", "Routed", "SessionInfo", "open_broker"]


def open_broker(url: str, node: str, *, ttl: float = 15.0) -> Broker:
    """Returns the broker for ``url``: ``local`` or ``redis://host:port/db[?prefix=p:]``.

    Args:
        url: the broker's location.
        node: this node's id.
        ttl: seconds a node's sessions keep counting after its last refresh (Redis;
            the hub passes its ``grace``).

    Raises:
        ConfigError: an unknown scheme, or the Redis backend is not installed.
    """
    if url in ("", "local"):
        return LocalBroker(node)
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from duplex.broker.redis import RedisBroker
        except ImportError as exc:
            raise ConfigError(
                f"the redis broker needs the redis package: pip install 'duplex[cluster]' ({exc})"
            ) from exc
        broker: Broker = RedisBroker(url, node, ttl=ttl)
        return broker
    raise ConfigError(f"unknown broker {url!r}: use 'local' or redis://host:port/db")
