"""Slowloris against the hub and against every echo model.

Thousands of connections (:mod:`duplex.testing.slowloris`: half never send a byte,
half trickle one every two seconds, each reopened a second after the server closes
it) are held against a server while a legitimate client measures its latency; the
same client measures it unloaded first, in the same test.

The claim: the legitimate p99 stays within 2x the unloaded figure, and the server's
descriptors (and processes) return to their baseline once the attack stops.

The tolerance, and why: on this shared 2-core machine the attacker, the server and
the client share two cores, and an unloaded echo p99 is 0.1-0.5 ms, where one
scheduler hiccup is worth more than the figure itself. So the bound is 2x
``max(unloaded p99, 5 ms)`` (10 ms under ``fork``, whose children run at
nice 19): an attack that works (connections refused, or service
held up for a second, as slowloris does to a server that gives each connection a
worker) is caught by orders of magnitude; scheduler noise is not.

Two models cannot meet the claim by construction, and the test asserts their
documented behaviour instead:

* ``iterative`` serves one client to the end before it accepts the next (CSAPP's
  echoserveri): one idle attacker holds it, and nobody else is served until the
  attack stops;
* ``select`` refuses a connection whose descriptor is at or above FD_SETSIZE (1024),
  with a logged reason: with the attacker holding the low descriptors, *new* clients
  are refused; a client connected before the attack keeps its p99.

``DUPLEX_CHAOS=long``: 10,000 connections (4,000 for ``fork``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from pathlib import Path

import psutil
import pytest

from duplex.client import MessageReceived
from duplex.inspect.procnet import TcpState
from duplex.inspect.readers import read_tcp
from duplex.server.base import model_names
from duplex.testing.chaos import long_run, note
from duplex.testing.clients import EventLog, new_client
from duplex.testing.hubs import HubProcess
from duplex.testing.servers import EchoServerProcess
from duplex.testing.slowloris import SlowlorisProcess

CONNECTIONS = 10_000 if long_run() else 2000
FORK_CONNECTIONS = min(CONNECTIONS, 4000)
"""A process per connection: 10,000 forked children would take most of this machine's
memory (about 1 MB each), so ``fork`` gets at most 4,000."""
SOURCES = [f"127.0.0.{i}" for i in range(2, 6)]
FLOOR_MS = 5.0
"""Below this, a p99 is scheduler noise on a shared 2-core machine (module docstring)."""


FORK_FLOOR_MS = 10.0
"""The floor under ``fork``, whose connection processes run at nice 19 by design (so
that the acceptor keeps the CPU, see ``server/forking.py``): every nice-0 process on
the machine, the attacker and this test included, runs before the legitimate client's
child, so one scheduler period more is noise there too (CI saw 10.5 ms against an
unloaded 4.3 ms). A working attack costs seconds or refusals: still caught."""


def allowed(unloaded_ms: float, floor_ms: float = FLOOR_MS) -> float:
    """The loaded p99 a legitimate client may see: 2x the unloaded one, floored."""
    return 2 * max(unloaded_ms, floor_ms)


@dataclasses.dataclass
class Latency:
    """Round-trip samples of a legitimate client."""

    samples: list[float]
    failures: int

    @property
    def p99(self) -> float:
        """The 99th percentile, in ms."""
        ordered = sorted(self.samples)
        return ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000 if ordered else float("inf")


def legit(
    address: tuple[str, int], sessions: int = 20, per: int = 25, timeout: float = 2.0
) -> Latency:
    """``sessions`` new connections of ``per`` 64-byte echoes each; the first sample of a
    session includes its connection set-up (what slowloris attacks)."""
    samples: list[float] = []
    failures = 0
    for _ in range(sessions):
        start = time.perf_counter()
        try:
            with socket.create_connection(address, timeout=timeout) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for _ in range(per):
                    samples.append(echo(sock, start))
                    start = time.perf_counter()
        except OSError:
            failures += 1
    return Latency(samples, failures)


def echo(sock: socket.socket, start: float) -> float:
    """One 64-byte round trip on ``sock``; seconds since ``start``."""
    sock.sendall(b"x" * 64)
    got = 0
    while got < 64:
        chunk = sock.recv(64 - got)
        if not chunk:
            raise ConnectionResetError("closed by the server")
        got += len(chunk)
    return time.perf_counter() - start


def persistent(sock: socket.socket, count: int = 500) -> Latency:
    """Round trips on one connection opened earlier."""
    samples = []
    for _ in range(count):
        samples.append(echo(sock, time.perf_counter()))
    return Latency(samples, 0)


def tree(pid: int) -> tuple[int, int]:
    """(descriptors, processes) of ``pid`` and its descendants."""
    proc = psutil.Process(pid)
    fds, procs = proc.num_fds(), 1
    for child in proc.children(recursive=True):
        try:
            fds += child.num_fds()
            procs += 1
        except psutil.Error:
            pass
    return fds, procs


def steady(pid: int) -> tuple[int, int]:
    """The tree's counts once they stop moving (connections of a warm-up closing)."""
    last = tree(pid)
    for _ in range(50):
        time.sleep(0.1)
        now = tree(pid)
        if now == last:
            return now
        last = now
    return last


def back_to(pid: int, baseline: tuple[int, int], timeout: float = 20.0) -> tuple[int, int]:
    """Waits until descriptors and processes are at or below ``baseline``."""
    end = time.monotonic() + timeout
    while True:
        now = tree(pid)
        if (now[0] <= baseline[0] and now[1] <= baseline[1]) or time.monotonic() > end:
            return now
        time.sleep(0.1)


def accepted(port: int) -> int:
    """Server-side connections on ``port`` that a process has accepted."""
    return sum(
        1
        for e in read_tcp()
        if e.local.port == port and e.state is TcpState.ESTABLISHED and e.inode != 0
    )


def wait_accepted(port: int, count: int, timeout: float = 30.0) -> int:
    """Waits until the server has accepted ``count`` connections on ``port``."""
    end = time.monotonic() + timeout
    while True:
        # Client and server ends both have local port numbers; the server's is `port`.
        n = accepted(port)
        if n >= count or time.monotonic() > end:
            return n
        time.sleep(0.1)


@pytest.mark.parametrize("model", model_names())
def test_slowloris_against_an_echo_model(model: str) -> None:
    with EchoServerProcess(model, ["--workers", "2"]) as server:
        address, port = server.address, server.port
        legit(address, 3, 5)  # warm-up
        early: socket.socket | None = None
        if model == "select":
            early = socket.create_connection(address, timeout=5)
            early.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            persistent(early, 50)
        baseline = steady(server.pid)
        unloaded = persistent(early) if early is not None else legit(address)
        assert unloaded.failures == 0
        connections = FORK_CONNECTIONS if model == "fork" else CONNECTIONS
        with SlowlorisProcess(
            f"{address[0]}:{port}", connections, interval=2.0, sources=SOURCES
        ) as attack:
            if model == "iterative":
                # Documented: one client at a time; the attacker holds the server.
                held = legit(address, sessions=1, per=1, timeout=1.0)
                assert held.failures == 1, "iterative served someone else during the attack"
                loaded = held
            elif early is not None:
                wait_accepted(port, 1000)
                loaded = persistent(early)
                fresh = legit(address, sessions=3, per=1, timeout=2.0)
                # Documented: descriptors >= FD_SETSIZE are refused, with a reason.
                assert fresh.failures == 3, "a new client got a descriptor below 1024?"
            else:
                got = wait_accepted(port, int(0.98 * connections))
                assert got >= 0.98 * connections, f"only {got} attack connections accepted"
                loaded = legit(address)
                assert loaded.failures == 0, f"{loaded.failures} legitimate sessions failed"
            stats = attack.stop()
        if early is not None:
            early.close()
        after = back_to(server.pid, baseline)
        again = legit(address, 3, 5)
        limit = allowed(unloaded.p99, FORK_FLOOR_MS if model == "fork" else FLOOR_MS)
        # A graceful stop (a kill could race prefork's supervisor restarting a worker
        # it had just lost, and orphan the new one).
        status = server.stop()
        row = (
            f"legit p99 {unloaded.p99:.2f} ms unloaded, {loaded.p99:.2f} ms under "
            f"{connections} connections (allowed {limit:.1f}); attack opened "
            f"{stats.get('opened')}, closed by the server {stats.get('closed_by_server')}; "
            f"fds/processes {baseline} -> {after}"
        )
        note(f"slowloris vs {model}", row)
        assert after[0] <= baseline[0] and after[1] <= baseline[1], "descriptors leaked"
        assert again.failures == 0, "not serving after the attack"
        assert status == 0, f"exit status {status} after SIGTERM"
        if model != "iterative":
            assert loaded.p99 <= limit, row
    if model == "select":
        assert "FD_SETSIZE" in server.stderr


def test_slowloris_against_the_hub(tmp_path: Path) -> None:
    """Connections that never log in (idle) or trickle a byte every 2 s are closed at the
    authentication timeout (3 s here) and reopened; alice's messages to bob keep their
    p99, a new login gets in at once, and the hub's descriptors return to baseline."""

    async def latencies(alice_log: EventLog, bob_log: EventLog, n: int) -> Latency:
        samples = []
        for i in range(n):
            start = time.perf_counter()
            msg_id = await alice_log.client.send("bob", f"ping {i}")
            await bob_log.wait(
                lambda lg, msg_id=msg_id: any(e.id == msg_id for e in lg.of(MessageReceived)),
                10,
            )
            samples.append(time.perf_counter() - start)
        return Latency(samples, 0)

    async def scenario() -> None:
        hub = HubProcess(tmp_path / "hub", args=["--synchronous", "NORMAL", "--auth-timeout", "3"])
        try:
            bob = await new_client(hub.address, "bob")
            alice = await new_client(hub.address, "alice")
            logs = EventLog(alice), EventLog(bob)
            await latencies(*logs, 20)  # warm-up
            baseline = await asyncio.to_thread(steady, hub.proc.pid)
            unloaded = await latencies(*logs, 200)
            attack = await asyncio.to_thread(
                SlowlorisProcess,
                f"127.0.0.1:{hub.port}",
                CONNECTIONS,
                interval=2.0,
                sources=SOURCES,
                args=["--byte-hex", "00"],
            )
            try:
                await asyncio.to_thread(wait_accepted, hub.port, CONNECTIONS // 2)
                loaded = await latencies(*logs, 200)
                started = time.perf_counter()
                carol = await new_client(hub.address, "carol")
                login = time.perf_counter() - started
                await carol.close()
                await asyncio.sleep(4)  # past an authentication timeout: churn under way
                later = await latencies(*logs, 200)
            finally:
                stats = await asyncio.to_thread(attack.stop)
            after = await asyncio.to_thread(back_to, hub.proc.pid, baseline)
            # A message's latency includes a store write, noisier than an echo: the
            # unloaded figure is the worse of a run before and one after the attack.
            unloaded = max(unloaded, await latencies(*logs, 200), key=lambda x: x.p99)
            row = (
                f"message p99 {unloaded.p99:.2f} ms unloaded, {loaded.p99:.2f} ms under "
                f"{CONNECTIONS} connections, {later.p99:.2f} ms after an auth timeout (allowed "
                f"{allowed(unloaded.p99):.1f}); a login {login * 1000:.0f} ms; attack opened "
                f"{stats.get('opened')}, closed by the hub {stats.get('closed_by_server')}; "
                f"fds {baseline[0]} -> {after[0]}"
            )
            note("slowloris vs hub", row)
            assert stats.get("closed_by_server", 0) >= CONNECTIONS, "auth timeout not enforced"
            assert after[0] <= baseline[0], "descriptors leaked"
            assert loaded.p99 <= allowed(unloaded.p99), row
            assert later.p99 <= allowed(unloaded.p99), row
            assert login < 2.0, row
            for log in logs:
                await log.stop()
            await alice.close()
            await bob.close()
        finally:
            hub.kill()

    asyncio.run(scenario())
