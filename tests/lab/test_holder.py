from __future__ import annotations

import socket

from duplex.lab.holder import Holder


def test_holder_connects_from_a_source_address_and_a_port_window() -> None:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(64)
        port = lsock.getsockname()[1]
        holder = Holder()
        try:
            answer = holder.connect(
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "count": 5,
                    "source": "127.0.0.9",
                    "record_ports": True,
                }
            )
            assert answer["opened"] == 5 and answer["error"] is None
            assert all(s.getsockname()[0] == "127.0.0.9" for s in holder.socks)
            assert holder.ports({"port": port})["ports"] == answer["ports"]
            # A window of 4 ports: the 5th connect to the same destination fails.
            # (the window is picked above the usual range's start, where little is bound)
            window = holder.connect(
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "count": 10,
                    "port_range": [59990, 59993],
                    "record_ports": True,
                }
            )
            assert window["error"] == "EADDRNOTAVAIL"
            assert window["opened"] <= 4
            assert all(59990 <= p <= 59993 for p in window["ports"])
            assert holder.stats()["held"] == 5 + window["opened"]
        finally:
            assert holder.close({"abort": True})["closed"] >= 5
        assert holder.socks == []
