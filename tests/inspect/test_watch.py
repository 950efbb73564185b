from __future__ import annotations

from duplex.inspect.fds import FdLink, Owner, owners_by_inode
from duplex.inspect.procnet import parse_tcp
from duplex.inspect.views import Snapshot
from duplex.inspect.watch import diff

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt uid inode\n"
LISTEN = "   0: 0100007F:1B5F 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1001 1\n"


def _row(local: str, remote: str, state: str, inode: int) -> str:
    return f"   1: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 0 0 {inode} 1\n"


C, S = "0100007F:909C", "0100007F:1B5F"


def _snap(rows: str, links: list[FdLink]) -> Snapshot:
    return Snapshot(
        parse_tcp(HEADER + LISTEN + rows, "tcp", "little"), owners=owners_by_inode(links)
    )


def test_client_closes_first_and_keeps_its_owner_in_time_wait() -> None:
    links = [FdLink(200, 5, "socket:[11]"), FdLink(100, 4, "socket:[12]")]
    before = _snap(_row(C, S, "01", 11) + _row(S, C, "01", 12), links)
    middle = _snap(_row(C, S, "05", 0) + _row(S, C, "08", 12), links)
    after = _snap(_row(C, S, "06", 0), [])
    memory: dict[tuple[str, int, str, int], tuple[Owner, ...]] = {}
    first = {(c.role, c.new): c for c in diff(before, middle, memory)}
    assert first["client", "FIN_WAIT2"].note == "the client closed first (active close)"
    assert first["server", "CLOSE_WAIT"].note == "the client closed first; the server got its FIN"
    second = diff(middle, after, memory)
    tw = next(c for c in second if c.new == "TIME_WAIT")
    assert tw.role == "client" and tw.old == "FIN_WAIT2"
    assert [o.pid for o in tw.owners] == [200]  # remembered from before: it was pid 200
    gone = next(c for c in second if c.kind == "gone")
    assert gone.role == "server" and gone.old == "CLOSE_WAIT" and gone.note == "closed"
    assert "TIME_WAIT" in str(tw) and tw.as_dict()["ports"] == [37020, 7007]


def test_server_closes_first() -> None:
    links = [FdLink(200, 5, "socket:[11]"), FdLink(100, 4, "socket:[12]")]
    before = _snap(_row(C, S, "01", 11) + _row(S, C, "01", 12), links)
    after = _snap(_row(C, S, "08", 11) + _row(S, C, "06", 0), links)
    changes = {c.role: c for c in diff(before, after)}
    assert changes["server"].new == "TIME_WAIT"
    assert changes["server"].note == "the server closed first (active close)"
    assert changes["client"].note == "the server closed first; the client got its FIN"


def test_new_connection_and_no_change() -> None:
    links = [FdLink(200, 5, "socket:[11]"), FdLink(100, 4, "socket:[12]")]
    empty = _snap("", [])
    conn = _snap(_row(C, S, "01", 11) + _row(S, C, "01", 12), links)
    news = diff(empty, conn)
    assert {(c.kind, c.role, c.note) for c in news} == {
        ("new", "client", "connected"),
        ("new", "server", "connected"),
    }
    assert diff(conn, conn) == []
