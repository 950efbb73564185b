"""A client process that opens and holds many TCP connections: ``python -m duplex.lab.holder``.

One process may hold at most RLIMIT_NOFILE descriptors (20,000 here, and the hard
limit cannot be raised), so the experiments that need more connections than that
(``one-port``, ``ephemeral``) start several holders. Each holder speaks JSON lines:
a ready line, then one answer per request on stdin:

``{"op": "connect", "host", "port", "count", "source", "port_range", "record_ports"}``
    opens up to ``count`` connections, stopping at the first error (EADDRNOTAVAIL
    when the ephemeral ports run out). ``source`` binds a source address first, with
    IP_BIND_ADDRESS_NO_PORT so the port is still chosen at ``connect()`` from the
    full 4-tuple; ``port_range`` narrows the ephemeral range for these sockets only
    (IP_LOCAL_PORT_RANGE, Linux 6.3+), which lets a test exhaust 64 ports instead
    of 28,232 without touching the system-wide sysctl.
``{"op": "echo", "sample": N}``
    sends 8 bytes on N held connections and checks the echo (they are live).
``{"op": "fill", "size": N}``
    sends N bytes on every held connection and leaves the echo unread, so it waits
    in the kernel's receive buffers (what ``TCP: mem`` in /proc/net/sockstat counts).
``{"op": "ports", "port": P}``
    the local ports of the held connections to server port P.
``{"op": "stats"}`` / ``{"op": "close", "abort": true}`` / ``{"op": "exit"}``

``close`` with ``abort`` sets SO_LINGER to 0, so each close sends RST instead of FIN
and leaves no TIME_WAIT behind: tens of thousands of TIME_WAIT entries would linger
for a minute and slow every other reader of /proc/net/tcp on the machine.

A holder exits at EOF on stdin and after ``--max-seconds`` (SIGALRM), whatever happens.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any

__all__ = ["IP_LOCAL_PORT_RANGE", "Holder", "main"]

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
IP_LOCAL_PORT_RANGE = getattr(socket, "IP_LOCAL_PORT_RANGE", 51)
"""Per-socket ephemeral range, ``low | high << 16`` (include/uapi/linux/in.h, Linux 6.3)."""

BATCH = 256
"""Non-blocking connects in flight at once."""

FD_RESERVE = 32
"""Descriptors kept free for the interpreter and the pipes."""


def _errname(code: int) -> str:
    return errno.errorcode.get(code, str(code))


class Holder:
    """The connections of one holder process."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self.dest: list[int] = []
        self.soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def _new_socket(self, source: str | None, port_range: list[int] | None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if port_range:
                lo, hi = port_range
                sock.setsockopt(
                    socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, struct.pack("I", lo | hi << 16)
                )
            if source:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
        except BaseException:
            sock.close()
            raise
        return sock

    def connect(self, req: dict[str, Any]) -> dict[str, Any]:
        """Opens up to ``count`` connections; see the module docstring."""
        host, port, count = str(req["host"]), int(req["port"]), int(req["count"])
        source = req.get("source")
        port_range = req.get("port_range")
        deadline = time.monotonic() + float(req.get("timeout", 60))
        opened = 0
        error: str | None = None
        ports: list[int] = []
        start = time.monotonic()
        with selectors.DefaultSelector() as sel:
            while opened < count and error is None:
                if time.monotonic() > deadline:
                    error = "timeout"
                    break
                room = self.soft_limit - FD_RESERVE - len(self.socks)
                want = min(BATCH, count - opened, room)
                if want <= 0:
                    error = "fd-limit"
                    break
                pending: dict[int, socket.socket] = {}
                for _ in range(want):
                    try:
                        sock = self._new_socket(source, port_range)
                    except OSError as exc:
                        error = _errname(exc.errno or 0)
                        break
                    code = sock.connect_ex((host, port))
                    if code not in (0, errno.EINPROGRESS):
                        sock.close()
                        error = _errname(code)
                        break
                    pending[sock.fileno()] = sock
                    sel.register(sock, selectors.EVENT_WRITE)
                while pending:
                    remaining = deadline - time.monotonic()
                    events = sel.select(max(0.0, remaining)) if remaining > 0 else []
                    if not events:
                        error = error or "timeout"
                        for sock in pending.values():
                            sel.unregister(sock)
                            sock.close()
                        pending.clear()
                        break
                    for key, _ in events:
                        sock = pending.pop(key.fd)
                        sel.unregister(sock)
                        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if code:
                            sock.close()
                            error = error or _errname(code)
                            continue
                        self.socks.append(sock)
                        self.dest.append(port)
                        opened += 1
                        if req.get("record_ports"):
                            ports.append(sock.getsockname()[1])
        answer: dict[str, Any] = {
            "opened": opened,
            "error": error,
            "held": len(self.socks),
            "elapsed": round(time.monotonic() - start, 4),
        }
        if req.get("record_ports"):
            answer["ports"] = ports
        return answer

    def echo(self, req: dict[str, Any]) -> dict[str, Any]:
        """Echoes 8 bytes on ``sample`` connections spread over the held ones."""
        sample = min(int(req.get("sample", 10)), len(self.socks))
        if not sample:
            return {"ok": 0, "tried": 0}
        step = max(1, len(self.socks) // sample)
        ok = 0
        timeout = float(req.get("timeout", 5))
        for sock in self.socks[::step][:sample]:
            payload = os.urandom(8)
            try:
                sock.settimeout(timeout)
                sock.sendall(payload)
                got = b""
                while len(got) < 8:
                    chunk = sock.recv(8 - len(got))
                    if not chunk:
                        break
                    got += chunk
                ok += got == payload
            except OSError:
                pass
            finally:
                sock.setblocking(False)
        return {"ok": ok, "tried": sample}

    def fill(self, req: dict[str, Any]) -> dict[str, Any]:
        """Sends ``size`` bytes on every connection and leaves the echo unread."""
        payload = os.urandom(int(req.get("size", 1024)))
        sent = 0
        for sock in self.socks:
            try:
                sent += sock.send(payload)
            except (BlockingIOError, OSError):
                pass
        return {"sent": sent, "connections": len(self.socks)}

    def ports(self, req: dict[str, Any]) -> dict[str, Any]:
        """Local ports of the connections to server port ``port``."""
        want = int(req["port"])
        return {
            "ports": [
                s.getsockname()[1] for s, d in zip(self.socks, self.dest, strict=True) if d == want
            ]
        }

    def stats(self) -> dict[str, Any]:
        """How many connections are held, and this process's resident memory."""
        with open("/proc/self/statm") as fh:
            rss_pages = int(fh.read().split()[1])
        return {"held": len(self.socks), "rss": rss_pages * os.sysconf("SC_PAGE_SIZE")}

    def close(self, req: dict[str, Any]) -> dict[str, Any]:
        """Closes every connection (with RST when ``abort``)."""
        linger = struct.pack("ii", 1, 0)
        count = len(self.socks)
        for sock in self.socks:
            if req.get("abort", True):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                except OSError:
                    pass
            sock.close()
        self.socks.clear()
        self.dest.clear()
        return {"closed": count}


def main(argv: list[str] | None = None) -> int:
    """Runs a holder until ``exit``, EOF on stdin, or ``--max-seconds``."""
    parser = argparse.ArgumentParser(prog="python -m duplex.lab.holder")
    parser.add_argument("--max-seconds", type=int, default=600)
    args = parser.parse_args(argv)
    signal.alarm(max(1, args.max_seconds))  # the default SIGALRM action ends the process
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    holder = Holder()
    out = sys.stdout
    out.write(
        json.dumps({"event": "ready", "pid": os.getpid(), "nofile": holder.soft_limit}) + "\n"
    )
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        op = req.get("op")
        answer: dict[str, Any]
        try:
            if op == "connect":
                answer = holder.connect(req)
            elif op == "echo":
                answer = holder.echo(req)
            elif op == "ports":
                answer = holder.ports(req)
            elif op == "fill":
                answer = holder.fill(req)
            elif op == "stats":
                answer = holder.stats()
            elif op == "close":
                answer = holder.close(req)
            elif op == "exit":
                holder.close({"abort": True})
                out.write(json.dumps({"bye": True}) + "\n")
                out.flush()
                return 0
            else:
                answer = {"error": f"unknown op {op!r}", "fatal": True}
        except OSError as exc:
            answer = {"error": f"{op}: {exc}", "fatal": True}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    holder.close({"abort": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
