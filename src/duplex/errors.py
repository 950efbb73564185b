"""The one exception tree of duplex.

Every error duplex raises on purpose is a :class:`DuplexError`. Foreign exceptions
(``OSError``, ``sqlite3.Error``, driver errors) are translated at the edge with
:func:`map_exceptions` and never escape a backend or a driver::

    DuplexError
    ├── ConfigError                 a flag, DUPLEX_* variable or config file value is wrong
    ├── ProtocolError
    │   ├── LocalProtocolError      WE misused the protocol (a bug on our side)
    │   │   └── InvalidState        a call that the session's state table does not allow
    │   └── RemoteProtocolError     the PEER broke the protocol
    │       ├── PayloadTooBig       a length prefix above the configured limit
    │       ├── MalformedFrame      bytes that do not decode to a known message
    │       ├── EchoMismatch        an echo server sent back other bytes than it got
    │       └── UnsupportedVersion  a Hello with a protocol version we do not speak
    ├── TransportError
    │   ├── ClosedResourceError     WE closed it and then tried to use it
    │   └── BrokenResourceError     the peer or the OS broke it (reset, EPIPE, timeout)
    ├── ServerError
    │   ├── UnknownModel            a concurrency model name that is not registered
    │   └── BindError               the listener could not be set up (in use, bad host)
    ├── RemoteError                 the hub answered Error{code, message}
    │   └── AuthError               bad credentials, unknown user, throttled login
    ├── Unsendable                  a message the wire cannot carry (too long, a bad
    │                               recipient name): refused before it is queued
    ├── StoreError                  a Store backend failed
    │   └── StoreCorrupt            the store failed its integrity check
    ├── BrokerError                 a Broker backend failed
    ├── InspectError                a socket table or process could not be inspected
    │   ├── ProcFormatError         a /proc/net file or netlink answer not in the kernel's format
    │   └── NoSuchProcess           the process asked about does not exist (or is gone)
    └── ExperimentError             a lab experiment could not run (helper failed, bad parameter)

The split between *local* and *remote* protocol errors follows h11 and websockets: a
remote error closes that connection with an error code and is logged at INFO at most;
a local error is a bug and is logged with its traceback. The split between *closed*
and *broken* resources follows trio: "closed" is our own doing and needs no log line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

__all__ = [
    "AuthError",
    "BindError",
    "BrokenResourceError",
    "BrokerError",
    "ClosedResourceError",
    "ConfigError",
    "DuplexError",
    "EchoMismatch",
    "ExperimentError",
    "InspectError",
    "InvalidState",
    "LocalProtocolError",
    "MalformedFrame",
    "NoSuchProcess",
    "PayloadTooBig",
    "ProcFormatError",
    "ProtocolError",
    "RemoteError",
    "RemoteProtocolError",
    "ServerError",
    "StoreCorrupt",
    "StoreError",
    "TransportError",
    "UnknownModel",
    "Unsendable",
    "UnsupportedVersion",
    "map_exceptions",
]


class DuplexError(Exception):
    """Base class of every error duplex raises on purpose."""


class ConfigError(DuplexError):
    """A configuration value (flag, ``DUPLEX_*`` variable, TOML file) is invalid."""


class ProtocolError(DuplexError):
    """A protocol rule was broken, by us or by the peer."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow: a bug on our side."""


class InvalidState(LocalProtocolError):
    """A call that the session's state table does not allow in its current state.

    The session is left unchanged.
    """


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow.

    Attributes:
        code: the error code sent to the peer before the connection closes.
    """

    code: str = "protocol"


class PayloadTooBig(RemoteProtocolError):
    """A frame's length prefix is above the limit; raised before the body is read."""

    code = "too-big"


class MalformedFrame(RemoteProtocolError):
    """A frame body that does not decode to a known message."""

    code = "malformed"


class EchoMismatch(RemoteProtocolError):
    """An echo server answered with bytes other than those sent (RFC 862 broken)."""

    code = "mismatch"


class UnsupportedVersion(RemoteProtocolError):
    """A ``Hello`` with a protocol version we do not speak."""

    code = "version"


class TransportError(DuplexError):
    """A connection could not be used."""


class ClosedResourceError(TransportError):
    """We closed the resource and then tried to use it."""


class BrokenResourceError(TransportError):
    """The peer or the operating system broke the resource (reset, EPIPE, timeout)."""


class ServerError(DuplexError):
    """A server could not be started."""


class UnknownModel(ServerError):
    """A concurrency model name that is not in the registry."""


class BindError(ServerError):
    """The listening socket could not be created, bound or put in listen mode."""


class RemoteError(DuplexError):
    """The hub refused a request with ``Error{code, message}``.

    Attributes:
        code: the machine-readable reason, e.g. ``"rate-limited"``.
        message: the human-readable reason sent by the hub.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class AuthError(RemoteError):
    """Bad credentials, an unknown user, or a throttled login."""


class Unsendable(DuplexError):
    """A message the protocol cannot carry: refused before it is queued (the hub would
    close the connection over it, and every resend would do the same)."""


class StoreError(DuplexError):
    """A Store backend failed; the original error is the ``__cause__``."""


class StoreCorrupt(StoreError):
    """The store failed its integrity check; the hub refuses to serve from it."""


class BrokerError(DuplexError):
    """A Broker backend failed; the original error is the ``__cause__``."""


class InspectError(DuplexError):
    """A socket table, process or address could not be inspected."""


class ProcFormatError(InspectError):
    """Text from /proc/net (or a sock_diag answer) that is not in the kernel's format."""


class NoSuchProcess(InspectError):
    """The process asked about does not exist, or exited while we looked."""


class ExperimentError(DuplexError):
    """An experiment could not be run: a helper process failed, or a parameter is invalid."""


@contextlib.contextmanager
def map_exceptions(mapping: Mapping[type[BaseException], type[DuplexError]]) -> Iterator[None]:
    """Translate foreign exceptions into ours at an edge.

    The first entry of ``mapping`` that the exception is an instance of wins; the
    original exception becomes ``__cause__``. Exceptions that match no entry pass
    through unchanged.

    Args:
        mapping: foreign exception type to duplex exception type.

    Raises:
        DuplexError: the mapped exception.
    """
    try:
        yield
    except Exception as exc:
        for foreign, ours in mapping.items():
            if isinstance(exc, foreign):
                raise ours(str(exc)) from exc
        raise
