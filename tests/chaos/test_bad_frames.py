"""Hostile bytes against a hub process while a checked stream flows through it.

Each attack gets a connection of its own: lengths that are too big or "negative", a
frame cut short (then EOF, or then silence), garbage, bodies that are not MessagePack
or not a message, a forged ``type`` (unknown, or a hub-only message sent by a client),
mistyped and out-of-bounds fields, an unsupported version, and valid frames in a state
where they are not allowed (before Hello, before login, twice, after login). Each must
be refused with an ``Error{code}`` (or, for a stream cut short, simply closed) and
close only its own connection: meanwhile alice streams to bob through the same hub
and the checker finds nothing lost, duplicated or reordered; the hub logs no
traceback, counts every refusal, and its descriptors return to their baseline.

``tests/hub/test_hub.py::test_bad_frames_close_only_that_connection`` is the in-process
ancestor of this test.
"""

from __future__ import annotations

import asyncio
import random
import urllib.request
from pathlib import Path

import msgspec
import psutil

from duplex.client import register
from duplex.testing.agent import AgentProcess
from duplex.testing.chaos import Checker, chaos_seed
from duplex.testing.hubs import HubProcess
from duplex.wire import messages as m
from duplex.wire.frames import DEFAULT_MAX_FRAME, encode_frame

HELLO = m.encode(m.Hello(1, "attacker"))
ID = b"\x01" * 16


def raw(obj: object) -> bytes:
    """A well-framed MessagePack body of anything (the codec's schemas not applied)."""
    return encode_frame(msgspec.msgpack.encode(obj))


def attacks(rng: random.Random) -> list[tuple[str, bytes, str | None, bool, bool]]:
    """(name, bytes, expected Error code or None for a plain close, after login, then EOF)."""
    register_frame = m.encode(m.Register(rid=1, user="nobody", password="correct horse"))
    login = m.encode(m.Login(rid=9, user="mallory", device="again", password="correct horse"))
    welcome = m.Welcome(
        rid=1, user="mallory", session="s", device="d", last_seq=0, heartbeat=1.0, grace=3.0
    )
    return [
        (
            "oversized length (2 GiB announced)",
            HELLO + (2**31).to_bytes(4, "big"),
            "too-big",
            False,
            False,
        ),
        ("negative length (0xffffffff)", HELLO + b"\xff\xff\xff\xff", "too-big", False, False),
        (
            "one byte over the frame limit",
            HELLO + (DEFAULT_MAX_FRAME + 1).to_bytes(4, "big") + b"x" * 100,
            "too-big",
            False,
            False,
        ),
        ("truncated frame, then EOF", HELLO + register_frame[:-5], None, False, True),
        (
            "truncated frame, then silence",
            HELLO + (100).to_bytes(4, "big") + b"x" * 10,
            "auth-timeout",
            False,
            False,
        ),
        ("garbage", rng.randbytes(4096), None, False, False),
        ("not MessagePack", HELLO + encode_frame(b"\xc1" * 10), "malformed", False, False),
        ("MessagePack, not a map", HELLO + raw([1, 2, 3]), "malformed", False, False),
        ("a map without a type", HELLO + raw({"rid": 1}), "malformed", False, False),
        ("forged type: unknown", HELLO + raw({"type": "root-shell"}), "malformed", False, False),
        ("forged type: a hub message (welcome)", HELLO + m.encode(welcome), "state", False, False),
        (
            "mistyped fields",
            HELLO + raw({"type": "register", "rid": "one", "user": 1, "password": None}),
            "malformed",
            False,
            False,
        ),
        (
            "out-of-bounds field (65-character name)",
            HELLO + raw({"type": "register", "rid": 1, "user": "x" * 65, "password": "p" * 12}),
            "malformed",
            False,
            False,
        ),
        (
            "invalid UTF-8 in a string",
            HELLO
            + encode_frame(
                b"\x84\xa4type\xa8register\xa3rid\x01\xa4user\xa2\xff\xfe\xa8password\xa1x"
            ),
            "malformed",
            False,
            False,
        ),
        (
            "nesting deeper than the recursion limit",
            HELLO + encode_frame(b"\x82\xa4type\xa5hello\xa5extra" + b"\x91" * 100_000 + b"\xc0"),
            "malformed",
            False,
            False,
        ),
        ("unsupported protocol version", m.encode(m.Hello(99)), "version", False, False),
        ("a request before Hello", register_frame, "protocol", False, False),
        (
            "Send before login",
            HELLO + m.encode(m.Send(id=ID, to="bob", body="x")),
            "state",
            False,
            False,
        ),
        ("Ack before login", HELLO + m.encode(m.Ack(upto=5)), "state", False, False),
        ("Hello twice", HELLO + HELLO, "state", False, False),
        (
            "a peer-link message to the hub",
            HELLO + m.encode(m.PeerHello(user="x", ticket=b"t")),
            "state",
            False,
            False,
        ),
        ("Login twice, pipelined", HELLO + login + login, "state", False, False),
        ("Register after login", register_frame, "state", True, False),
        ("Login after login", login, "state", True, False),
        ("a hub message from a logged-in client", m.encode(welcome), "state", True, False),
        (
            "a time past 2**63 after login",
            raw({"type": "history", "rid": 1, "peer": "bob", "before": 2**63}),
            "malformed",
            True,
            False,
        ),
    ]


async def attack(
    address: tuple[str, int], payload: bytes, *, login: bool, eof: bool, device: str
) -> tuple[list[m.Message], bool]:
    """Sends ``payload`` on a connection of its own; returns what came back until the hub
    closed it (and whether it did within 15 s)."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        if login:
            writer.write(
                HELLO
                + m.encode(m.Login(rid=1, user="mallory", device=device, password="correct horse"))
            )
            while True:
                size = int.from_bytes(await reader.readexactly(4), "big")
                if isinstance(m.decode(await reader.readexactly(size)), m.Welcome):
                    break
        writer.write(payload)
        if eof:
            writer.write_eof()
        try:
            data = await asyncio.wait_for(reader.read(), 15)
            closed = True
        except TimeoutError:
            data, closed = b"", False
        except ConnectionResetError:
            data, closed = b"", True
    finally:
        writer.close()
    got: list[m.Message] = []
    while len(data) >= 4:
        size = int.from_bytes(data[:4], "big")
        body, data = data[4 : 4 + size], data[4 + size :]
        got.append(m.decode(body))
    return got, closed


def metric(admin: str, name: str) -> dict[str, float]:
    """``label value -> value`` of one counter on the hub's /metrics."""
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            out[labels.split('"')[1]] = float(value)
    return out


def test_hostile_frames_close_only_their_own_connection(tmp_path: Path) -> None:
    seed = chaos_seed()
    rng = random.Random(seed)
    cases = attacks(rng)
    checker = Checker("hostile frames during a stream", seed)

    async def scenario() -> None:
        hub = HubProcess(
            tmp_path / "hub",
            args=["--synchronous", "NORMAL", "--auth-timeout", "2", "--admin", "127.0.0.1:0"],
        )
        address = f"127.0.0.1:{hub.port}"
        agents: list[AgentProcess] = []
        try:
            await register(hub.address, "mallory", "correct horse")
            agents += [AgentProcess(address, u, args=["--no-p2p"]) for u in ("bob", "alice")]
            for agent in agents:
                await asyncio.to_thread(agent.wait, lambda a: bool(a.of("online")), 30)
            proc = psutil.Process(hub.proc.pid)
            baseline = proc.num_fds()
            agents[1].command(op="send", to="bob", text="alice>bob", count=300, interval=0.02)
            results = await asyncio.gather(
                *(
                    attack(hub.address, payload, login=login, eof=eof, device=f"d{i}")
                    for i, (_, payload, _, login, eof) in enumerate(cases)
                )
            )
            for (name, _, code, _, _), (got, closed) in zip(cases, results, strict=True):
                checker.fault("hostile connection")
                assert closed, f"{name}: the hub kept the connection open"
                codes = [g.code for g in got if isinstance(g, m.Error)]
                if code is not None:
                    assert code in codes, f"{name}: expected Error {code!r}, got {got}"
                assert not any(isinstance(g, m.Welcome | m.Registered) for g in got[1:]), name
            settled = await asyncio.to_thread(checker.wait_settled, agents, 60, expect_messages=300)
            checker.check()
            assert settled
            for _ in range(100):
                if proc.num_fds() == baseline:
                    break
                await asyncio.sleep(0.05)
            assert proc.num_fds() == baseline, "descriptors leaked"
            refused = metric(hub.info["admin"], "duplex_refusals_total")
            for code in ("too-big", "malformed", "state", "version"):
                assert refused.get(code, 0) >= 1, refused
            assert hub.proc.poll() is None
            assert "Traceback" not in hub.stderr, hub.stderr[-3000:]
        finally:
            for agent in agents:
                await asyncio.to_thread(agent.stop)
            hub.kill()

    asyncio.run(scenario())
