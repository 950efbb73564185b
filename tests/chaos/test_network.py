"""Network faults between real processes in network namespaces, judged by the checker.

The hub runs in the core of a star of namespaces (:mod:`duplex.testing.chaosnet`), each
client (an agent process) in a leaf of its own, so the faults happen on a wire, not in
a socket: a partition of one client's link, 10% packet loss each way with a
user-space delay relay on the relay path or on the direct path, and a cut of the
direct path between two peers that later heals.

Skipped, with the reason, only where this machine refuses network namespaces.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from duplex.testing.agent import AgentProcess
from duplex.testing.chaos import Checker, long_run
from duplex.testing.chaosnet import Star, star_topology
from duplex.testing.delay import DelayRelayProcess
from duplex.testing.hubs import HubProcess
from duplex.testing.netns import netns_available

REASON = netns_available()
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON or "network namespaces work")

PORT = 7070
RELAY = 7071
USERS = ("alice", "bob")
P2P = ["--budget", "4", "--retry", "0.5", "--link-heartbeat", "0.5", "--link-grace", "2"]


@contextlib.contextmanager
def network(
    tmp_path: Path,
    *,
    hub_args: Sequence[str] = (),
    agent_args: Sequence[str] = (),
    delay: str = "",
) -> Iterator[tuple[Star, HubProcess, dict[str, AgentProcess]]]:
    """The star, the hub in its core and one agent per user in its leaf; all torn down.

    ``delay``: TCP connections matching it (nft syntax) go through a delay relay in the
    core, 40-50 ms each way, from the start.
    """
    with star_topology(USERS) as star, contextlib.ExitStack() as stack:
        if delay:
            stack.enter_context(
                DelayRelayProcess(
                    f"0.0.0.0:{RELAY}", None, 0.04, jitter=0.01, prefix=star.core.exec_prefix()
                )
            )
            star.redirect(delay, RELAY)
        hub = HubProcess(
            tmp_path / "hub",
            args=["--host", "0.0.0.0", "--synchronous", "NORMAL", *hub_args],
            port=PORT,
            prefix=star.core.exec_prefix(),
        )
        agents: dict[str, AgentProcess] = {}
        try:
            for user in USERS:
                agents[user] = AgentProcess(
                    f"{star.gateways[user]}:{PORT}",
                    user,
                    prefix=star.leaves[user].exec_prefix(),
                    args=list(agent_args),
                )
            for agent in agents.values():
                agent.wait(lambda a: bool(a.of("online")), 30)
            yield star, hub, agents
        finally:
            for agent in agents.values():
                agent.stop()
            hub.kill()


def stream(agents: dict[str, AgentProcess], count: int, interval: float) -> None:
    """Each agent streams ``count`` numbered messages to the other."""
    for user, agent in agents.items():
        other = next(u for u in agents if u != user)
        agent.command(op="send", to=other, text=f"{user}>{other}", count=count, interval=interval)


def test_partition_of_each_client_from_the_hub_then_healed(tmp_path: Path) -> None:
    """Both directions stream; alice's link is cut for 4 s, then bob's: each is then a
    sender whose outbox must be resent and a recipient that must resume from its last
    sequence; what was sent meanwhile is delivered after the heal."""
    per = 1500 if long_run() else 250
    outage = 4.0
    checker = Checker(f"partition client-hub {outage:g} s, alice then bob")
    with network(tmp_path, agent_args=["--no-p2p"]) as (star, _hub, agents):
        stream(agents, per, 0.03)
        progress = 0.15
        for user in USERS:
            assert checker.wait_for(
                agents.values(), lambda c, p=progress: c.messages >= p * 2 * per, 60
            )
            star.partition(user)
            checker.fault(f"partition {user} {outage:g} s")
            time.sleep(outage)
            star.heal(user)
            progress += 0.4
        settled = checker.wait_settled(agents.values(), 120, expect_messages=2 * per)
        report = checker.check()
        assert settled
        assert report.faults == 2


@pytest.mark.parametrize("path", ["relay", "direct"])
def test_ten_percent_loss_each_way_and_delay(tmp_path: Path, path: str) -> None:
    """10% of the packets dropped each way on both clients' links, and 40-50 ms added
    each way by a user-space relay: on the clients' connections to the hub (relay path,
    peer-to-peer off) or on the direct link between the two peers."""
    per = 1500 if long_run() else 250
    checker = Checker(f"10% loss each way + 40 ms delay, {path} path")
    agent_args = ["--no-p2p"] if path == "relay" else P2P
    if path == "relay":
        match = f"tcp dport {PORT}"  # every client -> hub connection
    else:  # connections between the two leaves
        subnet = "198.51.100.0/24"
        match = f"ip saddr {subnet} ip daddr {subnet} tcp dport != {{ {PORT}, {RELAY} }}"
    # Under 10% loss, a second of silence is not yet a dead peer.
    with network(tmp_path, hub_args=["--grace", "5"], agent_args=agent_args, delay=match) as (
        star,
        _hub,
        agents,
    ):
        for user in USERS:
            star.loss(user, 10)
            checker.fault(f"10% loss {user}")
        checker.fault(f"delay {path}")
        stream(agents, per, 0.02)
        settled = checker.wait_settled(agents.values(), 180, expect_messages=2 * per)
        report = checker.check()
        assert settled
        if path == "relay":
            assert set(report.paths) == {"relayed"}, report.paths
        else:
            assert report.paths.get("direct", 0) >= per // 2, report.paths


def test_direct_path_cut_mid_stream_then_healed(tmp_path: Path) -> None:
    """The direct link between the peers is cut (the hub still reaches both) in the
    middle of a two-way stream, and healed 3 s later: the stream falls back to the relay
    and comes back to the direct path, without loss, duplicates or reordering."""
    per = 1500 if long_run() else 300
    checker = Checker("direct path cut 3 s mid-stream, then healed")
    with network(tmp_path, agent_args=P2P) as (star, _hub, agents):
        agents["alice"].command(op="send", to="bob", text="warm-up")
        assert checker.wait_settled(agents.values(), 30, expect_messages=1)
        stream(agents, per, 0.02)
        assert checker.wait_for(agents.values(), lambda c: c.messages >= 0.3 * 2 * per, 60)
        star.cut_between("alice", "bob")
        checker.fault("cut direct path 3 s")
        time.sleep(3)
        star.join()
        settled = checker.wait_settled(agents.values(), 120, expect_messages=2 * per + 1)
        report = checker.check()
        assert settled
        assert report.paths.get("direct", 0) > 0.3 * per, report.paths
        assert report.paths.get("relayed", 0) + report.paths.get("stored", 0) > 0, report.paths
        # ...and the direct path came back: the last messages went direct again.
        last = [e for e in agents["bob"].of("received")][-20:]
        assert {e["path"] for e in last} == {"direct"}, [e["path"] for e in last]
