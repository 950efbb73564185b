"""TLS to the hub: the certificate is pinned on first use and a changed one is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from duplex.client import Client, PinStore, register
from duplex.errors import AuthError
from duplex.testing.hubs import hub_test_config, running_hub
from duplex.tls import format_fingerprint


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
