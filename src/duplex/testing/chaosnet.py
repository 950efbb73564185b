"""A private network for chaos tests: a star of namespaces, and the faults to inject.

:func:`star_topology` builds, in :mod:`duplex.testing.netns` style (per-run names,
veth pairs created directly inside their namespaces, TEST-NET addresses only, every
namespace deleted afterwards even when the test fails)::

    leaf 0  198.51.100.2  --eth0--  [core] 198.51.100.1     (the hub runs in core)
    leaf 1  198.51.100.18 --eth0--  [core] 198.51.100.17
    ...     198.51.100.(16 i + 2)          198.51.100.(16 i + 1), one /28 per leaf

The core routes between the leaves without NAT, so two leaves reach each other
directly (the direct path between peers) and the hub sees each leaf's own address.

The faults act where a network would, silently, on the wire (nftables ``netdev``
ingress hooks at both ends of a leaf's link), never in the sockets' way: a dropped
packet leaves its sender normally and vanishes, so TCP finds out only by timing out,
as it does when a cable is pulled. (An ``output`` drop would instead fail the
sender's system call at once with EPERM, which no real network does.)

* :meth:`Star.partition` / :meth:`Star.heal`: every packet on the link, both ways;
* :meth:`Star.loss`: ``numgen random mod 100 < N`` drops, both ways;
* :meth:`Star.cut_between` / :meth:`Star.join`: the core stops forwarding between two
  leaves (the direct path between two peers), while both still reach the hub;
* :meth:`Star.redirect`: an nftables ``redirect`` in the core that sends chosen TCP
  connections through a local port, where a :mod:`duplex.testing.delay` relay
  carries them on after a delay (``tc netem`` is not available on these kernels).
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import uuid
from collections.abc import Iterator, Sequence

from duplex.testing.netns import Netns

__all__ = ["Star", "star_topology"]


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


def _ingress_table(table: str, device: str, rule: str) -> str:
    return (
        f"table netdev {table} {{\n"
        f'  chain ingress {{ type filter hook ingress device "{device}" priority 0;'
        f" policy accept;\n"
        f"    {rule}\n"
        "  }\n}\n"
    )


@dataclasses.dataclass
class Star:
    """The namespaces and addresses of :func:`star_topology`.

    Attributes:
        core: the namespace in the middle (where the hub runs).
        leaves: leaf name -> namespace.
        addresses: leaf name -> its address.
        gateways: leaf name -> the core's address on that leaf's link.
        links: leaf name -> the core's interface towards it.
    """

    core: Netns
    leaves: dict[str, Netns]
    addresses: dict[str, str]
    gateways: dict[str, str]
    links: dict[str, str]

    def _both_ends(self, leaf: str, table: str, rule: str) -> None:
        self.leaves[leaf].nft(_ingress_table(table, "eth0", rule))
        self.core.nft(_ingress_table(table, self.links[leaf], rule))

    def _drop_table(self, leaf: str, table: str) -> None:
        for ns in (self.leaves[leaf], self.core):
            subprocess.run(
                [*ns.exec_prefix(), "nft", "delete", "table", "netdev", table],
                capture_output=True,
                check=False,
            )

    def partition(self, leaf: str) -> None:
        """Cuts ``leaf``'s link: every packet dropped, both ways, silently."""
        self._both_ends(leaf, f"dxcut_{self.links[leaf]}", "drop")

    def heal(self, leaf: str) -> None:
        """Undoes :meth:`partition`."""
        self._drop_table(leaf, f"dxcut_{self.links[leaf]}")

    def loss(self, leaf: str, percent: int) -> None:
        """Drops ``percent`` % of the packets on ``leaf``'s link, each way, at random."""
        self._both_ends(
            leaf, f"dxloss_{self.links[leaf]}", f"numgen random mod 100 < {int(percent)} drop"
        )

    def clear_loss(self, leaf: str) -> None:
        """Undoes :meth:`loss`."""
        self._drop_table(leaf, f"dxloss_{self.links[leaf]}")

    def cut_between(self, a: str, b: str) -> None:
        """Drops everything between leaves ``a`` and ``b`` in the core (each keeps the hub)."""
        self.core.nft(
            "table inet dxcutpair {\n"
            "  chain forward { type filter hook forward priority -10; policy accept;\n"
            f"    ip saddr {self.addresses[a]} ip daddr {self.addresses[b]} drop\n"
            f"    ip saddr {self.addresses[b]} ip daddr {self.addresses[a]} drop\n"
            "  }\n}\n"
        )

    def join(self) -> None:
        """Undoes :meth:`cut_between`."""
        subprocess.run(
            [*self.core.exec_prefix(), "nft", "delete", "table", "inet", "dxcutpair"],
            capture_output=True,
            check=False,
        )

    def redirect(self, match: str, port: int) -> None:
        """Redirects TCP connections that ``match`` (nft syntax) to ``port`` in the core.

        A relay there with ``--original-dst`` learns where each was going.
        """
        self.core.nft(
            "table ip dxredirect {\n"
            "  chain prerouting { type nat hook prerouting priority dstnat; policy accept;\n"
            f"    meta l4proto tcp {match} redirect to :{int(port)}\n"
            "  }\n}\n"
        )


@contextlib.contextmanager
def star_topology(names: Sequence[str]) -> Iterator[Star]:
    """Builds the star of the module docstring with one leaf per name; removes it after.

    Raises:
        ValueError: more than 15 leaves (one /28 of 198.51.100.0/24 each).
    """
    if len(names) > 15:
        raise ValueError("at most 15 leaves")
    prefix = f"dx{uuid.uuid4().hex[:6]}"
    core = f"{prefix}core"
    created: list[str] = []
    try:
        _run("ip", "netns", "add", core)
        created.append(core)
        _run("ip", "-n", core, "link", "set", "lo", "up")
        leaves: dict[str, Netns] = {}
        addresses: dict[str, str] = {}
        gateways: dict[str, str] = {}
        links: dict[str, str] = {}
        for i, name in enumerate(names):
            ns = f"{prefix}l{i}"
            _run("ip", "netns", "add", ns)
            created.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            link = f"leaf{i}"
            _run(
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                link,
                "netns",
                core,
            )
            gateway, address = f"198.51.100.{16 * i + 1}", f"198.51.100.{16 * i + 2}"
            _run("ip", "-n", core, "addr", "add", f"{gateway}/28", "dev", link)
            _run("ip", "-n", core, "link", "set", link, "up")
            _run("ip", "-n", ns, "addr", "add", f"{address}/28", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "route", "add", "default", "via", gateway)
            leaves[name] = Netns(ns)
            addresses[name] = address
            gateways[name] = gateway
            links[name] = link
        Netns(core).run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        yield Star(Netns(core), leaves, addresses, gateways, links)
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
