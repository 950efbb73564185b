"""Hypothesis strategies for every wire message (for property tests and fuzzing)."""

from __future__ import annotations

from hypothesis import strategies as st

from duplex.wire import messages as m

__all__ = ["any_message", "client_message", "hub_message", "peer_message"]

names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=64)
texts = st.text(st.characters(codec="utf-8"), max_size=300)
shorts = st.text(max_size=40)
ids = st.binary(min_size=16, max_size=16)
seqs = st.integers(min_value=0, max_value=2**62)
rids = st.integers(min_value=0, max_value=2**31)

_client = [
    st.builds(m.Register, rid=rids, user=names, password=shorts),
    st.builds(
        m.Login,
        rid=rids,
        user=names,
        device=names,
        password=shorts,
        token=shorts,
        last_seq=seqs,
        endpoints=st.lists(shorts, max_size=8),
        fingerprint=shorts,
        want_token=st.booleans(),
    ),
    st.builds(m.Logout, rid=rids),
    st.builds(m.Send, id=ids, to=names, body=texts),
    st.builds(m.Ack, upto=seqs),
    st.builds(m.ContactAdd, rid=rids, user=names),
    st.builds(m.ContactRemove, rid=rids, user=names),
    st.builds(m.ContactList, rid=rids),
    st.builds(m.Introduce, rid=rids, peer=names),
    st.builds(
        m.HistoryRequest,
        rid=rids,
        peer=names,
        before=st.integers(0, 2**50),
        limit=st.integers(1, 500),
    ),
    st.builds(
        m.DirectReport,
        peer=names,
        outcome=st.sampled_from(["ok", "refused", "timeout", "pin", "ticket", "lost", "error"]),
    ),
]
_peer = [
    st.builds(m.PeerHello, user=names, ticket=st.binary(max_size=200)),
    st.builds(m.PeerAccept, user=names),
    st.builds(m.PeerSend, id=ids, body=texts, ts=st.integers(0, 2**50)),
    st.builds(m.PeerAck, id=ids),
]
_deliver = st.builds(
    m.Deliver,
    seq=seqs,
    kind=st.sampled_from(["msg", "receipt"]),
    peer=names,
    id=ids,
    body=texts,
    ts=st.integers(0, 2**50),
    path=st.sampled_from(["", "relayed", "stored"]),
)
_hub = [
    st.builds(m.Registered, rid=rids, user=names),
    st.builds(
        m.Welcome,
        rid=rids,
        user=names,
        session=names,
        device=names,
        last_seq=seqs,
        heartbeat=st.floats(0.01, 100),
        grace=st.floats(0.01, 1000),
        ticket_key=st.binary(max_size=32),
        token=shorts,
        observed=shorts,
    ),
    st.builds(m.Ok, rid=rids),
    st.builds(
        m.Stored,
        id=ids,
        to=names,
        seq=seqs,
        path=st.sampled_from(["direct", "relayed", "stored"]),
        delivered=st.booleans(),
    ),
    _deliver,
    st.builds(m.Presence, user=names, online=st.booleans()),
    st.builds(
        m.Contacts,
        rid=rids,
        contacts=st.lists(st.builds(m.Contact, user=names, online=st.booleans()), max_size=5),
    ),
    st.builds(
        m.Introduction,
        rid=rids,
        peer=names,
        device=names,
        endpoints=st.lists(shorts, max_size=8),
        fingerprint=shorts,
        ticket=st.binary(max_size=200),
        punch=st.booleans(),
    ),
    st.builds(m.PeerOffline, rid=rids, peer=names, sessions=st.integers(0, 10)),
    st.builds(m.History, rid=rids, entries=st.lists(_deliver, max_size=3)),
]
_hub.append(st.builds(m.Punch, peer=names, endpoint=shorts))
_both = [
    st.builds(m.Hello, proto=st.integers(0, 10), agent=shorts),
    st.builds(m.Error, code=shorts, message=texts, rid=rids, id=st.none() | ids),
    st.builds(m.Ping, n=st.integers(0, 2**40)),
    st.builds(m.Pong, n=st.integers(0, 2**40)),
]

client_message = st.one_of(_client)
"""Any client -> hub message."""
hub_message = st.one_of(_hub)
"""Any hub -> client message."""
peer_message = st.one_of(_peer)
"""Any message of a direct peer link."""
any_message = st.one_of(_client + _hub + _peer + _both)
"""Any message at all."""
