"""What a load run is asked to do: the target and the load, validated once.

A run has two bounds and always stops by itself: ``duration`` (seconds of measured
load after the warm-up) and ``requests`` (measured requests in all). Either or both
may be given; with ``requests`` alone, :attr:`LoadSpec.time_limit` still bounds it.
A server that hangs cannot keep a run alive either: every request has a deadline
(``timeout``), and a connection whose request misses it is counted and closed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os

from duplex.errors import ConfigError, DuplexError

__all__ = ["BenchError", "LoadSpec", "Target", "parse_target"]


class BenchError(DuplexError):
    """A benchmark could not run (a generator process failed, a server did not start)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """An echo server to load: a TCP host and port.

    Attributes:
        host: an IP address literal or a name.
        port: the TCP port.
    """

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(text: str) -> Target:
    """Parses ``HOST:PORT`` (``[V6]:PORT`` for IPv6) into a :class:`Target`.

    Raises:
        ConfigError: not of that form, or the port is not in 1..65535.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise ConfigError(f"target {text!r} is not HOST:PORT (e.g. 127.0.0.1:7007)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"target {text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ConfigError(f"target {text!r}: write an IPv6 address in brackets, [::1]:7007")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"target {text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"target {text!r}: port {port} is not in 1..65535")
    return Target(host, port)


@dataclasses.dataclass(frozen=True, slots=True)
class LoadSpec:
    """The load of one run. Validated on creation (:class:`ConfigError` on bad values)."""

    connections: int = 10
    """Concurrent connections, spread over the generator processes."""

    size: int = 64
    """Bytes per request; the echo of every byte is checked."""

    pipeline: int = 1
    """Closed loop: requests in flight per connection. Open loop: the most in flight per
    connection before scheduled requests wait (they are still timed from their
    schedule, so waiting shows in the latency)."""

    rate: float | None = None
    """Requests per second in all: an open loop on a fixed schedule. None: closed loop."""

    duration: float | None = 5.0
    """Seconds of measured load after the warm-up; None with ``requests`` set."""

    requests: int | None = None
    """Measured requests in all; the run ends when they are answered (or fail)."""

    warmup: float = 1.0
    """Seconds of load before measuring; their requests are not in the results."""

    timeout: float = 5.0
    """Seconds a request (or a connect) may take before it counts as a timeout."""

    processes: int = 0
    """Generator processes; 0 picks one per generator CPU (at most one per connection)."""

    time_limit: float = 300.0
    """Seconds of measured load, at most, when ``duration`` is None."""

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ConfigError(f"connections must be at least 1, not {self.connections}")
        if self.size < 1:
            raise ConfigError(f"payload size must be at least 1 byte, not {self.size}")
        if self.size > 64 * 1024 * 1024:
            raise ConfigError(f"payload size {self.size} is above the 64 MiB limit")
        if self.pipeline < 1:
            raise ConfigError(f"pipeline depth must be at least 1, not {self.pipeline}")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError(f"rate must be above 0 requests/s, not {self.rate:g}")
        if self.duration is None and self.requests is None:
            raise ConfigError("give --duration or --requests (or both): a run needs a bound")
        if self.duration is not None and self.duration <= 0:
            raise ConfigError(f"duration must be above 0 s, not {self.duration:g}")
        if self.requests is not None and self.requests < 1:
            raise ConfigError(f"requests must be at least 1, not {self.requests}")
        if self.warmup < 0:
            raise ConfigError(f"warm-up cannot be negative ({self.warmup:g} s)")
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be above 0 s, not {self.timeout:g}")
        if self.processes < 0:
            raise ConfigError(f"processes cannot be negative ({self.processes})")
        if self.time_limit <= 0:
            raise ConfigError(f"time limit must be above 0 s, not {self.time_limit:g}")

    @property
    def mode(self) -> str:
        """``"closed"`` (send after each echo) or ``"open"`` (send on a fixed schedule)."""
        return "closed" if self.rate is None else "open"

    @property
    def measure_limit(self) -> float:
        """The most seconds the measured part of the run can last."""
        return self.duration if self.duration is not None else self.time_limit

    def replace(self, **changes: object) -> LoadSpec:
        """Returns a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def process_count(self, cpus: int | None = None) -> int:
        """Returns how many generator processes to run.

        Args:
            cpus: CPUs the generator may use; None counts this process's CPUs.
        """
        available = cpus if cpus is not None else len(os.sched_getaffinity(0))
        wanted = self.processes or available
        return max(1, min(wanted, self.connections))
