"""The driver conformance suite: one set of checks every concurrency model must pass.

Each check takes a running echo server (:class:`~duplex.testing.servers.EchoServerProcess`)
and talks to it over real loopback sockets. The checks know nothing about the model
except, for :func:`check_one_at_a_time`, whether it claims to be concurrent: the point
of the suite is that the same handler behaves the same under every driver.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psutil

from duplex.services.echo import echo_datagram
from duplex.testing.servers import EchoServerProcess, scaled

__all__ = [
    "ECHO_SIZES",
    "check_clients_stay_isolated",
    "check_concurrent_clients",
    "check_echo_size",
    "check_half_close",
    "check_one_at_a_time",
    "check_reset_midstream",
    "check_sigterm_idle",
    "check_sigterm_in_flight",
    "check_survives_emfile",
    "check_udp",
    "echo_exact",
]

ECHO_SIZES = (0, 1, 64 * 1024, 10 * 1024 * 1024)
"""The payload sizes every model must echo byte for byte."""


def _recv_until_eof(sock: socket.socket, limit: int) -> bytes:
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise AssertionError(f"server sent more than the {limit} bytes it was given")


def echo_exact(sock: socket.socket, payload: bytes) -> bytes:
    """Sends ``payload`` on a thread while reading, then half-closes; returns all read.

    Writing and reading at once matters: an echo server cannot take 10 MiB from a
    client that does not read, because the echo fills both socket buffers.
    """
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            view = memoryview(payload)
            for offset in range(0, len(view), 256 * 1024):
                sock.sendall(view[offset : offset + 256 * 1024])
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        back = _recv_until_eof(sock, len(payload))
    finally:
        thread.join()
    if errors:
        raise errors[0]
    return back


def check_echo_size(server: EchoServerProcess, size: int) -> None:
    """``size`` random bytes come back identical, then the server closes after our FIN."""
    payload = os.urandom(size)
    with server.connect() as sock:
        back = echo_exact(sock, payload)
    assert len(back) == size, f"{server.model}: got {len(back)} of {size} bytes back"
    assert back == payload, f"{server.model}: echo of {size} bytes differs"


def check_half_close(server: EchoServerProcess) -> None:
    """After our FIN the server still delivers everything, then closes (RFC 862)."""
    with server.connect() as sock:
        sock.sendall(b"first ")
        assert _recv_exact(sock, 6) == b"first "
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert _recv_until_eof(sock, 100) == b"last words"


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def check_concurrent_clients(server: EchoServerProcess, clients: int = 100) -> None:
    """``clients`` clients at once each get exactly their own bytes back."""
    barrier = threading.Barrier(clients, timeout=scaled(30))

    def one(i: int) -> bool:
        payload = struct.pack("!I", i) * 4096 + os.urandom(1000)
        with server.connect(timeout=60) as sock:
            barrier.wait()  # all connected before anyone sends
            back = echo_exact(sock, payload)
        return back == payload

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    assert all(results), f"{server.model}: {results.count(False)} clients got foreign bytes"


def check_one_at_a_time(server: EchoServerProcess, concurrent: bool) -> None:
    """The iterative model serves B only after A closes; every other model serves both.

    Asserted by ordering, not by timing: B's echo is awaited while A is still open. A
    concurrent model answers B then; the iterative one cannot, so for it we close A
    first and check that B is answered only after that.
    """
    with server.connect() as a, server.connect() as b:
        a.sendall(b"A1")
        assert _recv_exact(a, 2) == b"A1"  # the server is now serving A
        b.sendall(b"B1")
        if concurrent:
            assert _recv_exact(b, 2) == b"B1", "B was not served while A was open"
            a.sendall(b"A2")
            assert _recv_exact(a, 2) == b"A2"
            return
        # Iterative: while A is open, B's bytes sit unread. Prove the server is busy
        # with A (another round trip), then look at B without blocking.
        a.sendall(b"A2")
        assert _recv_exact(a, 2) == b"A2"
        b.setblocking(False)
        try:
            early = b.recv(2)
        except BlockingIOError:
            early = b""
        b.setblocking(True)
        assert early == b"", "an iterative server answered B while serving A"
        events: list[str] = []
        got: list[bytes] = []

        def wait_b() -> None:
            got.append(_recv_exact(b, 2))
            events.append("B answered")

        waiter = threading.Thread(target=wait_b)
        waiter.start()
        events.append("A closed")
        a.close()
        waiter.join(scaled(10))
        assert got == [b"B1"]
        assert events == ["A closed", "B answered"], events


def check_reset_midstream(server: EchoServerProcess) -> None:
    """A client that resets with unread echo pending disturbs neither others nor the server."""
    with server.connect() as bystander:
        bystander.sendall(b"before")
        assert _recv_exact(bystander, 6) == b"before"
        for _ in range(3):
            rude = server.connect()
            rude.sendall(os.urandom(512 * 1024))  # its echo is never read
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            rude.close()
        bystander.sendall(b"after")
        assert _recv_exact(bystander, 5) == b"after"
    assert server.proc.poll() is None, "the server died after a client reset"
    check_echo_size(server, 1000)


def check_clients_stay_isolated(server: EchoServerProcess) -> None:
    """Garbage and abrupt closes from one client leave another's stream intact."""
    with server.connect() as good:
        for i in range(20):
            bad = server.connect()
            bad.sendall(os.urandom(i * 100 + 1))
            bad.close()
            good.sendall(b"%d" % i)
            assert _recv_exact(good, len(b"%d" % i)) == b"%d" % i


def check_udp(server: EchoServerProcess) -> None:
    """Each UDP datagram comes back to its sender, unchanged (RFC 862 section 2)."""
    for size in (0, 1, 512, 8000):
        payload = os.urandom(size)
        assert echo_datagram(server.host, server.port, payload, timeout=scaled(5)) == payload


def _descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _gone(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            pass
    return alive


def check_sigterm_in_flight(server: EchoServerProcess) -> None:
    """After SIGTERM a connection in flight finishes its exchange; then exit 0, nothing left.

    The server must keep serving the open connection (grace), refuse new ones, and
    exit 0 as soon as that connection ends, leaving no child process behind.
    """
    with server.connect() as sock:
        sock.sendall(b"hello")
        assert _recv_exact(sock, 5) == b"hello"
        children = _descendants(server.pid)
        server.terminate()
        # Still served during the grace period.
        for i in range(5):
            sock.sendall(b"in flight %d" % i)
            assert _recv_exact(sock, len(b"in flight %d" % i)) == b"in flight %d" % i
        started = time.monotonic()
        sock.shutdown(socket.SHUT_WR)
        assert _recv_until_eof(sock, 0) == b""
    status = server.wait(float(server.info["grace"]) + 5)
    took = time.monotonic() - started
    assert status == 0, f"{server.model}: exit status {status} after SIGTERM"
    assert took < float(server.info["grace"]), f"{server.model}: took {took:.1f} s to exit"
    assert _gone(children) == [], f"{server.model}: children left behind"


def check_sigterm_idle(server: EchoServerProcess) -> None:
    """A client that never closes is cut at the end of the grace; the exit is still 0."""
    grace = float(server.info["grace"])
    with server.connect() as sock:
        sock.sendall(b"x")
        assert _recv_exact(sock, 1) == b"x"
        children = _descendants(server.pid)
        started = time.monotonic()
        server.terminate()
        status = server.wait(grace + 10)
        took = time.monotonic() - started
        sock.settimeout(scaled(5))
        try:
            rest = sock.recv(10)
        except (ConnectionResetError, TimeoutError):
            rest = b""
        assert rest == b"", "server sent data after the grace period"
    assert status == 0, f"{server.model}: exit status {status}"
    assert took < grace + 5, f"{server.model}: took {took:.1f} s with grace {grace}"
    assert _gone(children) == [], f"{server.model}: children left behind"
    # And nothing listens there any more.
    try:
        probe = socket.create_connection(server.address, timeout=1)
    except OSError:
        pass
    else:
        probe.close()
        raise AssertionError("the port still accepts connections after exit")


def low_nofile(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps RLIMIT_NOFILE (soft and hard) at ``limit``."""

    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def check_survives_emfile(server: EchoServerProcess, extra: int = 80) -> None:
    """Run out of descriptors (EMFILE), then recover: the server serves again.

    ``server`` must run with a low RLIMIT_NOFILE (see :func:`low_nofile`), so that
    ``extra`` idle connections exhaust it while they stay open.
    """
    hogs = []
    try:
        for _ in range(extra):
            try:
                hogs.append(server.connect(timeout=5))
            except OSError:
                break  # the accept queue is full too: also fine
        assert server.proc.poll() is None, "the server died of EMFILE"
    finally:
        for sock in hogs:
            sock.close()
    assert server.proc.poll() is None, "the server died of EMFILE"

    deadline = time.monotonic() + scaled(20)
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            check_echo_size(server, 100)
            return
        except (OSError, AssertionError) as exc:
            last = exc  # descriptors are still being released
            time.sleep(0.1)
    raise AssertionError(f"{server.model}: not serving after EMFILE: {last}")


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m duplex ARGS`` and returns the completed process."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "duplex", *args],
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        check=False,
    )
