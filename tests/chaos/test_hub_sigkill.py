"""SIGKILL the hub at random moments of a flood: nothing acked is lost, nothing shown twice.

Three sender processes flood two recipients through the hub (a process too, SQLite
with ``synchronous=FULL``): one recipient online all along, one offline until the
end. The hub is killed with SIGKILL (no flush, no goodbye) five times at random points
of the flood and restarted on the same port and data dir each time; the senders keep
writing meanwhile (into their outboxes while the hub is down). Afterwards the offline
recipient logs in, and the checker compares what the senders saw acked with what the
recipients were shown.

``DUPLEX_CHAOS=long``: twenty kills during a flood of 12,000 messages.
"""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

from duplex.client import register
from duplex.testing.agent import AgentProcess
from duplex.testing.chaos import Checker, chaos_seed, long_run
from duplex.testing.hubs import HubProcess
from duplex.testing.servers import free_port

SENDERS = ["s1", "s2", "s3"]
ONLINE, OFFLINE = "r_on", "r_off"


def test_sigkill_the_hub_five_times_during_a_flood(tmp_path: Path) -> None:
    seed = chaos_seed()
    rng = random.Random(seed)
    kills = 20 if long_run() else 5
    per_sender = 4000 if long_run() else 400  # half to each recipient
    batch = 20
    checker = Checker(f"SIGKILL hub x{kills} during a flood", seed)
    port = free_port()
    data = tmp_path / "hub"
    hub_args = ["--synchronous", "FULL"]
    hub = HubProcess(data, port=port, args=hub_args)
    address = f"127.0.0.1:{port}"
    agents: list[AgentProcess] = []
    try:
        asyncio.run(register(("127.0.0.1", port), OFFLINE, "correct horse"))
        online = AgentProcess(address, ONLINE, args=["--no-p2p"])
        agents.append(online)
        senders = [AgentProcess(address, user, args=["--no-p2p"]) for user in SENDERS]
        agents += senders
        for agent in agents:
            agent.wait(lambda a: bool(a.of("online")), 30)
        for sender in senders:
            for b in range(per_sender // batch):
                to = (ONLINE, OFFLINE)[b % 2]
                sender.command(
                    op="send", to=to, text=f"{sender.user}>{to}", count=batch, interval=0.02
                )
        total = per_sender * len(senders)
        # Kill at random points of the flood's progress, so every kill lands while
        # messages are being written, stored, pushed and acked.
        marks = sorted(rng.uniform(0.05, 0.9) for _ in range(kills))
        for mark in marks:
            assert checker.wait_for(agents, lambda c, m=mark: c.messages >= m * total, 120)
            hub.kill(signal.SIGKILL)
            checker.fault("SIGKILL hub")
            hub = HubProcess(data, port=port, args=hub_args)
        assert checker.wait_for(agents, lambda c: c.messages >= total, 120)
        late = AgentProcess(address, OFFLINE, args=["--no-p2p"])
        agents.append(late)
        settled = checker.wait_settled(agents, 120, expect_messages=total)
        report = checker.check()
        assert settled
        assert report.messages == total
        assert report.faults == kills
        assert report.paths.get("stored", 0) > 0 and report.paths.get("relayed", 0) > 0
    finally:
        for agent in agents:
            agent.stop()
        hub.kill()
