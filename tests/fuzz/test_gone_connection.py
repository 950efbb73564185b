"""Requests still queued when their connection goes are dropped, not half-run.

Found by the state machine (a RuntimeWarning, "coroutine ... was never awaited"): a
client pipelines requests and the connection closes while the hub is busy with the
first one (a Register or Login awaits the password hash). When the connection went,
the hub handed *every* queued event to its handlers to get at the Closed event,
and dropped the coroutines the async handlers returned, unawaited.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from duplex.testing.hubs import hub_test_config, running_hub
from duplex.wire import messages as m


def test_requests_queued_behind_a_busy_one_are_dropped_with_their_connection(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path)) as hub:
            for _ in range(5):
                _, writer = await asyncio.open_connection(*hub.address)
                writer.write(
                    m.encode(m.Hello(1))
                    + b"".join(
                        m.encode(m.Register(rid=i, user=f"u{i}", password="correct horse"))
                        for i in range(1, 4)
                    )
                )
                writer.close()  # gone while the hub hashes the first password
                await writer.wait_closed()
            await asyncio.sleep(0.3)
            gc.collect()  # an unawaited coroutine warns when collected

    asyncio.run(scenario())
