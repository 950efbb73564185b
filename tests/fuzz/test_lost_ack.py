"""An Ack lost with its connection still reaches the store at the next login.

Found by the state machine: a device acks what it holds (Ack{upto}), but the
connection drops (or the hub stops) before the hub writes that ack to the store. At
its next login the device says ``last_seq``; the hub trusted it for the cursor (what
to replay) and took it as already written, so the store never learnt of the ack: the
messages stayed undelivered there and their senders never got the ``delivered``
receipt, forever.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from duplex.testing.clients import new_client
from duplex.testing.hubs import hub_test_config, running_hub
from duplex.wire import messages as m


async def login(address: tuple[str, int], user: str, last_seq: int) -> list[m.Message]:
    """Logs in as a raw device holding ``last_seq``; returns what came until the replay."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(m.encode(m.Hello(1)))
    writer.write(
        m.encode(
            m.Login(rid=1, user=user, device="phone", password="correct horse", last_seq=last_seq)
        )
    )
    got: list[m.Message] = []
    try:
        while True:
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(4), 0.5), "big")
            got.append(m.decode(await reader.readexactly(size)))
    except TimeoutError:
        pass
    writer.close()
    return got


def test_an_ack_lost_with_its_connection_is_written_at_the_next_login(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            await (await new_client(hub.address, "bob")).close()
            alice = await new_client(hub.address, "alice")
            msg_id = await alice.send("bob", "hello")
            assert await alice.wait_state(msg_id, "stored", 10) == "stored"
            # bob's device gets the message, holds it, and its Ack is lost with the
            # connection (here: never sent).
            first = await login(hub.address, "bob", 0)
            assert [d.seq for d in first if isinstance(d, m.Deliver)] == [1]
            # It logs in again, saying it holds seq 1: that is an ack too.
            await login(hub.address, "bob", 1)
            assert await alice.wait_state(msg_id, "delivered", 10) == "delivered"
            await alice.close()

    asyncio.run(scenario())
