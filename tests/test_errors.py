from __future__ import annotations

import pytest

from duplex import errors


def test_every_error_is_a_duplex_error() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.DuplexError), name


def test_local_and_remote_protocol_errors_are_separate() -> None:
    assert not issubclass(errors.LocalProtocolError, errors.RemoteProtocolError)
    assert not issubclass(errors.ClosedResourceError, errors.BrokenResourceError)
    assert issubclass(errors.InvalidState, errors.LocalProtocolError)
    assert errors.PayloadTooBig.code == "too-big"


def test_map_exceptions_translates_and_chains() -> None:
    with (
        pytest.raises(errors.BrokenResourceError) as info,
        errors.map_exceptions({OSError: errors.BrokenResourceError}),
    ):
        raise ConnectionResetError("reset")
    assert isinstance(info.value.__cause__, ConnectionResetError)


def test_map_exceptions_lets_others_through() -> None:
    with pytest.raises(KeyError), errors.map_exceptions({OSError: errors.StoreError}):
        raise KeyError("x")


def test_remote_error_keeps_code_and_message() -> None:
    err = errors.AuthError("bad-password", "wrong password")
    assert err.code == "bad-password"
    assert "wrong password" in str(err)
