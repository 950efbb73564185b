"""Private networks for tests: network namespaces, veth pairs and nftables NATs.

Only addresses from the TEST-NET ranges (RFC 5737) are used, only inside namespaces
this module creates, and every namespace is deleted afterwards, even when a test
fails (deleting a namespace deletes its interfaces too). Namespace names carry a
per-run prefix, because namespaces are machine-wide.

The standard topology (:func:`nat_topology`)::

    alice 192.0.2.2 --lan-- [router ra] 198.51.100.2 --wan--+
                             masquerade                      |  [hub] 198.51.100.1
                                                             |        203.0.113.1
    bob 192.0.2.66  --lan-- [router rb] 203.0.113.2  --wan--+   (routes between)

Each router masquerades its LAN behind its WAN address and, like a home router,
drops unsolicited inbound traffic (forward and input). With ``random_ports`` the
masquerade picks a random source port for every connection (a symmetric NAT).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

__all__ = ["NatTopology", "Netns", "nat_topology", "netns_available"]


def _run(*args: str, stdin: str | None = None) -> None:
    result = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


def netns_available() -> str:
    """Returns "" when namespaces, veth and nftables work here, else the reason why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages iproute2 and nftables)"
    name = f"dxprobe{uuid.uuid4().hex[:6]}"
    try:
        _run("ip", "netns", "add", name)
    except RuntimeError as exc:
        return f"ip netns is refused here: {exc}"
    try:
        _run("ip", "netns", "exec", name, "nft", "list", "ruleset")
    except RuntimeError as exc:
        return f"nftables cannot run in a namespace here: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return ""


@dataclasses.dataclass
class Netns:
    """One namespace."""

    name: str

    def exec_prefix(self) -> list[str]:
        """The command prefix that runs a program inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(self, *args: str, stdin: str | None = None) -> None:
        """Runs a command inside the namespace, raising on failure."""
        _run(*self.exec_prefix(), *args, stdin=stdin)

    def nft(self, ruleset: str) -> None:
        """Loads an nftables ruleset into the namespace."""
        self.run("nft", "-f", "-", stdin=ruleset)


@dataclasses.dataclass
class NatTopology:
    """Namespaces and addresses of :func:`nat_topology`."""

    hub: Netns
    alice: Netns
    bob: Netns
    router_a: Netns
    router_b: Netns
    hub_for_alice: str = "198.51.100.1"
    hub_for_bob: str = "203.0.113.1"
    alice_public: str = "198.51.100.2"
    bob_public: str = "203.0.113.2"

    def cut_peer_path(self) -> None:
        """Drops everything between the two routers' public addresses, not to the hub."""
        self.hub.nft(
            "table inet cut {\n"
            "  chain forward { type filter hook forward priority -10; policy accept;\n"
            f"    ip saddr {self.alice_public} ip daddr {self.bob_public} drop\n"
            f"    ip saddr {self.bob_public} ip daddr {self.alice_public} drop\n"
            "  }\n}\n"
        )


def _router_rules(random_ports: bool) -> str:
    return (
        "table ip nat {\n"
        "  chain postrouting { type nat hook postrouting priority 100;\n"
        f'    oifname "wan" masquerade{" random" if random_ports else ""}\n'
        "  }\n}\n"
        "table inet filter {\n"
        "  chain forward { type filter hook forward priority 0; policy drop;\n"
        "    ct state established,related accept\n"
        '    iifname "lan" oifname "wan" accept\n'
        "  }\n"
        "  chain input { type filter hook input priority 0; policy accept;\n"
        '    iifname "wan" ct state new drop\n'
        "  }\n}\n"
    )


@contextlib.contextmanager
def nat_topology(*, random_ports: bool = False) -> Iterator[NatTopology]:
    """Builds the two-NAT topology of the module docstring; removes it afterwards."""
    prefix = f"dx{uuid.uuid4().hex[:6]}"
    names = {role: f"{prefix}{role}" for role in ("hub", "a", "b", "ra", "rb")}
    created: list[str] = []
    try:
        for name in names.values():
            _run("ip", "netns", "add", name)
            created.append(name)
            _run("ip", "-n", name, "link", "set", "lo", "up")
        hub, ra, rb, a, b = (names[k] for k in ("hub", "ra", "rb", "a", "b"))
        # Each veth pair is created directly inside its two namespaces.
        _run(
            "ip",
            "link",
            "add",
            "wan",
            "netns",
            ra,
            "type",
            "veth",
            "peer",
            "name",
            "to-a",
            "netns",
            hub,
        )
        _run(
            "ip",
            "link",
            "add",
            "wan",
            "netns",
            rb,
            "type",
            "veth",
            "peer",
            "name",
            "to-b",
            "netns",
            hub,
        )
        _run(
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            a,
            "type",
            "veth",
            "peer",
            "name",
            "lan",
            "netns",
            ra,
        )
        _run(
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            b,
            "type",
            "veth",
            "peer",
            "name",
            "lan",
            "netns",
            rb,
        )
        for ns, dev, addr in (
            (hub, "to-a", "198.51.100.1/24"),
            (hub, "to-b", "203.0.113.1/24"),
            (ra, "wan", "198.51.100.2/24"),
            (rb, "wan", "203.0.113.2/24"),
            (ra, "lan", "192.0.2.1/26"),
            (rb, "lan", "192.0.2.65/26"),
            (a, "eth0", "192.0.2.2/26"),
            (b, "eth0", "192.0.2.66/26"),
        ):
            _run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
        _run("ip", "-n", ra, "route", "add", "default", "via", "198.51.100.1")
        _run("ip", "-n", rb, "route", "add", "default", "via", "203.0.113.1")
        _run("ip", "-n", a, "route", "add", "default", "via", "192.0.2.1")
        _run("ip", "-n", b, "route", "add", "default", "via", "192.0.2.65")
        for ns in (hub, ra, rb):
            Netns(ns).run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for ns in (ra, rb):
            Netns(ns).nft(_router_rules(random_ports))
        yield NatTopology(Netns(hub), Netns(a), Netns(b), Netns(ra), Netns(rb))
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
