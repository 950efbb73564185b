"""SIGKILL one of two hub nodes (``duplex serve --nodes 2``) during a flood of sends."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

from duplex.client import (
    Client,
    MessageReceived,
    MessageStateChanged,
    PresenceChanged,
    register,
)
from duplex.testing.clients import EventLog, new_client
from duplex.testing.hubs import HubProcess
from duplex.testing.servers import free_port, scaled
from tests.cluster.conftest import Backends, needs_cluster

SENDERS = ["s1", "s2", "s3", "s4"]
RECIPIENTS = ["r1", "r2", "r3"]
GRACE = 2.0  # HubProcess runs the nodes with --heartbeat 0.5 --grace 2
HEARTBEAT = 0.5


async def node_of(broker: object, user: str) -> str:
    """The node that holds ``user``'s (one) session, as Redis says (the hub welcomes a
    client a moment before it publishes the session)."""
    end = time.monotonic() + scaled(5)
    while not (sessions := await broker.sessions(user)):  # type: ignore[attr-defined]
        assert time.monotonic() < end, f"{user} never showed up in Redis"
        await asyncio.sleep(0.01)
    assert len(sessions) == 1, sessions
    return str(sessions[0].node)


async def vanished(observer: object, users: list[str], node: str) -> float:
    """Polls Redis until no session of ``users`` is on ``node``; returns when."""
    while True:
        found = [s for u in users for s in await observer.sessions(u)]  # type: ignore[attr-defined]
        if not any(s.node == node for s in found):
            return time.monotonic()
        await asyncio.sleep(0.02)


@needs_cluster
def test_sigkill_one_of_two_nodes_during_a_flood(tmp_path: Path, cluster: Backends) -> None:
    from duplex.broker.redis import RedisBroker

    async def scenario() -> None:
        hub = HubProcess(
            tmp_path, port=free_port(),
            args=["--nodes", "2", "--store", cluster.store, "--broker", cluster.broker],
        )  # fmt: skip
        observer = RedisBroker(cluster.broker, "observer", ttl=GRACE)

        async def ignore(item: object) -> None:
            pass

        await observer.start(ignore)
        clients: list[Client] = []
        logs: list[EventLog] = []
        try:
            address = hub.address
            pids = {w["node"]: w["pid"] for w in hub.info["workers"]}
            for user in [*SENDERS, *RECIPIENTS, "watcher"]:
                await register(address, user, "correct horse")
            receivers = {u: await new_client(address, u, register_first=False) for u in RECIPIENTS}
            senders = {u: await new_client(address, u, register_first=False) for u in SENDERS}
            clients += [*receivers.values(), *senders.values()]
            rlogs = {u: EventLog(c) for u, c in receivers.items()}
            slogs = {u: EventLog(c) for u, c in senders.items()}
            logs += [*rlogs.values(), *slogs.values()]
            placed = {u: await node_of(observer, u) for u in [*RECIPIENTS, *SENDERS]}
            victim = Counter(placed.values()).most_common(1)[0][0]
            # A user on the victim node who will NOT come back (no reconnection), and a
            # watcher elsewhere who has them as a contact.
            ghost, n = None, 0
            while ghost is None:
                name = f"ghost{n}"
                n += 1
                await register(address, name, "correct horse")
                client = await new_client(address, name, register_first=False, reconnect=False)
                clients.append(client)
                if await node_of(observer, name) == victim:
                    ghost = name
                assert n < 40, "SO_REUSEPORT never placed a client on the victim node"
            watcher = await new_client(address, "watcher", register_first=False)
            clients.append(watcher)
            wlog = EventLog(watcher)
            logs.append(wlog)
            await watcher.add_contact(ghost)
            assert [(c.user, c.online) for c in await watcher.contacts()] == [(ghost, True)]
            on_victim = [u for u, node in placed.items() if node == victim]
            print(f"\nnodes {sorted(pids)}; killing {victim}, which holds {on_victim} and {ghost}")

            sent: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
            kill_at = random.randrange(60, 140)
            killed_at = 0.0
            seen = 0
            acked_before: set[bytes] = set()
            for i in range(250):
                for user, client in senders.items():
                    to = RECIPIENTS[(i + int(user[1:])) % len(RECIPIENTS)]
                    sent[user].append((to, await client.send(to, f"{user}:{i}")))
                if i == kill_at:
                    acked_before = {
                        e.id for lg in slogs.values() for e in lg.of(MessageStateChanged)
                        if e.state in ("stored", "delivered")
                    }  # fmt: skip
                    seen = len([p for p in wlog.of(PresenceChanged) if p.user == ghost])
                    os.kill(pids[victim], signal.SIGKILL)
                    killed_at = time.monotonic()
                    gone = asyncio.get_running_loop().create_task(
                        vanished(observer, [*on_victim, ghost], victim)
                    )
                await asyncio.sleep(0.004)
            assert acked_before, "nothing was acked before the kill: the test proves little"

            # The victim's sessions stop counting in Redis within the grace (its ttl).
            gone_after = await gone - killed_at
            assert gone_after <= GRACE + scaled(0.5), f"still online {gone_after:.1f} s after"
            contacts = await watcher.contacts()
            assert [(c.user, c.online) for c in contacts] == [(ghost, False)]
            # And the watcher is told, without asking: the survivor's next refresh purges
            # the dead node's entries and pushes "offline" for the users it held.
            await wlog.wait(
                lambda lg: any(p.user == ghost and not p.online for p in lg.of(PresenceChanged)),
                scaled(5),
            )
            told_after = time.monotonic() - killed_at
            assert told_after <= GRACE + HEARTBEAT + scaled(1), f"told after {told_after:.1f} s"
            said = [p.online for p in wlog.of(PresenceChanged) if p.user == ghost]
            assert said[seen:] == [False], "told once, and only that"

            # Its clients are back (on the surviving node or on its replacement).
            for user in on_victim:
                client = receivers.get(user) or senders[user]
                deadline = killed_at + scaled(10)
                await client.wait_online(max(0.1, deadline - time.monotonic()))
            back_after = time.monotonic() - killed_at
            assert back_after <= scaled(10), f"clients back only after {back_after:.1f} s"

            total = sum(len(v) for v in sent.values())
            await rlogs[RECIPIENTS[0]].wait(
                lambda _: sum(len(lg.of(MessageReceived)) for lg in rlogs.values()) >= total, 60
            )
            received = [e for lg in rlogs.values() for e in lg.of(MessageReceived)]
            counts = Counter(e.id for e in received)
            assert not [i for i, k in counts.items() if k > 1], "a message was shown twice"
            acked = acked_before | {
                e.id for lg in slogs.values() for e in lg.of(MessageStateChanged)
                if e.state in ("stored", "delivered")
            }  # fmt: skip
            assert not acked - set(counts), "an acked message was lost"
            assert len(counts) == total
            for user in SENDERS:
                for recipient in RECIPIENTS:
                    order = [e.id for e in rlogs[recipient].of(MessageReceived) if e.peer == user]
                    assert order == [i for to, i in sent[user] if to == recipient]
            print(f"node loss: {total} messages, {len(acked_before)} acked before the SIGKILL, "
                  f"sessions gone from Redis after {gone_after:.2f} s, watcher told within "
                  f"{told_after:.2f} s, clients back after "
                  f"{back_after:.2f} s; lost 0, duplicated 0, order kept")  # fmt: skip
        finally:
            for log in logs:
                await log.stop()
            for client in clients:
                await client.close()
            await observer.close()
            if hub.proc.poll() is None:
                hub.stop()
            else:
                hub.close()

    asyncio.run(scenario())
