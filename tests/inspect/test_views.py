from __future__ import annotations

from duplex.inspect.diag import DiagEntry
from duplex.inspect.fds import FdLink, Owner, owners_by_inode
from duplex.inspect.procnet import TcpState, parse_tcp, parse_udp, parse_unix
from duplex.inspect.views import Snapshot, filter_pairs, join_pairs, listeners, process_view
from duplex.protocol.handler import Endpoint
from tests.inspect import fixtures

LINKS = [
    FdLink(100, 3, "socket:[1001]"),  # the server's listener
    FdLink(100, 4, "socket:[1003]"),  # its accepted connection
    FdLink(200, 5, "socket:[1002]"),  # client 1
    FdLink(201, 3, "socket:[1004]"),  # client 2 (still in the accept queue)
    FdLink(300, 3, "socket:[2001]"),
    FdLink(300, 4, "socket:[2002]"),
    FdLink(301, 3, "socket:[2005]"),
    FdLink(100, 9, "socket:[13007]"),
    FdLink(100, 10, "socket:[4520]"),
    FdLink(100, 11, "socket:[18934]"),
    FdLink(100, 12, "pipe:[5]"),
    FdLink(200, 6, "socket:[1003]"),  # shares the server's connection (a leaked fork)
]


def _snapshot() -> Snapshot:
    tcp = (
        parse_tcp(fixtures.TCP, "tcp", "little")
        + parse_tcp(fixtures.TCP_V4_CLIENT, "tcp", "little")
        + parse_tcp(fixtures.TCP6, "tcp6", "little")
    )
    return Snapshot(
        tcp=tcp,
        udp=parse_udp(fixtures.UDP, "udp", "little"),
        unix=parse_unix(fixtures.UNIX),
        owners=owners_by_inode(LINKS, {100: "server", 200: "client"}),
        backlogs={
            1001: DiagEntry(
                2,
                TcpState.LISTEN,
                Endpoint("127.0.0.1", 7007),
                Endpoint("0.0.0.0", 0),
                1,
                128,
                0,
                1001,
            )
        },
    )


def test_pairs_join_both_ends_and_name_the_server() -> None:
    pairs = join_pairs(_snapshot())
    by_text = {str(p): p for p in pairs}
    served = by_text["127.0.0.1:37020 <-> 127.0.0.1:7007"]
    assert served.state == "ESTABLISHED"
    assert [o.pid for o in served.client.owners] == [200]
    assert [(o.pid, o.fd) for o in served.server.owners] == [(100, 4), (200, 6)]
    assert (served.server.entry is not None) and served.server.entry.tx_queue == 5
    waiting = by_text["127.0.0.1:37022 <-> 127.0.0.1:7007"]
    assert waiting.server.owners == ()
    assert "accept queue of pid 100 server fd 3" in waiting.server.note
    tw = by_text["127.0.0.1:40222 <-> 127.0.0.1:7007"]
    assert tw.client.state is TcpState.TIME_WAIT and not tw.server.visible
    assert tw.closed_first == "client"
    assert "TIME_WAIT" in tw.client.note
    # the dual-stack server's v4-mapped end is joined with its IPv4 client
    mapped = by_text["127.0.0.1:40960 <-> [::ffff:127.0.0.1]:8080"]
    assert mapped.client.visible and mapped.server.visible
    assert mapped.as_dict()["client"]["owners"] == [{"pid": 301, "fd": 3, "comm": ""}]
    v6 = by_text["[::1]:50000 <-> [::1]:8080"]
    assert v6.proto == "tcp6"
    assert len(pairs) == 5  # listeners are not pairs


def test_filter_pairs() -> None:
    pairs = join_pairs(_snapshot())
    assert len(filter_pairs(pairs, port=7007)) == 3
    assert len(filter_pairs(pairs, port=37020)) == 1
    assert len(filter_pairs(pairs, pid=200)) == 1
    assert len(filter_pairs(pairs, state="time_wait")) == 1
    assert filter_pairs(pairs, port=1) == []


def test_server_role_without_listener_uses_the_ephemeral_range() -> None:
    snap = _snapshot()
    snap.tcp = [e for e in snap.tcp if not e.is_listening]
    pairs = {str(p) for p in join_pairs(snap)}
    assert "127.0.0.1:37020 <-> 127.0.0.1:7007" in pairs
    assert "[::1]:50000 <-> [::1]:8080" in pairs


def test_lone_end_talking_to_a_local_listener_is_the_client() -> None:
    # A TIME_WAIT client end whose server end is gone, both ports in the ephemeral range,
    # the client's port the lower one: the listener on the remote port decides.
    text = (
        "   0: 0100007F:EA60 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 9 1\n"
        "   1: 0100007F:8000 0100007F:EA60 06 00000000:00000000 03:00000000 00000000 0 0 0 3\n"
    )
    [pair] = join_pairs(Snapshot(parse_tcp(text, "tcp", "little")))
    assert str(pair) == "127.0.0.1:32768 <-> 127.0.0.1:60000"
    assert pair.closed_first == "client"


def test_closed_first_from_both_states() -> None:
    text = fixtures.TCP.replace(
        "0100007F:909C 0100007F:1B5F 01", "0100007F:909C 0100007F:1B5F 05"
    ).replace("0100007F:1B5F 0100007F:909C 01", "0100007F:1B5F 0100007F:909C 08")
    pair = next(
        p
        for p in join_pairs(Snapshot(parse_tcp(text, "tcp", "little")))
        if p.client.address.port == 37020
    )
    assert pair.state == "FIN_WAIT2/CLOSE_WAIT"
    assert pair.closed_first == "client"


def test_listeners_explain_the_queues() -> None:
    views = listeners(_snapshot())
    first = views[0]
    assert first.address == "0.0.0.0:2024" and first.backlog is None and first.owners == ()
    main = next(v for v in views if v.address == "127.0.0.1:7007")
    assert (main.accept_queue, main.backlog) == (1, 128)
    assert main.owners == (Owner(100, 3, "server"),)
    assert "accept queue" in str(main.as_dict()["recv_q_means"])
    assert [v.proto for v in views][-1] == "unix"
    assert [v.address for v in listeners(_snapshot(), port=8080)] == ["[::]:8080"]


def test_process_view_roles() -> None:
    snap = _snapshot()
    view = process_view(100, "server", [lk for lk in LINKS if lk.pid == 100], snap)
    roles = {f.fd: f.role for f in view.fds}
    assert roles == {
        3: "listening",
        4: "connected",
        9: "unix-connected",
        10: "unix-listening",
        11: "udp",
        12: "",
    }
    conn = next(f for f in view.fds if f.fd == 4)
    assert conn.remote == "127.0.0.1:37020" and conn.state == "ESTABLISHED"
    assert [o.pid for o in conn.shared_with] == [200]
    assert view.as_dict()["counts"] == {
        "listening": 1,
        "connected": 1,
        "unix-connected": 1,
        "unix-listening": 1,
        "udp": 1,
        "pipe": 1,
    }
    assert view.by_role("listening")[0].local == "127.0.0.1:7007"
