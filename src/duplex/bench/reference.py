"""The physical references, C programs built on demand.

``benchmarks/reference/echo_epoll.c`` is what a concurrency model would cost if the
model cost nothing: one epoll loop, no allocation per request. ``--reference`` builds
it with the machine's C compiler (``$CC``, else ``cc``, else ``gcc``) into the user's
cache directory, keyed by a hash of the source and the compiler, so it is compiled
once and never committed. Every report can then give each model as a ratio of it.

``benchmarks/reference/mqtt_pairs.c`` is the messenger's yardstick: an MQTT broker
(mosquitto) driven the way ``benchmarks/hub_relay.py`` drives the hub, by a C client,
so that the hub's figures come with the broker's from the same run
(:func:`run_mqtt_pairs`). ``benchmarks/reference/hub_pairs.c`` drives the hub itself
the same way, with the same kind of client (:func:`duplex.bench.chat.run_relay_native`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import platformdirs

import duplex
from duplex.bench.spec import BenchError

__all__ = [
    "HUB_PAIRS",
    "MQTT_PAIRS",
    "build_reference",
    "find_compiler",
    "find_reference_source",
    "listener_pid",
    "parse_broker",
    "run_mqtt_pairs",
]

SOURCE_ENV = "DUPLEX_REFERENCE_SOURCE"
"""An environment variable that names the echo server's C source, for installs outside
the checkout (the other sources are looked for beside it)."""

ECHO_EPOLL = "echo_epoll.c"
MQTT_PAIRS = "mqtt_pairs.c"
HUB_PAIRS = "hub_pairs.c"

CFLAGS = ("-O2", "-Wall")
"""Compiler flags of the reference build."""


def find_reference_source(name: str = ECHO_EPOLL) -> Path:
    """Returns the path of a reference's C source (``echo_epoll.c`` by default).

    Looks beside ``$DUPLEX_REFERENCE_SOURCE`` (which names ``echo_epoll.c``), then in
    ``benchmarks/reference/`` of the checkout that holds this duplex package.

    Raises:
        BenchError: the source cannot be found.
    """
    override = os.environ.get(SOURCE_ENV)
    if override:
        path = Path(override)
        if name != ECHO_EPOLL:
            path = path.with_name(name)
        if path.is_file():
            return path
        raise BenchError(f"${SOURCE_ENV} names {override}, and {path} is not a file")
    here = Path(duplex.__file__).resolve()
    for parent in here.parents:
        candidate = parent / "benchmarks" / "reference" / name
        if candidate.is_file():
            return candidate
    raise BenchError(
        f"cannot find benchmarks/reference/{name} next to the duplex package; "
        f"set ${SOURCE_ENV} to the path of {ECHO_EPOLL} there"
    )


def find_compiler() -> str:
    """Returns the C compiler the references are built with.

    Raises:
        BenchError: none of ``$CC``, cc, gcc or clang is on the PATH.
    """
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise BenchError(
        "the C programs of benchmarks/reference need a C compiler (cc, gcc or clang; or set $CC)"
    )


def build_reference(
    cache_dir: Path | None = None, source: Path | None = None, name: str = ECHO_EPOLL
) -> Path:
    """Compiles a C reference unless an up-to-date build is cached.

    Args:
        cache_dir: where to keep the binary; by default the user's cache directory.
        source: the C file; by default ``find_reference_source(name)``.
        name: which reference: :data:`ECHO_EPOLL` (default), :data:`MQTT_PAIRS` or
            :data:`HUB_PAIRS`.

    Returns:
        The path of the executable.

    Raises:
        BenchError: no compiler, no source, or the build failed.
    """
    source = source or find_reference_source(name)
    stem = source.stem
    compiler = find_compiler()
    code = source.read_bytes()
    key = hashlib.sha256(code + compiler.encode() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    cache = cache_dir or Path(platformdirs.user_cache_dir("duplex")) / "reference"
    cache.mkdir(parents=True, exist_ok=True)
    binary = cache / f"{stem}-{key}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    # Build beside the final name and rename: two benches building at once never run
    # a half-written binary.
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", dir=cache)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *CFLAGS, "-o", tmp, str(source)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise BenchError(
                f"building the C reference failed ({compiler}): {detail[-1] if detail else '?'}"
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"building the C reference failed: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return binary


def parse_broker(text: str) -> tuple[str, int]:
    """``host:port`` of an MQTT broker, checked.

    Raises:
        BenchError: not a host and a port in 1..65535.
    """
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BenchError(f"an MQTT broker is HOST:PORT, not {text!r}")
    return host, int(port)


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` on this machine, or None (a
    broker on another host, or not allowed to see it)."""
    import psutil

    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return int(conn.pid) if conn.pid is not None else None
    return None


def run_mqtt_pairs(
    broker: str,
    *,
    pairs: int = 100,
    window: int = 1,
    qos: int = 1,
    payload: int = 64,
    duration: float = 5.0,
    warmup: float = 1.0,
    cpu: int | None = None,
) -> dict[str, float]:
    """Runs the MQTT reference client against ``broker`` (``host:port``) and returns
    its figures: ``msgs_per_s``, ``p50_ms``, ``p99_ms``, ``max_ms`` and ``cpu`` (the
    client's, in cores); and, when the broker runs on this machine, ``broker_us``: its
    CPU time per message (the whole run, warm-up included, over its messages).

    Args:
        broker: the MQTT broker's IPv4 address and port.
        pairs, window, payload, duration, warmup: as ``hub_relay.py``'s.
        qos: 1 (the broker acknowledges each publish) or 0.
        cpu: pin the client to this CPU.

    Raises:
        BenchError: no compiler, the broker is unreachable or refused us, or the
            client failed.
    """
    host, port = parse_broker(broker)
    binary = build_reference(name=MQTT_PAIRS)
    args = [str(binary), "-h", host, "-p", str(port), "-n", str(pairs), "-W", str(window)]
    args += ["-q", str(qos), "-s", str(max(8, payload)), "-d", str(duration), "-w", str(warmup)]
    if cpu is not None:
        args += ["-c", str(cpu)]
    pid = listener_pid(port)
    before = _cpu_or_none(pid)
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=duration + warmup + 60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"the MQTT reference client failed: {exc}") from exc
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        raise BenchError(detail[-1] if detail else f"mqtt_pairs exited {done.returncode}")
    after = _cpu_or_none(pid)
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(f"mqtt_pairs printed no result: {done.stdout[:200]!r}") from exc
    figures = {key: float(value) for key, value in result.items()}
    messages = figures.get("msgs_per_s", 0.0) * (duration + warmup)
    if before is not None and after is not None and messages > 0:
        figures["broker_us"] = (after - before) / messages * 1e6
    return figures


def _cpu_or_none(pid: int | None) -> float | None:
    if pid is None:
        return None
    from duplex.bench.machine import process_cpu_seconds

    try:
        return process_cpu_seconds(pid)
    except Exception:  # gone, or not ours to read: the figure is left out
        return None
