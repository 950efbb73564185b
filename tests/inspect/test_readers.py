from __future__ import annotations

import os
import socket

import pytest

from duplex.inspect import readers
from duplex.inspect.errors import NoSuchProcess
from duplex.inspect.procnet import TcpState


def test_snapshot_sees_our_sockets_and_their_descriptors() -> None:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(3)
        port = lsock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            snap = readers.take_snapshot(pids=[os.getpid()], udp=True, unix=True, backlogs=True)
            # Our three sockets only: a TIME_WAIT of another test may reuse a port number.
            cport = client.getsockname()[1]
            ours = [
                e
                for e in snap.tcp
                if {e.local.port, e.remote.port} == {port, cport}
                or (e.state is TcpState.LISTEN and e.local.port == port)
            ]
            states = sorted(e.state.name for e in ours)
            assert states == ["ESTABLISHED", "ESTABLISHED", "LISTEN"]
            listener = next(e for e in ours if e.state is TcpState.LISTEN)
            assert listener.rx_queue == 1  # the client waits in the accept queue
            assert snap.backlogs[listener.inode].wqueue == 3
            assert [(o.pid, o.fd) for o in snap.owners_of(listener.inode)] == [
                (os.getpid(), lsock.fileno())
            ]
            client_row = next(e for e in ours if e.local.port == client.getsockname()[1])
            assert snap.owners_of(client_row.inode)[0].fd == client.fileno()
            assert snap.ephemeral[0] <= client.getsockname()[1] <= snap.ephemeral[1]


def test_system_files_parse() -> None:
    assert "TcpExt" in readers.read_netstat()
    assert "TCP" in readers.read_sockstat()
    assert readers.read_meminfo()["MemTotal"] > 0
    assert readers.read_comm(os.getpid())
    assert readers.read_comm(0) == ""
    lo, hi = readers.read_ephemeral_range()
    assert 0 < lo <= hi <= 65535


def test_unknown_process() -> None:
    with pytest.raises(NoSuchProcess, match="no process"):
        readers.read_fd_links([2**22 + 12345], strict_pid=2**22 + 12345)
    assert readers.read_fd_links([2**22 + 12345]) == []
