"""The messenger's v1 messages: msgspec structs, one MessagePack map per frame.

Every message is a map whose ``type`` field names it (a msgspec tagged union), so an
unknown or forged ``type`` fails to decode, and every field is typed and bounded
(:data:`NAME`, :data:`TEXT`, ...) so a decoded message is already well-formed: the
hub never sees a 10 MB user name. What a message *means* in a given state is the
session's business (:mod:`duplex.protocol.hub`), not the codec's.

Direction is part of the protocol: :data:`CLIENT_MESSAGES` travel client -> hub,
:data:`HUB_MESSAGES` hub -> client, :data:`PEER_MESSAGES` between two clients on a
direct link; :class:`Hello`, :class:`Error`, :class:`Ping` and :class:`Pong` go both
ways on every kind of connection.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from duplex.errors import MalformedFrame
from duplex.wire.frames import encode_frame

__all__ = [
    "CLIENT_MESSAGES",
    "HUB_MESSAGES",
    "MAX_NAME",
    "MAX_TEXT",
    "PEER_MESSAGES",
    "PROTO_VERSION",
    "Ack",
    "Contact",
    "ContactAdd",
    "ContactList",
    "ContactRemove",
    "Contacts",
    "Deliver",
    "DirectReport",
    "Error",
    "Hello",
    "History",
    "HistoryRequest",
    "Introduce",
    "Introduction",
    "Login",
    "Logout",
    "Message",
    "Ok",
    "PeerAccept",
    "PeerAck",
    "PeerHello",
    "PeerOffline",
    "PeerSend",
    "Ping",
    "Pong",
    "Presence",
    "Punch",
    "Register",
    "Registered",
    "Send",
    "Stored",
    "Welcome",
    "decode",
    "encode",
    "encode_body",
]

PROTO_VERSION = 1
"""The protocol version this code speaks (``Hello.proto``)."""

MAX_NAME = 64
"""The longest user name, device id or session id on the wire, in characters."""
NAME = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
"""A user name, device id or session id on the wire (the hub validates further)."""
SECRET = Annotated[str, msgspec.Meta(max_length=1024)]
"""A password or token."""
MAX_TEXT = 65536
"""The longest message body, in characters (a frame holds it in any UTF-8)."""
TEXT = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
"""A message body: at most :data:`MAX_TEXT` characters."""
SHORT = Annotated[str, msgspec.Meta(max_length=256)]
"""Agents, error codes, endpoints, fingerprints."""
ID = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
"""A message id: 16 bytes (a UUIDv7 chosen by the sender)."""
SEQ = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
"""A mailbox sequence number."""
RID = Annotated[int, msgspec.Meta(ge=0, le=2**31)]
"""A request id, echoed in the reply."""
TS = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
"""Milliseconds since the epoch. Bounded like :data:`SEQ`: a value past 2**63 cannot
be stored (SQLite and PostgreSQL integers are signed 64-bit), so it must be refused
here, as malformed, rather than fail deep inside a store."""
ENDPOINTS = Annotated[list[SHORT], msgspec.Meta(max_length=8)]
"""P2P endpoints, ``host:port`` or ``[v6]:port``."""
PATH = Literal["direct", "relayed", "stored"]
"""How a message travelled."""


class Message(msgspec.Struct, tag_field="type", frozen=True, omit_defaults=True):
    """Base of every wire message."""


# ---------------------------------------------------------------- both ways


class Hello(Message, tag="hello", frozen=True):
    """The first frame each way: protocol version and software agent."""

    proto: int
    agent: SHORT = ""


class Error(Message, tag="error", frozen=True):
    """A refusal or failure. ``rid`` or ``id`` tie it to a request or a message."""

    code: SHORT
    message: TEXT = ""
    rid: RID = 0
    id: ID | None = None


class Ping(Message, tag="ping", frozen=True):
    """Heartbeat; answered with :class:`Pong` carrying the same ``n``."""

    n: int = 0


class Pong(Message, tag="pong", frozen=True):
    """Heartbeat answer."""

    n: int = 0


# ---------------------------------------------------------------- client -> hub


class Register(Message, tag="register", frozen=True):
    """Create an account."""

    rid: RID
    user: NAME
    password: SECRET


class Login(Message, tag="login", frozen=True):
    """Start a session for ``device``, with a password or a session token.

    ``last_seq`` is the last mailbox sequence this device holds; the hub sends the
    rest. ``store`` names the store that sequence counts in, as the ``Welcome`` of an
    earlier login said (empty: not known): when it is not the hub's, the sequence
    means nothing there and the hub sends the mailbox from its start.
    ``endpoints`` and ``fingerprint`` describe the device's P2P listener. ``replace``
    ends the device's other connections (probably half-open: it lost its network and
    came back); a one-shot command says False, so that the client the device has
    running keeps its session.
    """

    rid: RID
    user: NAME
    device: NAME
    password: SECRET = ""
    token: SECRET = ""
    last_seq: SEQ = 0
    endpoints: ENDPOINTS = msgspec.field(default_factory=list)
    fingerprint: SHORT = ""
    want_token: bool = False
    store: SHORT = ""
    replace: bool = True


class Logout(Message, tag="logout", frozen=True):
    """End the session (and forget its token)."""

    rid: RID


class Send(Message, tag="send", frozen=True):
    """Send ``body`` to user ``to``; ``id`` makes resends idempotent."""

    id: ID
    to: NAME
    body: TEXT


class Ack(Message, tag="ack", frozen=True):
    """This device holds every mailbox entry up to ``upto`` (end-to-end ack)."""

    upto: SEQ


class ContactAdd(Message, tag="contact-add", frozen=True):
    """Add a contact."""

    rid: RID
    user: NAME


class ContactRemove(Message, tag="contact-rm", frozen=True):
    """Remove a contact."""

    rid: RID
    user: NAME


class ContactList(Message, tag="contact-ls", frozen=True):
    """List contacts with their presence."""

    rid: RID


class Introduce(Message, tag="introduce", frozen=True):
    """Ask for a direct path to ``peer``."""

    rid: RID
    peer: NAME


class HistoryRequest(Message, tag="history", frozen=True):
    """Messages exchanged with ``peer`` before ``before`` (ms; 0 = now), newest last."""

    rid: RID
    peer: NAME
    before: TS = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 50


# ---------------------------------------------------------------- hub -> client


class Registered(Message, tag="registered", frozen=True):
    """The account exists now."""

    rid: RID
    user: NAME


class Welcome(Message, tag="welcome", frozen=True):
    """Login accepted: the session, its timers, and the device's P2P ticket key.

    ``store`` names the hub's store, in which the mailbox's sequence numbers count: a
    new store (another hub, or this hub's data dir replaced) starts them again at 1.
    """

    rid: RID
    user: NAME
    session: NAME
    device: NAME
    last_seq: SEQ
    heartbeat: float
    grace: float
    ticket_key: bytes = b""
    token: SECRET = ""
    observed: SHORT = ""
    store: SHORT = ""


class Ok(Message, tag="ok", frozen=True):
    """A request succeeded."""

    rid: RID


class Stored(Message, tag="stored", frozen=True):
    """The hub holds message ``id`` durably; ``path`` says how it goes on."""

    id: ID
    to: NAME
    seq: SEQ
    path: PATH
    delivered: bool = False


class Deliver(Message, tag="deliver", frozen=True):
    """One mailbox entry: a message (``kind="msg"``) or a receipt (``"receipt"``).

    ``path`` is ``"relayed"`` when the hub pushed it as it arrived, ``"stored"`` when it
    waited in the store for this device (a replay at login).
    """

    seq: SEQ
    kind: Literal["msg", "receipt"]
    peer: NAME
    id: ID
    body: TEXT = ""
    ts: TS = 0
    path: Literal["", "relayed", "stored"] = ""


class Presence(Message, tag="presence", frozen=True):
    """A contact came online or went offline."""

    user: NAME
    online: bool


class Contact(msgspec.Struct, frozen=True):
    """One contact and whether it is online."""

    user: NAME
    online: bool


class Contacts(Message, tag="contacts", frozen=True):
    """The contact list."""

    rid: RID
    contacts: list[Contact]


class Introduction(Message, tag="introduction", frozen=True):
    """How to reach ``peer`` directly: endpoints, pinned fingerprint, and a ticket."""

    rid: RID
    peer: NAME
    device: NAME
    endpoints: ENDPOINTS
    fingerprint: SHORT
    ticket: bytes
    punch: bool = False


class PeerOffline(Message, tag="peer-offline", frozen=True):
    """``peer`` has no session, or several (the hub then relays)."""

    rid: RID
    peer: NAME
    sessions: int = 0


class Punch(Message, tag="punch", frozen=True):
    """Connect to ``peer`` at ``endpoint`` now, from your hub connection's local port.

    Sent to the target of an introduction when both sides are behind NAT: both dial
    each other at the same moment (TCP simultaneous open), so each NAT sees an
    outgoing connection and lets the other's SYN in. The target is the TLS server.
    """

    peer: NAME
    endpoint: SHORT


class DirectReport(Message, tag="direct-report", frozen=True):
    """How a direct attempt to ``peer`` ended (for the hub's metrics)."""

    peer: NAME
    outcome: Literal["ok", "refused", "timeout", "pin", "ticket", "lost", "error"]


# ---------------------------------------------------------------- peer <-> peer


class PeerHello(Message, tag="peer-hello", frozen=True):
    """The dialer of a direct link presents the hub's ticket (after its Hello)."""

    user: NAME
    ticket: Annotated[bytes, msgspec.Meta(max_length=512)]


class PeerAccept(Message, tag="peer-accept", frozen=True):
    """The listener accepted the ticket: the link is up."""

    user: NAME


class PeerSend(Message, tag="peer-send", frozen=True):
    """A message on a direct link; ``id`` is the same id it would have through the hub."""

    id: ID
    body: TEXT
    ts: TS


class PeerAck(Message, tag="peer-ack", frozen=True):
    """The receiver holds message ``id`` in its history."""

    id: ID


class History(Message, tag="history-page", frozen=True):
    """A page of history."""

    rid: RID
    entries: list[Deliver]


CLIENT_MESSAGES = (
    Register,
    Login,
    Logout,
    Send,
    Ack,
    ContactAdd,
    ContactRemove,
    ContactList,
    Introduce,
    HistoryRequest,
    DirectReport,
)
HUB_MESSAGES = (
    Registered,
    Welcome,
    Ok,
    Stored,
    Deliver,
    Presence,
    Contacts,
    Introduction,
    PeerOffline,
    History,
    Punch,
)
PEER_MESSAGES = (PeerHello, PeerAccept, PeerSend, PeerAck)
BOTH = (Hello, Error, Ping, Pong)

AnyMessage = (
    Hello
    | Error
    | Ping
    | Pong
    | Register
    | Login
    | Logout
    | Send
    | Ack
    | ContactAdd
    | ContactRemove
    | ContactList
    | Introduce
    | HistoryRequest
    | DirectReport
    | Registered
    | Welcome
    | Ok
    | Stored
    | Deliver
    | Presence
    | Contacts
    | Introduction
    | PeerOffline
    | History
    | Punch
    | PeerHello
    | PeerAccept
    | PeerSend
    | PeerAck
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)


def encode_body(message: Message) -> bytes:
    """Returns the MessagePack body of ``message`` (no length prefix)."""
    return _encoder.encode(message)


def encode(message: Message) -> bytes:
    """Returns ``message`` as a complete frame (length prefix and body)."""
    return encode_frame(_encoder.encode(message))


def decode(body: bytes) -> Message:
    """Decodes one frame body.

    Raises:
        MalformedFrame: not MessagePack, not a map, an unknown ``type``, a missing or
            mistyped field, a value out of its bounds, a string that is not UTF-8, or
            nesting deeper than the recursion limit.
    """
    try:
        message: Message = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedFrame(f"bad message: {exc}") from None
    except (UnicodeDecodeError, RecursionError) as exc:
        # msgspec lets these two through as they are: a string that is not UTF-8, and
        # nesting deeper than the interpreter's recursion limit (even in a field the
        # schema would skip; a 1 MiB frame holds a million levels).
        raise MalformedFrame(f"bad message: {type(exc).__name__}: {exc}") from None
    return message
