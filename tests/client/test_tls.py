"""TLS to the hub: the certificate is pinned on first use and a changed one is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from duplex.client import Client, PinStore, register
from duplex.errors import AuthError, BrokenResourceError
from duplex.testing.hubs import hub_test_config, running_hub
from duplex.tls import ensure_certificate, format_fingerprint


def test_trust_on_first_use_then_refuse_a_changed_certificate(tmp_path: Path) -> None:
    async def scenario() -> None:
        pins = PinStore(tmp_path / "known_hubs")
        async with running_hub(hub_test_config(tmp_path / "a", tls="self-signed")) as hub:
            address = hub.address
            first = hub.info.fingerprint
            await register(address, "alice", "correct horse", tls=True, pins=pins)
            assert pins.pinned(f"{address[0]}:{address[1]}") == first
            client = Client(address, "alice", password="correct horse", tls=True, pins=pins)
            await client.start(wait_online=10)
            await client.close()
        # Another hub (another certificate) at the same address: an impostor, perhaps.
        other = hub_test_config(tmp_path / "b", tls="self-signed", port=address[1])
        async with running_hub(other) as impostor:
            assert impostor.info.fingerprint != first
            client = Client(address, "alice", password="correct horse", tls=True, pins=pins)
            with pytest.raises(AuthError) as refused:
                await client.start(wait_online=10)
            message = str(refused.value)
            assert "pinned on first use" in message
            assert format_fingerprint(first)[:47] in message
            assert str(tmp_path / "known_hubs") in message  # says how to fix it
            assert client.state == "offline"
            await client.close()
            # The pin is checked before the Login (and its password) is sent.
            assert impostor.hub.local == {}
            for outcome in ("ok", "refused", "throttled"):
                assert impostor.hub.metrics.logins.labels(outcome)._value.get() == 0  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_tls_on_one_side_only_is_named_as_the_cause(tmp_path: Path) -> None:
    # Before: "the peer closed the connection" and "[SSL: WRONG_VERSION_NUMBER] wrong
    # version number (_ssl.c:1006)", which say nothing to a user who forgot --tls.
    async def scenario() -> None:
        async with (
            running_hub(hub_test_config(tmp_path / "tls", tls="self-signed")) as tls_hub,
            running_hub(hub_test_config(tmp_path / "plain")) as plain_hub,
        ):
            with pytest.raises(BrokenResourceError) as plain_to_tls:
                await register(tls_hub.address, "alice", "correct horse")
            assert "before it said anything: if it uses TLS, connect with TLS (--tls)" in str(
                plain_to_tls.value
            )
            with pytest.raises(BrokenResourceError) as tls_to_plain:
                await register(plain_hub.address, "alice", "correct horse", tls=True)
            assert str(tls_to_plain.value).endswith(
                "the hub does not use TLS: connect without it (no --tls)"
            )
            # A client says the same as the reason of its state, and keeps trying.
            for address, tls, words in (
                (tls_hub.address, False, "if it uses TLS, connect with TLS"),
                (plain_hub.address, True, "the hub does not use TLS"),
            ):
                client = Client(address, "alice", password="correct horse", tls=tls)
                await client.start()
                with pytest.raises(TimeoutError):
                    await client.wait_online(1.0)
                assert words in client.last_failure, client.last_failure
                assert client.state in ("reconnecting", "connecting") and client.fatal == ""
                await client.close()

    asyncio.run(scenario())


def test_a_hub_with_certificate_files_speaks_tls(tmp_path: Path) -> None:
    cert, key, fingerprint = ensure_certificate(tmp_path / "pki", "hub", "test hub")
    config = hub_test_config(tmp_path / "hub", tls_cert=str(cert), tls_key=str(key))

    async def scenario() -> None:
        async with running_hub(config) as hub:
            assert hub.info.fingerprint == fingerprint
            pins = PinStore(tmp_path / "known_hubs")
            await register(hub.address, "alice", "correct horse", tls=True, pins=pins)
            assert pins.pinned(f"{hub.address[0]}:{hub.address[1]}") == fingerprint

    asyncio.run(scenario())
