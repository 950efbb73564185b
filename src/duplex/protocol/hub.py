"""The hub session, both sides, sans-I/O: the state table, framing and timers.

One session is one TCP (or TLS) connection between a client and the hub. It turns
bytes into :class:`~duplex.protocol.events.Received` events, refuses anything the state
table does not allow, answers heartbeats, and keeps three timers, all driven by the
``now`` its driver passes in (it never reads a clock):

* **authentication timeout** (hub side): a connection that has not logged in within
  ``auth_timeout`` seconds is closed, so idle sockets cannot pile up (slowloris);
* **heartbeat** (client side): a :class:`~duplex.wire.messages.Ping` every
  ``heartbeat`` seconds, which the hub answers with a ``Pong``;
* **grace** (both sides): a peer from which nothing has arrived for ``grace`` seconds
  is dead, even if TCP still says the connection is open (a half-open connection, a
  frozen process, a cable pulled). The hub then marks the session offline.

Rule 1 (h11's): the table below lists, per role and state, the messages that may be
*received* and *sent* and the state each leads to. Anything not listed is refused:
received, it closes the session with an ``Error{code="state"}``; sent, it raises
:class:`~duplex.errors.InvalidState` and changes nothing.

Rule 2: ``Hello``, ``Ping``, ``Pong`` and ``Error`` are handled by the session itself
in every state but CLOSED. ``Hello`` is accepted once, first: it moves HELLO to AUTH,
and leaves LOGIN alone (a client may pipeline its Login before the hub's Hello
arrives); anything before the peer's Hello is refused. ``Error`` is sent by the hub
in any state (a refusal), and received by the client in any state (the hub's reason
for what comes next).
"""

from __future__ import annotations

import dataclasses
import enum

from duplex.errors import (
    ClosedResourceError,
    DuplexError,
    InvalidState,
    RemoteProtocolError,
    UnsupportedVersion,
)
from duplex.protocol.events import Closed, Event, Received, TimedOut
from duplex.wire import messages as m
from duplex.wire.frames import DEFAULT_MAX_FRAME, FrameDecoder
from duplex.wire.messages import PROTO_VERSION, Message, decode, encode

__all__ = [
    "CLIENT_TABLE",
    "HUB_TABLE",
    "HubClientSession",
    "HubServerSession",
    "Role",
    "SessionConfig",
    "State",
]


class State(enum.Enum):
    """States of a hub session (the same names on both sides)."""

    HELLO = "hello"
    """Our Hello is sent; the peer's has not arrived."""
    AUTH = "auth"
    """Hellos exchanged: register, or log in."""
    LOGIN = "login"
    """A Login is in flight; the hub is checking it."""
    READY = "ready"
    """Logged in: messages flow."""
    CLOSED = "closed"
    """Over; nothing more is read or written."""

    # The state tables are keyed by State and looked up for every frame each way:
    # object's identity hash runs in C, Enum's is a Python call (hash(self._name_)).
    # Members are singletons, so identity is what equality means for them anyway.
    __hash__ = object.__hash__


class Role(enum.Enum):
    """Which end of the connection a session is."""

    HUB = "hub"
    CLIENT = "client"
    LISTENER = "peer listener"
    DIALER = "peer dialer"


H, A, L, R = State.HELLO, State.AUTH, State.LOGIN, State.READY

_READY_REQUESTS: dict[type[Message], State] = {
    t: R
    for t in (
        m.Send,
        m.Ack,
        m.ContactAdd,
        m.ContactRemove,
        m.ContactList,
        m.Introduce,
        m.HistoryRequest,
        m.Logout,
        m.DirectReport,
    )
}
_READY_PUSHES: dict[type[Message], State] = {
    t: R
    for t in (
        m.Ok,
        m.Stored,
        m.Deliver,
        m.Presence,
        m.Contacts,
        m.Introduction,
        m.PeerOffline,
        m.History,
        m.Punch,
    )
}

# (state) -> {message type -> next state}, for what each role RECEIVES and SENDS.
HUB_TABLE: dict[str, dict[State, dict[type[Message], State]]] = {
    "receive": {
        H: {},
        A: {m.Register: A, m.Login: L},
        L: {},
        R: _READY_REQUESTS,
    },
    "send": {
        H: {},
        A: {m.Registered: A},
        L: {m.Welcome: R},
        R: _READY_PUSHES,
    },
}
CLIENT_TABLE: dict[str, dict[State, dict[type[Message], State]]] = {
    "receive": {
        H: {},
        A: {m.Registered: A},
        L: {m.Welcome: R},
        R: _READY_PUSHES,
    },
    "send": {
        # Register and Login may follow our Hello at once (pipelined, saving a round
        # trip); the hub reads them after our Hello, in order.
        H: {m.Register: H, m.Login: L},
        A: {m.Register: A, m.Login: L},
        L: {},
        R: _READY_REQUESTS,
    },
}


@dataclasses.dataclass(frozen=True, slots=True)
class SessionConfig:
    """Limits and timers of a hub session."""

    max_frame: int = DEFAULT_MAX_FRAME
    """Largest frame body accepted, in bytes."""

    auth_timeout: float = 10.0
    """Hub: seconds a connection may take to log in. Client: to be welcomed."""

    heartbeat: float = 5.0
    """Client: seconds between Pings. The hub tells the client its value in Welcome."""

    grace: float = 15.0
    """Seconds of silence after which the peer counts as gone (a few heartbeats)."""

    agent: str = "duplex/0.1"
    """Our software agent, sent in Hello."""


class _Session:
    """What both sides share: framing, the table walk, Hello, Ping/Pong, closing."""

    role: Role
    table: dict[str, dict[State, dict[type[Message], State]]]

    def __init__(self, config: SessionConfig, now: float) -> None:
        self.config = config
        self.state = State.HELLO
        self.hello_received = False
        self.peer_agent = ""
        self.heartbeat = config.heartbeat
        self.grace = config.grace
        self._decoder = FrameDecoder(config.max_frame)
        self._events: list[Event] = []
        self._out: list[bytes] = [encode(m.Hello(PROTO_VERSION, config.agent))]
        self._started = now
        self._last_rx = now
        self._receive_table = self.table["receive"]
        self._send_table = self.table["send"]

    # -- the driver's interface ---------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the session is over."""
        return self.state is State.CLOSED

    def events_received(self) -> list[Event]:
        """Returns and forgets the events since the last call."""
        events = self._events
        if events:
            self._events = []
        return events

    @property
    def has_output(self) -> bool:
        """True when :meth:`data_to_send` has something."""
        return bool(self._out)

    def data_to_send(self) -> list[bytes]:
        """Returns and forgets the bytes to write; ``b""`` means close after writing."""
        out = self._out
        if out:
            self._out = []
        return out

    def receive_data(self, data: bytes, now: float) -> None:
        """Feeds bytes from the peer, received at ``now``.

        A protocol violation closes the session (an ``Error`` is queued for the peer
        and a :class:`Closed` event emitted); it is never raised to the driver.
        """
        if self.state is State.CLOSED:
            return
        self._last_rx = now
        try:
            for body in self._decoder.feed(data):
                self._receive(decode(body))
                if self.closed:  # a message may end the session (e.g. a bad Hello)
                    return
        except RemoteProtocolError as exc:
            self._fail(exc)

    def receive_eof(self) -> None:
        """The peer closed its side: the session is over."""
        if self.state is State.CLOSED:
            return
        try:
            self._decoder.feed_eof()
        except RemoteProtocolError as exc:
            self._finish(exc.code, str(exc), by_peer=True)
            return
        self._finish("eof", "the peer closed the connection", by_peer=True)

    def close(self, code: str = "bye", message: str = "") -> None:
        """Closes the session, telling the peer why with an ``Error`` (if ``code``)."""
        if self.state is State.CLOSED:
            return
        if code:
            self._out.append(encode(m.Error(code, message)))
        self._finish(code, message or code, by_peer=False)

    # -- sending ------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Queues ``message`` for the peer, following the state table.

        Raises:
            ClosedResourceError: the session is closed.
            InvalidState: the table does not allow sending it in this state.
        """
        state = self.state
        if state is State.CLOSED:
            raise ClosedResourceError(f"{self.role.value} session is closed")
        kind = type(message)
        nxt = self._send_table[state].get(kind)
        if nxt is None:
            nxt = self._send_always(kind, state)
        self.state = nxt
        self._out.append(encode(message))

    def send_frame(self, kind: type[Message], frame: bytes) -> None:
        """Queues an already encoded frame of type ``kind`` (one encode, many sessions).

        Raises:
            ClosedResourceError: the session is closed.
            InvalidState: the table does not allow sending ``kind`` in this state.
        """
        state = self.state
        if state is State.CLOSED:
            raise ClosedResourceError(f"{self.role.value} session is closed")
        nxt = self._send_table[state].get(kind)
        if nxt is None:
            nxt = self._send_always(kind, state)
        self.state = nxt
        self._out.append(frame)

    def _send_always(self, kind: type[Message], state: State) -> State:
        if kind is m.Ping or kind is m.Pong:
            return state
        raise InvalidState(f"{self.role.value} may not send {kind.__name__} in state {state.value}")

    # -- receiving ----------------------------------------------------------------

    def _receive(self, message: Message) -> None:
        kind = type(message)
        if kind is m.Ping:
            assert isinstance(message, m.Ping)
            self._out.append(encode(m.Pong(message.n)))
            return
        if kind is m.Pong:
            return  # its arrival already counted as a sign of life
        if kind is m.Hello:
            assert isinstance(message, m.Hello)
            self._receive_hello(message)
            return
        if not self.hello_received:
            raise RemoteProtocolError(f"{kind.__name__} before Hello")
        nxt = self._receive_table[self.state].get(kind)
        if nxt is None:
            nxt = self._receive_other(message)
            if nxt is None:
                raise RemoteProtocolError(
                    f"{kind.__name__} is not allowed in state {self.state.value}"
                )
        entered_ready = nxt is State.READY and self.state is not State.READY
        self.state = nxt
        if entered_ready:
            self._on_ready()
        self._events.append(Received(message))

    def _on_ready(self) -> None:
        """Called when a received message moves the session to READY."""

    def _receive_hello(self, message: m.Hello) -> None:
        if self.hello_received:
            raise RemoteProtocolError("Hello is not allowed in state " + self.state.value)
        if message.proto != PROTO_VERSION:
            raise UnsupportedVersion(
                f"protocol version {message.proto} is not supported (we speak {PROTO_VERSION})"
            )
        self.hello_received = True
        self.peer_agent = message.agent
        if self.state is State.HELLO:
            self.state = State.AUTH
        self._events.append(Received(message))

    def _receive_other(self, message: Message) -> State | None:
        """Messages outside the table that this role accepts anyway (Rule 2)."""
        return None

    def _fail(self, exc: DuplexError) -> None:
        code = getattr(exc, "code", "protocol")
        if code == "protocol" and "not allowed in state" in str(exc):
            code = "state"
        self._out.append(encode(m.Error(code, str(exc))))
        self._finish(code, str(exc), by_peer=True)

    def _finish(self, code: str, reason: str, *, by_peer: bool) -> None:
        self.state = State.CLOSED
        self._out.append(b"")
        self._events.append(Closed(code, reason, by_peer))

    # -- timers -------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """Returns when :meth:`handle_timer` must next be called, or None."""
        raise NotImplementedError

    def handle_timer(self, now: float) -> None:
        """Runs whatever timer is due at ``now``."""
        raise NotImplementedError


class HubServerSession(_Session):
    """The hub's end of a client connection.

    The hub application reads :class:`Received` events and answers with :meth:`send`.
    A ``Login`` moves the session to LOGIN; the application then sends ``Welcome``
    (-> READY) or refuses with :meth:`refuse_login` (-> AUTH, the client may retry).
    """

    role = Role.HUB
    table = HUB_TABLE

    def refuse_login(self, code: str, message: str, rid: int) -> None:
        """Refuses the pending Login; the client may try again.

        Raises:
            InvalidState: no Login is pending.
        """
        if self.state is not State.LOGIN:
            raise InvalidState(f"no login to refuse in state {self.state.value}")
        self._out.append(encode(m.Error(code, message, rid=rid)))
        self.state = State.AUTH

    def _send_always(self, kind: type[Message], state: State) -> State:
        if kind is m.Error:
            return state  # a refusal is always allowed
        return super()._send_always(kind, state)

    def get_timer(self) -> float | None:
        """The authentication deadline before READY; the grace deadline after."""
        if self.state is State.CLOSED:
            return None
        if self.state is State.READY:
            return self._last_rx + self.grace
        return self._started + self.config.auth_timeout

    def handle_timer(self, now: float) -> None:
        """Closes a connection that did not log in in time or went silent."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return
        if self.state is State.READY:
            self._events.append(TimedOut("heartbeat"))
            self.close("timeout", f"nothing received for {self.grace:g} s")
        else:
            self._events.append(TimedOut("auth"))
            self.close("auth-timeout", f"no login within {self.config.auth_timeout:g} s")


class HubClientSession(_Session):
    """The client's end of its connection to the hub.

    The client sends ``Register``/``Login`` (pipelined after Hello if it likes), waits
    for ``Welcome``, then sends requests and reads pushes. Heartbeats are automatic
    once READY, at the interval the hub's Welcome sets.
    """

    role = Role.CLIENT
    table = CLIENT_TABLE

    def __init__(self, config: SessionConfig, now: float) -> None:
        super().__init__(config, now)
        self._next_ping = float("inf")
        self._ping_n = 0

    def _receive_other(self, message: Message) -> State | None:
        if isinstance(message, m.Error):
            # A refused Login (or any refusal while logging in) returns us to AUTH.
            return State.AUTH if self.state is State.LOGIN else self.state
        return None

    def _receive(self, message: Message) -> None:
        if type(message) is m.Welcome and self.state is State.LOGIN:
            assert isinstance(message, m.Welcome)
            self.heartbeat = message.heartbeat
            self.grace = message.grace
        super()._receive(message)

    def _on_ready(self) -> None:
        self._next_ping = self._last_rx + self.heartbeat

    def get_timer(self) -> float | None:
        """The next Ping, or the deadline for the hub's next sign of life."""
        if self.state is State.CLOSED:
            return None
        if self.state is State.READY:
            return min(self._next_ping, self._last_rx + self.grace)
        return self._started + self.config.auth_timeout

    def handle_timer(self, now: float) -> None:
        """Sends the due Ping, or gives the hub up when it has gone silent."""
        if self.state is State.CLOSED:
            return
        if self.state is not State.READY:
            if now >= self._started + self.config.auth_timeout:
                self._events.append(TimedOut("handshake"))
                self._finish("timeout", "no answer to the login in time", by_peer=False)
            return
        if now >= self._last_rx + self.grace:
            self._events.append(TimedOut("heartbeat"))
            self._finish("timeout", f"nothing from the peer for {self.grace:g} s", by_peer=False)
            return
        if now >= self._next_ping:
            self._ping_n += 1
            self._out.append(encode(m.Ping(self._ping_n)))
            self._next_ping = now + self.heartbeat
