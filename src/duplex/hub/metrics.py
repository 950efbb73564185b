"""The hub's Prometheus metrics, on a registry of its own (one per hub object).

The counters that move with every message (stored, pushed, delivered, duplicates) are
plain integers read at scrape time by a collector: prometheus-client's own counters
take a lock on every increment, which the profile showed at several per cent of the
hub's time per message. Rare events keep the library's labelled counters.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["FastCounter", "HubMetrics"]


class FastCounter:
    """A counter for the event loop's thread only: an int, no lock."""

    __slots__ = ("documentation", "name", "value")

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        """Adds ``amount``."""
        self.value += amount


class _FastCollector(Collector):
    def __init__(self, counters: list[FastCounter]) -> None:
        self.counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        for counter in self.counters:
            yield CounterMetricFamily(counter.name, counter.documentation, value=counter.value)


class HubMetrics:
    """Counters and gauges of one hub; ``/metrics`` renders :attr:`registry`."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.connections = Gauge("duplex_connections", "Open client connections", registry=r)
        self.sessions = Gauge(
            "duplex_sessions_online", "Logged-in sessions on this node", registry=r
        )
        self.users_online = Gauge(
            "duplex_users_online", "Users with a session on this node", registry=r
        )
        self.stored = FastCounter("duplex_messages_stored", "Messages stored (new, not resends)")
        self.duplicates = FastCounter("duplex_messages_duplicate", "Resent message ids stored once")
        self.delivered = FastCounter(
            "duplex_messages_delivered", "Messages acked by their recipient"
        )
        self.pushed = FastCounter("duplex_entries_pushed", "Mailbox entries pushed to sessions")
        r.register(_FastCollector([self.stored, self.duplicates, self.delivered, self.pushed]))
        self.pending = Gauge(
            "duplex_messages_pending", "Messages stored but not yet acked", registry=r
        )
        self.messages_total = Gauge("duplex_messages_total", "Messages in the store", registry=r)
        self.refused = Counter("duplex_refusals", "Requests refused, by code", ["code"], registry=r)
        self.logins = Counter("duplex_logins", "Logins, by outcome", ["outcome"], registry=r)
        self.introductions = Counter("duplex_introductions", "Introductions made", registry=r)
        self.direct = Counter(
            "duplex_direct_reports",
            "Direct-path outcomes reported by clients, by cause",
            ["outcome"],
            registry=r,
        )
