"""Real hubs for tests: in-process (fast, inspectable) or as a subprocess (killable)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from duplex.config import HubConfig, ListenerConfig
from duplex.hub.accounts import PasswordHasher
from duplex.hub.core import Hub
from duplex.hub.run import HubInfo, serve_hub
from duplex.server.listener import create_listener, raise_nofile_limit
from duplex.testing.servers import scaled

__all__ = ["FAST_HASHER", "HubProcess", "InProcessHub", "hub_test_config", "running_hub"]

FAST_HASHER_PARAMS = {"time_cost": 1, "memory_kib": 64}
"""argon2id parameters cheap enough for tests (never for a real hub)."""

FAST_HASHER = PasswordHasher(**FAST_HASHER_PARAMS)


def hub_test_config(data_dir: Path, **overrides: Any) -> HubConfig:
    """A hub configuration for tests: port 0, short timers, cheap hashing."""
    values: dict[str, Any] = {
        "port": 0,
        "data_dir": str(data_dir),
        "heartbeat": 0.5,
        "grace": 2.0,
        "auth_timeout": 3.0,
        "argon2_time_cost": 1,
        "argon2_memory_kib": 64,
        "synchronous": "NORMAL",
    }
    values.update(overrides)
    return HubConfig(**values)


@dataclasses.dataclass
class InProcessHub:
    """A hub running on the test's event loop."""

    info: HubInfo
    hub: Hub
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to connect to."""
        return (self.info.host, self.info.port)


@contextlib.asynccontextmanager
async def running_hub(config: HubConfig) -> AsyncIterator[InProcessHub]:
    """Runs a hub on the current loop; stops it (and waits) on exit."""
    listener = create_listener(ListenerConfig(host=config.host, port=config.port))
    ready: asyncio.Future[HubInfo] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    hubs: list[Hub] = []
    task = asyncio.get_running_loop().create_task(
        serve_hub(
            config,
            listener,
            raise_nofile_limit(),
            on_ready=ready.set_result,
            stop=stop,
            hasher=FAST_HASHER,
            on_hub=hubs.append,
        )
    )
    try:
        info = await asyncio.wait_for(asyncio.shield(ready), scaled(20))
    except BaseException:
        stop.set()
        task.cancel()
        raise
    try:
        yield InProcessHub(info, hubs[0], stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, scaled(20))


class HubProcess:
    """``duplex serve`` in a subprocess (for crash and signal tests).

    Args:
        data_dir: the hub's data dir (kept across restarts).
        args: further arguments.
        port: a fixed port (restarts reuse it); 0 picks one.
    """

    def __init__(
        self,
        data_dir: Path,
        args: Sequence[str] = (),
        port: int = 0,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        cmd = [
            *prefix,
            sys.executable,
            "-m",
            "duplex",
            "serve",
            "--json",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--heartbeat",
            "0.5",
            "--grace",
            "2",
            "--argon2-memory-kib",
            "64",
            "--argon2-time-cost",
            "1",
            *args,
        ]
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env
        )
        self._err: list[str] = []
        self._pump = threading.Thread(target=self._read_err, daemon=True)
        self._pump.start()
        line: list[str] = []
        reader = threading.Thread(
            target=lambda: line.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(scaled(30))
        if not line or not line[0]:
            self.kill()
            raise RuntimeError(f"hub did not start: {self.stderr[-3000:]}")
        self.info: dict[str, Any] = json.loads(line[0])

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for text in self.proc.stderr:
            self._err.append(text)

    @property
    def stderr(self) -> str:
        """What the hub logged so far."""
        return "".join(self._err)

    @property
    def port(self) -> int:
        """The hub's port."""
        return int(self.info["port"])

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``."""
        return (str(self.info["host"]), self.port)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` and waits for the exit."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(scaled(30))
        self.close()

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        self.kill(signal.SIGTERM)
        return int(self.proc.returncode)

    def close(self) -> None:
        """Releases the pipes."""
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._pump.join(scaled(10))
        if self.proc.stderr is not None and not self._pump.is_alive():
            self.proc.stderr.close()

    def __enter__(self) -> HubProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        else:
            self.close()
