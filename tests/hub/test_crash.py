"""Crash safety and presence truth, with the hub or a client as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from duplex.client import MessageReceived, MessageStateChanged, PresenceChanged, register
from duplex.testing.clients import EventLog, new_client, wait_for_event
from duplex.testing.hubs import HubProcess, hub_test_config, running_hub
from duplex.testing.servers import free_port, scaled

SENDERS = ["s1", "s2", "s3"]
RECIPIENTS = ["r1", "r2"]  # r1 stays online, r2 comes online only at the end


def test_sigkill_during_flood_loses_nothing_acked_and_shows_nothing_twice(tmp_path: Path) -> None:
    async def scenario() -> None:
        port = free_port()
        data = tmp_path / "hub"
        hub = HubProcess(data, port=port, args=["--synchronous", "FULL"])
        address = hub.address
        try:
            for user in SENDERS + RECIPIENTS:
                await register(address, user, "correct horse")
            r1 = await new_client(address, "r1", register_first=False)
            r1_log = EventLog(r1)
            senders = {u: await new_client(address, u, register_first=False) for u in SENDERS}
            logs = {u: EventLog(c) for u, c in senders.items()}
            sent: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
            rng = random.Random()
            kill_at = [rng.randrange(20, 130) for _ in range(3)]
            acked_before_kill: set[bytes] = set()

            def acked_now() -> set[bytes]:
                return {
                    e.id
                    for lg in logs.values()
                    for e in lg.of(MessageStateChanged)
                    if e.state in ("stored", "delivered")
                }

            kills = 0
            for round_ in range(3):
                for i in range(150):
                    for user, client in senders.items():
                        to = RECIPIENTS[(i + round_) % 2]
                        sent[user].append((to, await client.send(to, f"{user}:{round_}:{i}")))
                    if i == kill_at[round_]:
                        # SIGKILL at a random moment: no chance to flush or say goodbye.
                        acked_before_kill |= acked_now()
                        hub.kill(signal.SIGKILL)
                        kills += 1
                        hub = HubProcess(data, port=port, args=["--synchronous", "FULL"])
                    await asyncio.sleep(0.003)  # a flood, but one the hub acks as it goes
            assert kills == 3
            acked = acked_before_kill | acked_now()
            assert acked_before_kill, "nothing was acked before the kills: the test proves little"
            r2 = await new_client(address, "r2", register_first=False)
            r2_log = EventLog(r2)
            total = sum(len(v) for v in sent.values())
            await r1_log.wait(
                lambda lg: len(lg.of(MessageReceived)) + len(r2_log.of(MessageReceived)) >= total,
                60,
            )
            received = r1_log.of(MessageReceived) + r2_log.of(MessageReceived)
            counts = Counter(e.id for e in received)
            assert not [i for i, n in counts.items() if n > 1], "a message was shown twice"
            lost = acked - set(counts)
            assert not lost, f"{len(lost)} acked messages lost"
            assert len(counts) == total  # and, with resends, nothing unacked was lost either
            for user in SENDERS:
                for recipient, rlog in (("r1", r1_log), ("r2", r2_log)):
                    order = [e.id for e in rlog.of(MessageReceived) if e.peer == user]
                    expected = [i for to, i in sent[user] if to == recipient]
                    assert order == expected, f"{user}->{recipient} out of order"
            print(
                f"\ncrash test: {total} messages, {kills} SIGKILLs, {len(acked_before_kill)} "
                "acked before a kill, lost 0, duplicated 0, order kept"
            )
            for log in [r1_log, r2_log, *logs.values()]:
                await log.stop()
            for client in [r1, r2, *senders.values()]:
                await client.close()
        finally:
            hub.kill()

    asyncio.run(scenario())


def test_frozen_client_goes_offline_within_grace_and_gets_its_messages(tmp_path: Path) -> None:
    async def scenario() -> None:
        grace = 2.0
        config = hub_test_config(tmp_path / "hub", grace=grace, heartbeat=0.5)
        async with running_hub(config) as hub:
            host, port = hub.address
            await register(hub.address, "bob", "correct horse")
            alice = await new_client(hub.address, "alice")
            await alice.add_contact("bob")
            assert await wait_for_event(alice, PresenceChanged) == PresenceChanged("bob", False)
            env = dict(os.environ)
            env.update(
                DUPLEX_PASSWORD="correct horse",
                DUPLEX_CONFIG_DIR=str(tmp_path / "conf"),
                DUPLEX_DATA_DIR=str(tmp_path / "data"),
            )
            bob = subprocess.Popen(  # noqa: ASYNC220 - starting it is instant; we never wait on it here
                [
                    sys.executable,
                    "-m",
                    "duplex",
                    "inbox",
                    "--follow",
                    "--json",
                    "--user",
                    "bob",
                    "--hub",
                    f"{host}:{port}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            try:
                assert await wait_for_event(alice, PresenceChanged, timeout=20) == PresenceChanged(
                    "bob", True
                )
                os.kill(bob.pid, signal.SIGSTOP)  # frozen: no FIN, no heartbeat
                frozen_at = time.monotonic()
                assert await wait_for_event(alice, PresenceChanged, timeout=10) == PresenceChanged(
                    "bob", False
                )
                took = time.monotonic() - frozen_at
                assert took <= grace + 1.0 + scaled(0.5), f"offline only after {took:.1f} s"
                ids = [await alice.send("bob", f"while frozen {i}") for i in range(3)]
                for msg_id in ids:
                    assert await alice.wait_state(msg_id, "stored", 10) == "stored"
                    assert alice.state_of(msg_id) == ("stored", "stored")
                os.kill(bob.pid, signal.SIGCONT)
                for msg_id in ids:
                    assert await alice.wait_state(msg_id, "delivered", 30) == "delivered"
            finally:
                os.kill(bob.pid, signal.SIGCONT)
                bob.terminate()
                out, err = bob.communicate(timeout=30)
            lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            assert [x["text"] for x in lines] == [f"while frozen {i}" for i in range(3)], err
            await alice.close()

    asyncio.run(scenario())
