"""The direct path across real NATs: network namespaces, veth pairs, nftables masquerade.

Skipped, with the reason, only where this machine refuses network namespaces.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from duplex.testing.agent import AgentProcess
from duplex.testing.hubs import HubProcess
from duplex.testing.netns import NatTopology, nat_topology, netns_available

REASON = netns_available()
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON or "network namespaces work")

PORT = 7070
BUDGET = 2.0


def start(topo: NatTopology, tmp: Path) -> tuple[HubProcess, AgentProcess, AgentProcess]:
    hub = HubProcess(
        tmp / "hub", args=["--host", "0.0.0.0"], port=PORT, prefix=topo.hub.exec_prefix()
    )
    agent_args = ["--budget", str(BUDGET), "--link-heartbeat", "0.3", "--link-grace", "1.2"]
    bob = AgentProcess(
        f"{topo.hub_for_bob}:{PORT}", "bob", prefix=topo.bob.exec_prefix(), args=agent_args
    )
    bob.wait(lambda a: bool(a.of("online")), 30)
    alice = AgentProcess(
        f"{topo.hub_for_alice}:{PORT}", "alice", prefix=topo.alice.exec_prefix(), args=agent_args
    )
    alice.wait(lambda a: bool(a.of("online")), 30)
    return hub, alice, bob


def delivered(agent: AgentProcess, msg_id: str) -> dict[str, object] | None:
    for event in agent.of("state"):
        if event["id"] == msg_id and event["state"] == "delivered":
            return event
    return None


def test_port_preserving_nat_gets_a_direct_link_by_hole_punching(tmp_path: Path) -> None:
    with nat_topology() as topo:
        hub, alice, bob = start(topo, tmp_path)
        try:
            # The hub sees both through their NATs: neither advertises its public address.
            [online] = alice.of("online")
            assert online["local"][0] == "192.0.2.2"
            alice.command(op="send", to="bob", text="through two NATs")
            alice.wait(lambda a: bool(a.of("sent")), 10)
            msg_id = alice.of("sent")[0]["id"]
            bob.wait(lambda b: any(e["id"] == msg_id for e in b.of("received")), 15)
            [got] = [e for e in bob.of("received") if e["id"] == msg_id]
            assert got["path"] == "direct", "hole punching did not give a direct link"
            alice.wait(lambda a: delivered(a, msg_id) is not None, 10)
            assert delivered(alice, msg_id)["path"] == "direct"  # type: ignore[index]
            alice.command(op="links")
            alice.wait(lambda a: bool(a.of("links")), 10)
            [link] = alice.of("links")[0]["links"]
            # The socket pair of the punched link: alice's private address, bob's public one.
            assert link["pair"].startswith("192.0.2.2:")
            assert "203.0.113.2:" in link["pair"]
        finally:
            alice.stop()
            bob.stop()
            hub.kill()


def test_random_port_nat_falls_back_to_the_relay_within_the_budget(tmp_path: Path) -> None:
    with nat_topology(random_ports=True) as topo:
        hub, alice, bob = start(topo, tmp_path)
        try:
            started = time.monotonic()
            alice.command(op="send", to="bob", text="symmetric NAT")
            bob.wait(lambda b: bool(b.of("received")), 15)
            took = time.monotonic() - started
            [got] = bob.of("received")
            assert got["path"] == "relayed"
            assert took < BUDGET + 1.5, f"the relay took {took:.2f} s"
            time.sleep(0.5)
            assert len(bob.of("received")) == 1
        finally:
            alice.stop()
            bob.stop()
            hub.kill()


def test_cutting_the_peer_path_mid_chat_relays_without_loss_or_duplicates(tmp_path: Path) -> None:
    with nat_topology() as topo:
        hub, alice, bob = start(topo, tmp_path)
        try:
            alice.command(op="send", to="bob", text="warm-up")
            bob.wait(lambda b: bool(b.of("received")), 15)
            assert bob.of("received")[0]["path"] == "direct"
            alice.command(op="send", to="bob", text="stream", count=150, interval=0.02)
            bob.wait(lambda b: len(b.of("received")) >= 40, 15)
            topo.cut_peer_path()  # the hub still reaches both; the peers no longer each other
            bob.wait(lambda b: len({e["id"] for e in b.of("received")}) == 151, 60)
            time.sleep(0.5)
            received = bob.of("received")
            counts = Counter(e["id"] for e in received)
            sent = {e["id"] for e in alice.of("sent")}
            assert set(counts) == sent
            assert max(counts.values()) == 1, "a message was shown twice"
            paths = Counter(e["path"] for e in received)
            assert paths["direct"] >= 40
            assert paths["relayed"] > 0
            print(f"\ncut mid-chat: {len(sent)} sent, lost 0, duplicated 0, paths {dict(paths)}")
        finally:
            alice.stop()
            bob.stop()
            hub.kill()
