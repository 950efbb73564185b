"""A recipient frozen with SIGSTOP mid-stream, then resumed: presence tells the truth,
what is sent meanwhile is stored, and all of it is shown once and in order after.

A frozen process sends no FIN and no heartbeat; its TCP connection still looks open
to the hub's kernel. The hub must call it offline within the grace (plus a second),
say so to its contacts, store what arrives for it, and hand it everything when it
wakes up and reconnects. Hub, sender and frozen recipient are processes; a watcher
(an in-process client with the recipient as contact) observes presence.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from duplex.client import PresenceChanged
from duplex.testing.agent import AgentProcess
from duplex.testing.chaos import Checker, long_run
from duplex.testing.clients import new_client, wait_for_event
from duplex.testing.hubs import HubProcess
from duplex.testing.servers import scaled

GRACE = 2.0  # HubProcess's --grace


def test_frozen_recipient_is_offline_within_the_grace_and_gets_everything(
    tmp_path: Path,
) -> None:
    per = 1000 if long_run() else 200
    frozen_for = 4.0
    checker = Checker(f"recipient frozen (SIGSTOP) {frozen_for:g} s mid-stream")

    async def scenario() -> None:
        hub = HubProcess(tmp_path / "hub", args=["--synchronous", "NORMAL"])
        address = f"127.0.0.1:{hub.port}"
        agents: list[AgentProcess] = []
        watcher = None
        try:
            bob = AgentProcess(address, "bob", args=["--no-p2p"])
            alice = AgentProcess(address, "alice", args=["--no-p2p"])
            agents += [bob, alice]
            for agent in agents:
                await asyncio.to_thread(agent.wait, lambda a: bool(a.of("online")), 30)
            watcher = await new_client(hub.address, "watcher")
            await watcher.add_contact("bob")
            assert await wait_for_event(watcher, PresenceChanged) == PresenceChanged("bob", True)
            alice.command(op="send", to="bob", text="alice>bob", count=per, interval=0.03)
            await asyncio.to_thread(checker.wait_for, agents, lambda c: c.messages >= 30, 30)

            os.kill(bob.proc.pid, signal.SIGSTOP)
            frozen = time.monotonic()
            checker.fault(f"SIGSTOP recipient {frozen_for:g} s")
            try:
                event = await wait_for_event(watcher, PresenceChanged, timeout=GRACE + 5)
                took = time.monotonic() - frozen
                assert event == PresenceChanged("bob", False)
                assert took <= GRACE + 1.0 + scaled(0.5), f"offline only after {took:.1f} s"
                offline_at = checker.messages
                await asyncio.sleep(max(0.0, frozen_for - (time.monotonic() - frozen)))
            finally:
                os.kill(bob.proc.pid, signal.SIGCONT)
            event = await wait_for_event(watcher, PresenceChanged, timeout=20)
            assert event == PresenceChanged("bob", True)
            settled = await asyncio.to_thread(
                checker.wait_settled, agents, 120, expect_messages=per
            )
            report = checker.check()
            assert settled
            # What was sent while bob was known to be offline went to the store.
            stored = [
                e for e in alice.of("state") if e["state"] == "stored" and e["path"] == "stored"
            ]
            assert len(stored) >= 5, f"{len(stored)} stored while frozen (from #{offline_at})"
            assert report.paths.get("stored", 0) >= 5, report.paths
        finally:
            if watcher is not None:
                await watcher.close()
            for agent in agents:
                await asyncio.to_thread(agent.stop)
            hub.kill()

    asyncio.run(scenario())
