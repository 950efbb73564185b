"""duplex chat driven headless (Textual's pilot) with real clients and a real hub."""

from __future__ import annotations

import asyncio
from pathlib import Path

from duplex.testing.clients import new_client
from duplex.testing.hubs import hub_test_config, running_hub
from tests.tui.helpers import chat_app, chat_screen, screen_text, until


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_alice_sends_bob_sees_path_state_and_unread(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path / "hub")) as hub:
            alice = await new_client(hub.address, "alice", data_dir=tmp_path / "alice")
            bob = await new_client(hub.address, "bob", data_dir=tmp_path / "bob")
            try:
                await alice.add_contact("bob")
                await bob.add_contact("alice")
                alice_app = chat_app(tmp_path / "a", alice)
                bob_app = chat_app(tmp_path / "b", bob)
                async with (
                    alice_app.run_test(size=(100, 30)) as ap,
                    bob_app.run_test(size=(100, 30)) as bp,
                ):
                    a_screen, b_screen = chat_screen(alice_app), chat_screen(bob_app)
                    await until(ap, lambda: "bob" in a_screen.roster, what="alice's contacts")
                    a_screen.open_conversation("bob")
                    await ap.press(*"hello bob", "enter")
                    await until(
                        bp, lambda: b_screen.roster.get("alice").unread == 1, what="bob's unread"
                    )
                    # The path shown is the one the client library reports, whichever.
                    await until(ap, lambda: "✓✓ delivered·" in screen_text(alice_app))
                    (msg_id,) = [x.id for x in alice.local.search("hello bob")]
                    state, path = alice.state_of(msg_id) or ("", None)
                    assert (state, path in ("direct", "relayed")) == ("delivered", True)
                    assert f"✓✓ delivered·{path}" in screen_text(alice_app)
                    assert a_screen.composer.text == ""
                    # Bob's contact list shows the unread count, his status bar the total.
                    await bp.pause()
                    row = str(b_screen.contacts.get_option("alice").prompt)
                    assert row.startswith("● alice 1"), row
                    assert "1 unread" in b_screen.status.text
                    assert bob_app.escapes == ["\a"]  # a bell for a message elsewhere
                    b_screen.open_conversation("alice")
                    await bp.pause()
                    text = screen_text(bob_app)
                    assert "alice │ hello bob" in text
                    received = bob.local.line_of(msg_id, outgoing=False, peer="alice")
                    assert received is not None and received.path in ("direct", "relayed")
                    assert f"↓ {received.path}" in text
                    assert "new messages" in text  # the unread marker line
                    assert b_screen.roster.get("alice").unread == 0
                    assert not a_screen.errors and not b_screen.errors
            finally:
                await alice.close()
                await bob.close()

    run(scenario())


def test_hub_restart_reconnecting_then_online_queued_sent_and_draft_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        hub_dir = tmp_path / "hub"
        async with running_hub(hub_test_config(hub_dir)) as hub:
            port = hub.address[1]
            alice = await new_client(
                hub.address, "alice", data_dir=tmp_path / "alice", backoff=(0.4, 0.8)
            )
            bob = await new_client(hub.address, "bob", data_dir=tmp_path / "bob")
            await alice.add_contact("bob")
        try:
            alice_app = chat_app(tmp_path / "a", alice)
            bob_app = chat_app(tmp_path / "b", bob)
            async with alice_app.run_test(size=(100, 30)) as ap, bob_app.run_test() as bp:
                screen = chat_screen(alice_app)
                status = screen.status
                # The hub is gone: reconnecting, with the countdown.
                await until(ap, lambda: "reconnecting" in status.text, what="reconnecting")
                assert "direct links: 0" in status.text
                screen.open_conversation("bob")
                await ap.press(*"sent while down", "enter")
                await until(ap, lambda: "◷ queued" in screen_text(alice_app), what="queued")
                await ap.press(*"half-typed")
                async with running_hub(hub_test_config(hub_dir, port=port)):
                    await until(ap, lambda: status.text.startswith("● online"), what="online")
                    await until(
                        ap, lambda: "✓✓ delivered·" in screen_text(alice_app), what="delivered"
                    )
                    bob_screen = chat_screen(bob_app)
                    await until(bp, lambda: bob_screen.roster.get("alice").unread == 1)
                    assert screen.composer.text == "half-typed"  # the draft survived
                    assert "sent while down" in screen_text(alice_app)
                    assert not screen.errors and not bob_screen.errors
        finally:
            await alice.close()
            await bob.close()

    run(scenario())


def test_history_is_paged_in_from_the_hub_on_a_new_device(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(hub_test_config(tmp_path / "hub")) as hub:
            alice = await new_client(hub.address, "alice", data_dir=tmp_path / "alice1")
            bob = await new_client(hub.address, "bob", data_dir=tmp_path / "bob")
            await alice.add_contact("bob")
            ids = [await alice.send("bob", f"old message {i}") for i in range(30)]
            for msg_id in ids:
                assert await alice.wait_state(msg_id, "stored", 10) in ("stored", "delivered")
            await alice.close()
            # A second device: its local store has none of what alice sent from the first.
            alice2 = await new_client(
                hub.address, "alice", register_first=False, data_dir=tmp_path / "alice2"
            )
            try:
                app = chat_app(tmp_path / "a2", alice2)
                async with app.run_test(size=(100, 30)) as pilot:
                    screen = chat_screen(app)
                    await until(pilot, lambda: "bob" in screen.roster, what="contacts")
                    screen.open_conversation("bob")  # empty here: the view asks the hub
                    await until(
                        pilot,
                        lambda: screen.timeline is not None and len(screen.timeline) == 30,
                        what="history from the hub",
                    )
                    await pilot.pause()
                    text = screen_text(app)
                    assert "old message 29" in text and "✓ stored·stored" in text
                    await pilot.press(*"/history 50", "enter")
                    await until(
                        pilot,
                        lambda: any("No older" in str(n.message) for n in app._notifications),
                        what="/history answer",
                    )
                    assert len(screen.timeline) == 30  # nothing twice
                    assert not screen.errors
            finally:
                await alice2.close()
                await bob.close()

    run(scenario())


def test_a_refused_token_brings_back_the_login_screen(tmp_path: Path) -> None:
    async def scenario() -> None:
        from textual.widgets import Static

        from duplex.config import ClientConfig
        from duplex.tui import ChatApp
        from duplex.tui.screens import SetupScreen
        from tests.tui.helpers import FIXED_CLOCK, backend

        async with running_hub(hub_test_config(tmp_path / "hub")) as hub:
            erin = await new_client(hub.address, "erin", data_dir=tmp_path / "erin")
            await erin.close()
            host, port = hub.address
            config = ClientConfig(hub=f"{host}:{port}", user="erin", data_dir=str(tmp_path))
            be = backend(tmp_path)
            be.tokens.save(config, "a-token-the-hub-never-gave")
            app = ChatApp(be, config, clock=FIXED_CLOCK)
            async with app.run_test(size=(90, 40)) as pilot:
                await until(
                    pilot,
                    lambda: (
                        isinstance(app.screen, SetupScreen) and bool(app.screen.query("#message"))
                    ),
                    what="the login screen",
                )
                message = str(app.screen.query_one("#message", Static).content)
                assert message.startswith("Login refused"), message
                assert be.tokens.load(config) == ""  # the refused token is forgotten

    run(scenario())
