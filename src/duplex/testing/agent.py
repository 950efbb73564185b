"""A scriptable client process for tests that need clients in other processes.

``python -m duplex.testing.agent --hub HOST:PORT --user NAME`` registers (if needed),
logs in, and then:

* prints every client event as one JSON line on stdout (``received``, ``state``,
  ``presence``, ``connection``), plus ``{"event": "online"}`` once logged in;
* reads commands, one JSON object per line, on stdin:
  ``{"op": "send", "to": "bob", "text": "hi", "count": 1, "interval": 0}`` sends
  ``count`` numbered messages (``text #i``) and prints ``{"event": "sent", "id": ...}``
  for each; ``{"op": "links"}`` prints the direct links; ``{"op": "quit"}`` ends.

Network-namespace tests run it with ``ip netns exec``; chaos tests freeze and kill it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from duplex.client import (
    Client,
    ConnectionStateChanged,
    MessageReceived,
    MessageStateChanged,
    PresenceChanged,
    register,
)
from duplex.errors import RemoteError
from duplex.p2p import DirectRouter
from duplex.protocol.hub import SessionConfig

__all__ = ["AgentProcess", "main"]


def _print(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _run(args: argparse.Namespace) -> None:
    host, _, port = args.hub.rpartition(":")
    address = (host.strip("[]"), int(port))
    try:
        await register(address, args.user, args.password, timeout=30)
    except RemoteError as exc:
        if exc.code != "name-taken":
            raise
    router = None
    if args.p2p:
        router = DirectRouter(
            budget=args.budget,
            session=SessionConfig(
                heartbeat=args.link_heartbeat, grace=args.link_grace, auth_timeout=args.budget
            ),
            retry=(args.retry, max(args.retry, 10.0)),
        )
    client = Client(
        address,
        args.user,
        password=args.password,
        data_dir=args.data_dir,
        router=router,
        session=SessionConfig(heartbeat=1.0, grace=3.0, auth_timeout=10.0),
        backoff=(0.1, 1.0),
    )
    await client.start()

    async def events() -> None:
        async for event in client.events():
            if isinstance(event, MessageReceived):
                _print(
                    {
                        "event": "received",
                        "peer": event.peer,
                        "id": event.id.hex(),
                        "body": event.body,
                        "path": event.path,
                    }
                )
            elif isinstance(event, MessageStateChanged):
                _print(
                    {
                        "event": "state",
                        "id": event.id.hex(),
                        "peer": event.peer,
                        "state": event.state,
                        "path": event.path,
                        "reason": event.reason,
                    }
                )
            elif isinstance(event, PresenceChanged):
                _print({"event": "presence", "user": event.user, "online": event.online})
            elif isinstance(event, ConnectionStateChanged):
                _print({"event": "connection", "state": event.state, "detail": event.detail})
                if event.state == "online":
                    _print({"event": "online", "local": list(client.hub_local or ())})

    watcher = asyncio.get_running_loop().create_task(events())
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            command = json.loads(line)
            op = command.get("op")
            if op == "quit":
                break
            if op == "send":
                for i in range(int(command.get("count", 1))):
                    text = (
                        command["text"]
                        if command.get("count", 1) == 1
                        else f"{command['text']} #{i}"
                    )
                    msg_id = await client.send(command["to"], text)
                    _print({"event": "sent", "id": msg_id.hex(), "text": text})
                    if command.get("interval"):
                        await asyncio.sleep(float(command["interval"]))
            elif op == "links":
                links = router.describe() if router is not None else []
                _print({"event": "links", "links": links})
    finally:
        watcher.cancel()
        await client.close()


class AgentProcess:
    """The test side of an agent: start it (maybe in a namespace), command it, read it.

    Args:
        hub: ``host:port`` as seen from where the agent runs.
        user: the user name.
        prefix: a command prefix, e.g. ``["ip", "netns", "exec", "ns1"]``.
        args: further agent arguments.
    """

    def __init__(
        self, hub: str, user: str, *, prefix: Sequence[str] = (), args: Sequence[str] = ()
    ) -> None:
        cmd = [
            *prefix,
            sys.executable,
            "-m",
            "duplex.testing.agent",
            "--hub",
            hub,
            "--user",
            user,
            *args,
        ]
        self.user = user
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self._lines.put(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line)

    @property
    def stderr(self) -> str:
        """What the agent wrote to stderr."""
        return "".join(self._err)

    def _drain(self) -> None:
        while True:
            try:
                self.events.append(self._lines.get_nowait())
            except queue.Empty:
                return

    def of(self, event: str) -> list[dict[str, Any]]:
        """Events named ``event`` so far."""
        self._drain()
        return [e for e in self.events if e.get("event") == event]

    def wait(self, predicate: Callable[[AgentProcess], bool], timeout: float) -> None:
        """Waits until ``predicate(self)`` holds.

        Raises:
            TimeoutError: it does not within ``timeout`` seconds.
        """
        end = time.monotonic() + timeout
        while True:
            self._drain()
            if predicate(self):
                return
            if time.monotonic() >= end:
                raise TimeoutError(
                    f"agent {self.user}: condition not reached; stderr: {self.stderr[-1500:]}"
                )
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.user} exited: {self.stderr[-1500:]}")
            with contextlib.suppress(queue.Empty):
                self.events.append(self._lines.get(timeout=0.05))

    def command(self, **command: Any) -> None:
        """Sends one command."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        """Asks the agent to quit, then makes sure it has."""
        with contextlib.suppress(OSError, ValueError):
            self.command(op="quit")
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)
        for reader in self._readers:
            reader.join(10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._drain()

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()


def main(argv: list[str] | None = None) -> None:
    """Runs the agent (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m duplex.testing.agent")
    parser.add_argument("--hub", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", default="correct horse")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--p2p", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--budget", type=float, default=2.0)
    parser.add_argument("--retry", type=float, default=1.0)
    parser.add_argument("--link-heartbeat", type=float, default=0.5)
    parser.add_argument("--link-grace", type=float, default=1.5)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
