"""A client closed while it is still connecting leaves no socket behind.

Found by the state machine (ResourceWarning: unclosed socket): ``Client.close()``
cancels the connection loop; when that cancellation landed inside the TCP connect,
the socket being connected was never closed.
"""

from __future__ import annotations

import asyncio
import gc
import socket

from duplex.client import Client


def test_close_while_connecting_closes_the_socket() -> None:
    async def scenario() -> None:
        # A listener whose accept queue is full: the kernel drops further SYNs, so a
        # connect to it stays pending (retransmitting) until cancelled.
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            address = listener.getsockname()
            fillers = []
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                try:
                    filler.connect(address)
                except BlockingIOError:
                    pass
                fillers.append(filler)
            try:
                client = Client(address, "ann", password="correct horse")
                await client.start()
                await asyncio.sleep(0.3)
                assert client.state == "connecting"
                await asyncio.wait_for(client.close(), 5)
            finally:
                for filler in fillers:
                    filler.close()
        gc.collect()  # an unclosed socket warns when collected

    asyncio.run(scenario())
