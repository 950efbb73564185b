"""Password guessing against a hub process: throttled, and the real user still gets in.

The hub's :class:`~duplex.hub.accounts.LoginThrottle` charges failed logins to the
pair (address, user) and to the address, never to the user alone. So:

* from one address, a burst of guesses at alice gets ``login_burst`` (5) of them
  checked and the rest refused as ``throttled``, even the right password from there;
* from many addresses (127.0.0.2-41), each address gets its own 5: the attack is
  bounded by addresses x burst (and by argon2's price), not stopped;
* one address guessing many users' passwords runs out of its per-address budget
  (``ip_login_burst``, 30) whatever the user;
* and in every case alice, from her own address, logs in at once.

``tests/hub/test_hub.py::test_brute_force_is_throttled_but_the_real_user_gets_in`` is the
in-process ancestor (one address).
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

from duplex.client import register
from duplex.testing.chaos import note
from duplex.testing.clients import new_client
from duplex.testing.hubs import HubProcess
from duplex.wire import messages as m

BURST = 5  # login_burst, the default
IP_BURST = 30  # ip_login_burst, the default


async def guess(address: tuple[str, int], user: str, password: str, source: str) -> str:
    """One login attempt on a fresh connection from ``source``: the outcome's code."""
    reader, writer = await asyncio.open_connection(*address, local_addr=(source, 0))
    try:
        writer.write(m.encode(m.Hello(1, "guesser")))
        writer.write(m.encode(m.Login(rid=1, user=user, device="guess", password=password)))
        while True:
            size = int.from_bytes(await reader.readexactly(4), "big")
            reply = m.decode(await reader.readexactly(size))
            if isinstance(reply, m.Welcome):
                return "welcome"
            if isinstance(reply, m.Error) and reply.rid == 1:
                return reply.code
    finally:
        writer.close()


async def real_user_gets_in(address: tuple[str, int], source: str) -> float:
    """alice's real client, from ``source``: seconds to get online."""
    started = time.perf_counter()
    alice = await new_client(address, "alice", register_first=False, bind=source, reconnect=False)
    took = time.perf_counter() - started
    await alice.close()
    return took


def test_login_brute_force_from_one_address_and_from_many(tmp_path: Path) -> None:
    async def scenario() -> None:
        hub = HubProcess(tmp_path / "hub", args=["--synchronous", "NORMAL"])
        address = hub.address
        try:
            await register(address, "alice", "correct horse", bind="127.0.0.250")

            # One address, 40 guesses at once.
            outcomes = collections.Counter(
                await asyncio.gather(
                    *(guess(address, "alice", f"guess {i}", "127.0.0.1") for i in range(40))
                )
            )
            assert outcomes["bad-credentials"] <= BURST + 1, outcomes
            assert outcomes["throttled"] >= 40 - BURST - 1, outcomes
            right = await guess(address, "alice", "correct horse", "127.0.0.1")
            assert right == "throttled", "the right password from the attacker's address"
            took = await real_user_gets_in(address, "127.0.0.200")
            assert took < 2.0
            note(
                "brute force, one address",
                f"40 guesses: {outcomes['bad-credentials']} checked, {outcomes['throttled']} "
                f"throttled; the right password from there throttled too; alice from her own "
                f"address online in {took * 1000:.0f} ms",
            )

            # 40 addresses, 10 guesses each, all at once.
            sources = [f"127.0.0.{i}" for i in range(2, 42)]
            results = await asyncio.gather(
                *(
                    guess(address, "alice", f"guess {src} {i}", src)
                    for src in sources
                    for i in range(10)
                )
            )
            per_source = collections.Counter(
                src
                for src, r in zip([s for s in sources for _ in range(10)], results, strict=True)
                if r == "bad-credentials"
            )
            outcomes = collections.Counter(results)
            assert max(per_source.values()) <= BURST + 1, per_source
            assert outcomes["bad-credentials"] <= len(sources) * (BURST + 1), outcomes
            assert outcomes["welcome"] == 0
            took = await real_user_gets_in(address, "127.0.0.201")
            assert took < 2.0
            note(
                "brute force, 40 addresses",
                f"400 guesses: {outcomes['bad-credentials']} checked (at most "
                f"{max(per_source.values())} per address), {outcomes['throttled']} throttled; "
                f"alice online in {took * 1000:.0f} ms",
            )

            # One address, many users: the address's own budget runs out.
            results = [
                await guess(address, f"user{i}", "guess", "127.0.0.99")
                for i in range(IP_BURST + 10)
            ]
            outcomes = collections.Counter(results)
            assert outcomes["bad-credentials"] <= IP_BURST + 1, outcomes
            assert outcomes["throttled"] >= 9, outcomes
            took = await real_user_gets_in(address, "127.0.0.202")
            assert took < 2.0
            note(
                "brute force, many users from one address",
                f"{IP_BURST + 10} guesses: {outcomes['bad-credentials']} checked, "
                f"{outcomes['throttled']} throttled; alice online in {took * 1000:.0f} ms",
            )
            assert "Traceback" not in hub.stderr, hub.stderr[-3000:]
        finally:
            hub.kill()

    asyncio.run(scenario())
