"""Sans-I/O tests of both hub session sides, wired back to back, with fake time."""

from __future__ import annotations

import pytest

from duplex.errors import ClosedResourceError, InvalidState
from duplex.protocol.events import Closed, Event, Received, TimedOut
from duplex.protocol.hub import HubClientSession, HubServerSession, SessionConfig, State
from duplex.wire import messages as m
from duplex.wire.frames import encode_frame

CONFIG = SessionConfig(auth_timeout=5.0, heartbeat=1.0, grace=3.0)


class Pair:
    """A client and a hub session connected by a perfect, instant wire."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.client = HubClientSession(CONFIG, now)
        self.hub = HubServerSession(CONFIG, now)
        self.client_eof = False
        self.hub_eof = False

    def pump(self) -> tuple[list[Event], list[Event]]:
        """Moves bytes both ways until quiet; returns (client events, hub events)."""
        client_events: list[Event] = []
        hub_events: list[Event] = []
        moved = True
        while moved:
            moved = False
            for chunk in self.client.data_to_send():
                moved = True
                if chunk:
                    self.hub.receive_data(chunk, self.now)
                else:
                    self.hub.receive_eof()
            for chunk in self.hub.data_to_send():
                moved = True
                if chunk:
                    self.client.receive_data(chunk, self.now)
                else:
                    self.client.receive_eof()
            client_events += self.client.events_received()
            hub_events += self.hub.events_received()
        return client_events, hub_events

    def login(self) -> None:
        self.client.send(m.Login(rid=1, user="alice", device="d1", password="pw"))
        _, hub_events = self.pump()
        assert isinstance(messages_of(hub_events)[-1], m.Login)
        assert self.hub.state is State.LOGIN
        self.hub.send(
            m.Welcome(
                rid=1, user="alice", session="s1", device="d1", last_seq=0, heartbeat=1.0, grace=3.0
            )
        )
        self.pump()
        assert self.client.state is State.READY
        assert self.hub.state is State.READY


def messages_of(events: list[Event]) -> list[m.Message]:
    return [e.message for e in events if isinstance(e, Received)]


def test_hello_both_ways_then_login() -> None:
    pair = Pair()
    pair.login()
    assert pair.hub.peer_agent == "duplex/0.1"
    assert pair.client.peer_agent == "duplex/0.1"


def test_register_then_login_pipelined() -> None:
    pair = Pair()
    pair.client.send(m.Register(rid=1, user="bob", password="pw"))
    pair.client.send(m.Login(rid=2, user="bob", device="d", password="pw"))
    _, hub_events = pair.pump()
    assert [type(x) for x in messages_of(hub_events)] == [m.Hello, m.Register, m.Login]


def test_refused_login_allows_retry() -> None:
    pair = Pair()
    pair.client.send(m.Login(rid=1, user="alice", device="d", password="bad"))
    pair.pump()
    pair.hub.refuse_login("bad-credentials", "wrong user name or password", rid=1)
    client_events, _ = pair.pump()
    errors = messages_of(client_events)
    assert isinstance(errors[-1], m.Error)
    assert errors[-1].code == "bad-credentials"
    assert pair.client.state is State.AUTH
    assert pair.hub.state is State.AUTH
    pair.login()


def test_send_before_login_closes_with_state_error() -> None:
    pair = Pair()
    frame = m.encode(m.Send(id=b"i" * 16, to="bob", body="x"))
    pair.pump()  # hellos
    pair.hub.receive_data(frame, 0.0)
    events = pair.hub.events_received()
    assert isinstance(events[-1], Closed)
    assert events[-1].code == "state"
    out = pair.hub.data_to_send()
    assert out[-1] == b""
    error = m.decode(out[-2][4:])
    assert isinstance(error, m.Error)
    assert error.code == "state"
    assert pair.hub.closed


def test_illegal_send_raises_and_changes_nothing() -> None:
    pair = Pair()
    with pytest.raises(InvalidState):
        pair.client.send(m.Ack(upto=1))
    with pytest.raises(InvalidState):
        pair.hub.send(m.Deliver(seq=1, kind="msg", peer="x", id=b"i" * 16))
    assert pair.client.state is State.HELLO
    assert pair.hub.state is State.HELLO
    assert len(pair.client.data_to_send()) == 1  # only the Hello


def test_wrong_version_is_refused() -> None:
    hub = HubServerSession(CONFIG, 0.0)
    hub.receive_data(m.encode(m.Hello(proto=99, agent="future")), 0.0)
    events = hub.events_received()
    assert isinstance(events[-1], Closed)
    assert events[-1].code == "version"


def test_oversized_frame_closes_before_body() -> None:
    hub = HubServerSession(SessionConfig(max_frame=1000), 0.0)
    hub.receive_data((1001).to_bytes(4, "big"), 0.0)
    events = hub.events_received()
    assert isinstance(events[-1], Closed)
    assert events[-1].code == "too-big"


def test_garbage_closes_with_malformed() -> None:
    hub = HubServerSession(CONFIG, 0.0)
    hub.receive_data(encode_frame(b"\xc1\xc1\xc1"), 0.0)
    events = hub.events_received()
    assert isinstance(events[-1], Closed)
    assert events[-1].code == "malformed"
    hub.receive_data(b"more", 0.0)  # ignored once closed
    assert hub.events_received() == []


def test_authentication_timeout() -> None:
    hub = HubServerSession(CONFIG, 100.0)
    assert hub.get_timer() == 105.0
    hub.handle_timer(104.9)
    assert not hub.closed
    hub.handle_timer(105.0)
    events = hub.events_received()
    assert TimedOut("auth") in events
    assert hub.closed
    assert hub.get_timer() is None


def test_heartbeats_keep_the_session_alive() -> None:
    pair = Pair()
    pair.login()
    for step in range(1, 20):
        pair.now = step * 0.5
        pair.client.handle_timer(pair.now)
        pair.hub.handle_timer(pair.now)
        pair.pump()
    assert not pair.hub.closed
    assert not pair.client.closed


def test_silent_client_is_dropped_after_grace() -> None:
    pair = Pair()
    pair.login()
    # The client stops sending anything (frozen): only time passes at the hub.
    assert pair.hub.get_timer() == 3.0
    pair.hub.handle_timer(2.99)
    assert not pair.hub.closed
    pair.hub.handle_timer(3.0)
    events = pair.hub.events_received()
    assert TimedOut("heartbeat") in events
    assert pair.hub.closed


def test_silent_hub_is_given_up_after_grace() -> None:
    pair = Pair()
    pair.login()
    pair.client.handle_timer(1.0)  # a ping goes out, nobody answers
    assert pair.client.data_to_send()
    pair.client.handle_timer(3.0)
    assert TimedOut("heartbeat") in pair.client.events_received()
    assert pair.client.closed


def test_ping_is_answered_in_any_open_state() -> None:
    hub = HubServerSession(CONFIG, 0.0)
    hub.data_to_send()
    hub.receive_data(m.encode(m.Hello(1)) + m.encode(m.Ping(7)), 0.0)
    assert m.decode(hub.data_to_send()[-1][4:]) == m.Pong(7)


def test_send_after_close_raises_closed() -> None:
    pair = Pair()
    pair.login()
    pair.client.receive_eof()
    assert isinstance(pair.client.events_received()[-1], Closed)
    with pytest.raises(ClosedResourceError):
        pair.client.send(m.Ack(upto=1))


def test_truncated_frame_at_eof_is_reported() -> None:
    hub = HubServerSession(CONFIG, 0.0)
    hub.receive_data(m.encode(m.Hello(1))[:-2], 0.0)
    hub.receive_eof()
    events = hub.events_received()
    assert isinstance(events[-1], Closed)
    assert events[-1].code == "malformed"
