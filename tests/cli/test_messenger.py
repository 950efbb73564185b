"""The messenger's command line, through real subprocesses against a real hub process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from duplex.testing.clients import new_client
from duplex.testing.hubs import HubProcess


def _env(tmp: Path, hub: HubProcess) -> dict[str, str]:
    """The environment of a CLI run: its own config and data dirs, and this hub."""
    env = dict(os.environ)
    env.update(
        DUPLEX_CONFIG_DIR=str(tmp / "conf"),
        DUPLEX_DATA_DIR=str(tmp / "data"),
        DUPLEX_CLIENT_HUB=f"127.0.0.1:{hub.port}",
    )
    return env


def duplex(
    tmp: Path, hub: HubProcess, *args: str, password: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = _env(tmp, hub)
    env.pop("DUPLEX_PASSWORD", None)
    if password is not None:
        env["DUPLEX_PASSWORD"] = password
    return run_cli(args, env, stdin)


def run_cli(
    args: Sequence[str], env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``duplex ARGS`` in a subprocess, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "duplex", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        input=stdin,
    )


def follow_inbox(tmp: Path, hub: HubProcess, user: str) -> subprocess.Popen[str]:
    """``duplex inbox --follow --json`` as ``user``, running."""
    return subprocess.Popen(
        [sys.executable, "-m", "duplex", "inbox", "--follow", "--json", "--user", user],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp, hub),
    )


def register(tmp: Path, hub: HubProcess, *users: str) -> None:
    """Registers ``users`` (password ``pw-`` + the name twice) through the CLI."""
    for user in users:
        done = duplex(tmp, hub, "register", "--user", user, password="pw-" + user * 2)
        assert done.returncode == 0, done.stderr


@pytest.fixture
def hub(tmp_path: Path) -> HubProcess:
    with HubProcess(tmp_path / "hub") as process:
        yield process  # type: ignore[misc]


def test_register_send_offline_then_inbox(tmp_path: Path, hub: HubProcess) -> None:
    assert duplex(tmp_path, hub, "register", "--user", "alice", password="alice-pw").returncode == 0
    assert duplex(tmp_path, hub, "register", "--user", "bob", password="bob-pw-1").returncode == 0
    # bob is offline: the hub stores it, and `send` exits 0 once it is stored.
    sent = duplex(
        tmp_path, hub, "send", "bob", "hello while you were out", "--user", "alice", "--json"
    )
    assert sent.returncode == 0, sent.stderr
    report = json.loads(sent.stdout)
    assert (report["state"], report["path"]) == ("stored", "stored")
    assert len(report["id"]) == 32
    # No password needed any more: the session token was saved, mode 0600.
    token = next((tmp_path / "conf" / "tokens").iterdir())
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    inbox = duplex(tmp_path, hub, "inbox", "--user", "bob")
    assert inbox.returncode == 0, inbox.stderr
    assert "alice: hello while you were out" in inbox.stdout
    # Printed once: it was acked.
    again = duplex(tmp_path, hub, "inbox", "--user", "bob")
    assert again.returncode == 0
    assert again.stdout == ""
    assert again.stderr == "no new messages\n"  # (on stderr: a pipe sees nothing)
    # And alice's message is now delivered.
    follow = duplex(
        tmp_path,
        hub,
        "send",
        "bob",
        "are you there?",
        "--user",
        "alice",
        "--delivered",
        "--wait",
        "3",
        "--json",
    )
    # bob is offline: stored, not delivered within the wait, which --delivered says.
    assert follow.returncode == 4, follow.stderr
    assert json.loads(follow.stdout)["state"] == "stored"
    assert follow.stderr == "no device of bob took it within 3 s; the hub keeps it until one does\n"
    # For a person: the state, and what the path means.
    told = duplex(tmp_path, hub, "send", "carol", "hi", "--user", "alice")
    assert "there is no user 'carol'" in told.stderr
    plain = duplex(tmp_path, hub, "send", "bob", "are you back?", "--user", "alice")
    assert plain.returncode == 0, plain.stderr
    hexid, to, line = plain.stdout.split("  ", 2)
    assert len(hexid) == 32 and to == "to bob"
    assert line == "stored (kept: the recipient is offline, the hub holds it until they are back)\n"


def test_contacts_and_who(tmp_path: Path, hub: HubProcess) -> None:
    for user in ("alice", "bob"):
        assert (
            duplex(tmp_path, hub, "register", "--user", user, password="pw-123456").returncode == 0
        )
    assert (
        duplex(tmp_path, hub, "contacts", "add", "bob", "--user", "alice").stdout == "added bob\n"
    )
    listing = duplex(tmp_path, hub, "contacts", "ls", "--user", "alice", "--json")
    assert json.loads(listing.stdout) == [{"user": "bob", "online": False}]
    who = duplex(tmp_path, hub, "who", "--user", "alice").stdout
    assert who == "your contact is offline (duplex contacts ls)\n"
    missing = duplex(tmp_path, hub, "contacts", "add", "ghost", "--user", "alice")
    assert missing.returncode == 1
    assert "there is no user 'ghost'" in missing.stderr


def test_bad_input_is_one_line(tmp_path: Path, hub: HubProcess) -> None:
    assert duplex(tmp_path, hub, "register", "--user", "alice", password="alice-pw").returncode == 0
    wrong = duplex(tmp_path, hub, "login", "--user", "alice", password="not-it")
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines() == [
        "Error: login refused: wrong user name or password"
    ]
    nouser = duplex(tmp_path, hub, "send", "bob", "x")
    assert nouser.returncode == 2
    assert "--user" in nouser.stderr
    unknown = duplex(tmp_path, hub, "send", "nobody", "x", "--user", "alice")
    assert unknown.returncode == 1
    assert "no user 'nobody'" in unknown.stderr


def test_send_while_hub_is_down_stays_in_outbox(tmp_path: Path) -> None:
    with HubProcess(tmp_path / "hub") as hub:
        port = hub.port
        assert (
            duplex(tmp_path, hub, "register", "--user", "alice", password="alice-pw").returncode
            == 0
        )
        assert (
            duplex(tmp_path, hub, "register", "--user", "bob", password="bob-pw-1").returncode == 0
        )
        hub.kill()
        queued = duplex(
            tmp_path, hub, "send", "bob", "typed offline", "--user", "alice", "--wait", "2"
        )
        assert queued.returncode == 3, queued.stderr
        # After a second without the hub it says why, and how long it keeps trying.
        assert queued.stderr.startswith(
            f"the hub at 127.0.0.1:{port} does not answer (connection refused: no hub "
            "listens there); trying for 1 s more (--wait)\n"
        ), queued.stderr
        assert f"stays in the outbox and goes out at the next login to 127.0.0.1:{port}" in (
            queued.stderr
        )
        unreachable = duplex(tmp_path, hub, "inbox", "--user", "alice", "--wait", "1")
        assert unreachable.returncode == 1
        assert unreachable.stderr == (
            f"Error: cannot reach the hub at 127.0.0.1:{port}: connection refused: no hub "
            "listens there\n"
        )
    with HubProcess(tmp_path / "hub", port=port) as hub:
        # Any later command of alice's logs in and flushes the outbox.
        assert duplex(tmp_path, hub, "inbox", "--user", "alice").returncode == 0
        inbox = duplex(tmp_path, hub, "inbox", "--user", "bob")
        assert "alice: typed offline" in inbox.stdout


def test_send_goes_direct_and_peers_lists_the_link(tmp_path: Path, hub: HubProcess) -> None:
    from duplex.testing.agent import AgentProcess

    assert duplex(tmp_path, hub, "register", "--user", "bob", password="bob-pw-1").returncode == 0
    bob = follow_inbox(tmp_path, hub, "bob")
    try:
        peers_file = tmp_path / "data" / "client" / "bob" / "peers.json"
        for _ in range(400):
            if peers_file.exists() and json.loads(peers_file.read_text())["pid"] == bob.pid:
                break
            time.sleep(0.05)
        idle = json.loads(duplex(tmp_path, hub, "peers", "--user", "bob", "--json").stdout)
        assert idle["pid"] == bob.pid
        assert idle["links"] == []
        with AgentProcess(f"127.0.0.1:{hub.port}", "alice") as alice:
            alice.wait(lambda a: bool(a.of("online")), 30)
            alice.command(op="send", to="bob", text="straight to you")
            alice.wait(lambda a: any(e["state"] == "delivered" for e in a.of("state")), 20)
            [state] = [e for e in alice.of("state") if e["state"] == "delivered"]
            assert state["path"] == "direct"
            for _ in range(100):  # the running client publishes its counters every 0.5 s
                shown = json.loads(duplex(tmp_path, hub, "peers", "--user", "bob", "--json").stdout)
                if shown["links"] and shown["links"][0]["received"]:
                    break
                time.sleep(0.1)
            [link] = shown["links"]
            assert link["peer"] == "alice"
            assert link["direction"] == "accepted"
            assert link["received"] == 1
            client_end, server_end = link["pair"].split(" <-> ")
            assert server_end in shown["endpoints"]  # alice dialed one of bob's endpoints
            assert client_end.rpartition(":")[2].isdigit()
            text = duplex(tmp_path, hub, "peers", "--user", "bob").stdout
            assert "alice" in text and "accepted" in text
    finally:
        bob.terminate()
        out, _ = bob.communicate(timeout=30)
    [line] = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert (line["from"], line["text"], line["path"]) == ("alice", "straight to you", "direct")


def test_inbox_follow_prints_what_it_acked_when_stopped(tmp_path: Path, hub: HubProcess) -> None:
    """``inbox --follow`` acks a message once it is in the local history, before it
    prints it; stopped by SIGTERM (or Ctrl-C) right after its senders saw
    ``delivered``, it still prints every message, and exits 0. (The race is narrow; a
    frozen and resumed client in tests/hub/test_crash.py hit it in CI.)"""
    for user in ("alice", "bob"):
        assert (
            duplex(tmp_path, hub, "register", "--user", user, password="pw-" + user).returncode == 0
        )
    for sig in (signal.SIGTERM, signal.SIGINT):
        bob = follow_inbox(tmp_path, hub, "bob")
        texts = [f"{sig.name} {i}" for i in range(50)]

        async def send_all(texts: list[str]) -> None:
            alice = await new_client(
                hub.address, "alice", register_first=False, password="pw-alice"
            )
            try:
                ids = [await alice.send("bob", text) for text in texts]
                for msg_id in ids:
                    assert await alice.wait_state(msg_id, "delivered", 30) == "delivered"
            finally:
                await alice.close()

        try:
            asyncio.run(send_all(texts))
            bob.send_signal(sig)
            out, err = bob.communicate(timeout=30)
        finally:
            if bob.poll() is None:
                bob.kill()
                bob.communicate()
        printed = [json.loads(line)["text"] for line in out.splitlines() if line.startswith("{")]
        assert printed == texts, err
        assert bob.returncode == 0, err


def test_a_second_hub_on_one_data_dir_refuses_to_start(tmp_path: Path, hub: HubProcess) -> None:
    """Two hubs on one store would hand out the same sequence numbers: the second one
    says which process holds the data dir and exits, and the first one serves on."""
    started = time.monotonic()
    data_dir = str(tmp_path / "hub")
    second = subprocess.run(
        [sys.executable, "-m", "duplex", "serve", "--port", "0", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1, second
    assert "in use by another hub" in second.stderr
    assert f"held by process {hub.proc.pid}" in second.stderr
    assert "listening" not in second.stdout
    assert time.monotonic() - started < 30  # it waited for the lock, then gave up
    assert duplex(tmp_path, hub, "register", "--user", "carol", password="carol-pw").returncode == 0


def test_an_unusable_data_dir_is_one_line(tmp_path: Path) -> None:
    # Before: a traceback of pathlib's mkdir from `duplex serve`.
    afile = tmp_path / "a-file"
    afile.write_text("")
    env = dict(os.environ, DUPLEX_CONFIG_DIR=str(tmp_path / "conf"), DUPLEX_PASSWORD="x")
    cases = [
        (["serve", "--port", "0", "--data-dir", str(afile)], f"the data dir {afile} exists "),
        (["serve", "--port", "0", "--data-dir", "/proc/duplex-nope"], "cannot make the data "),
        (
            ["inbox", "--user", "bob", "--data-dir", str(afile), "--wait", "0.5"],
            f"cannot use {afile / 'bob'} for the client's data: Not a directory",
        ),
    ]
    for args, words in cases:
        done = run_cli(args, env)
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith(f"Error: {words}"), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_an_admin_address_in_use_stops_the_hub_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--port", "0", "--data-dir", str(tmp_path / "hub"), "--admin", f"127.0.0.1:{port}"]
        done = run_cli(["serve", *args])
    assert done.returncode == 1
    assert done.stderr.endswith(
        f"Error: the admin listener's 127.0.0.1:{port} is already in use (is another server "
        "listening there?)\n"
    ), done.stderr
    # The hub's tasks stopped with it: none ran on against the closed store.
    assert "WARNING" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_inbox_prints_what_another_command_received(tmp_path: Path, hub: HubProcess) -> None:
    # Before: `duplex send` as bob received alice's message, acked it (alice saw
    # "delivered") and printed nothing; `duplex inbox` then said "no new messages".
    register(tmp_path, hub, "alice", "bob")
    sent = duplex(tmp_path, hub, "send", "bob", "while you were out", "--user", "alice")
    assert sent.returncode == 0, sent.stderr
    reply = duplex(tmp_path, hub, "send", "alice", "sent before reading", "--user", "bob")
    assert reply.returncode == 0, reply.stderr
    assert "while you were out" not in reply.stdout
    inbox = duplex(tmp_path, hub, "inbox", "--user", "bob", "--json")
    assert inbox.returncode == 0, inbox.stderr
    assert [json.loads(line)["text"] for line in inbox.stdout.splitlines()] == [
        "while you were out"
    ]
    again = duplex(tmp_path, hub, "inbox", "--user", "bob")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "no new messages\n")


def test_a_message_too_long_for_the_wire_is_refused_before_it_is_queued(
    tmp_path: Path, hub: HubProcess
) -> None:
    # Before: it was queued, and every login resent it and was cut off for it
    # ("frame of 2000051 bytes announced"), so nothing after it ever went out.
    register(tmp_path, hub, "alice", "bob")
    long = duplex(tmp_path, hub, "send", "bob", "-", "--user", "alice", stdin="x" * 70_000)
    assert long.returncode == 1
    assert long.stderr == "Error: a message is at most 65,536 characters; this one has 70,000\n"
    fits = duplex(tmp_path, hub, "send", "bob", "-", "--user", "alice", stdin="y" * 65_536)
    assert fits.returncode == 0, fits.stderr
    inbox = duplex(tmp_path, hub, "inbox", "--user", "bob", "--json")
    assert [len(json.loads(line)["text"]) for line in inbox.stdout.splitlines()] == [65_536]


def test_logout_forgets_the_token_quietly(tmp_path: Path, hub: HubProcess) -> None:
    assert duplex(tmp_path, hub, "register", "--user", "alice", password="alice-pw").returncode == 0
    assert len(list((tmp_path / "conf" / "tokens").iterdir())) == 1
    out = duplex(tmp_path, hub, "logout", "--user", "alice")
    # (It printed "hub error: logged out (bye)": the hub's goodbye to our own Logout.)
    assert (out.returncode, out.stdout, out.stderr) == (0, "logged out\n", "")
    assert list((tmp_path / "conf" / "tokens").iterdir()) == []
    again = duplex(tmp_path, hub, "who", "--user", "alice")  # no token, no password
    assert again.returncode == 2
    assert "no password: set DUPLEX_PASSWORD or run in a terminal" in again.stderr


def test_a_one_shot_command_leaves_the_running_client_of_its_device_alone(
    tmp_path: Path, hub: HubProcess
) -> None:
    # One data dir is one device. Before, `duplex send` from a second terminal logged
    # that device in again, and the hub closed the running `inbox --follow` as the
    # half-open connection it replaced ("this device logged in again ..."), which then
    # reconnected: every one-shot command cut the running client off.
    register(tmp_path, hub, "alice", "bob")
    follow = follow_inbox(tmp_path, hub, "bob")
    try:
        out = duplex(tmp_path, hub, "send", "bob", "are you there?", "--user", "alice")
        assert out.returncode == 0, out.stderr
        line = follow.stdout.readline() if follow.stdout else ""
        assert json.loads(line)["text"] == "are you there?"  # so it is online
        for i in range(3):
            out = duplex(tmp_path, hub, "send", "alice", f"reply {i}", "--user", "bob")
            assert out.returncode == 0, out.stderr
        # `duplex peers` still finds the running client: the one-shot commands of its
        # device neither took nor removed its state file.
        peers = duplex(tmp_path, hub, "peers", "--user", "bob", "--json")
        assert json.loads(peers.stdout)["pid"] == follow.pid, peers.stdout + peers.stderr
        out = duplex(tmp_path, hub, "send", "bob", "still there?", "--user", "alice", "--delivered")
        assert out.returncode == 0, out.stderr  # bob's running inbox took it
        assert out.stdout.split("  ")[2].startswith("delivered"), out.stdout
        line = follow.stdout.readline() if follow.stdout else ""
        assert json.loads(line)["text"] == "still there?"
    finally:
        follow.send_signal(signal.SIGTERM)
        _, err = follow.communicate(timeout=30)
    assert "replaced" not in err and "reconnecting" not in err, err
