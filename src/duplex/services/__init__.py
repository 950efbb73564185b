"""Services that run on the server core: the RFC 862 echo service."""

from __future__ import annotations

from duplex.services.echo import (
    EchoClient,
    RoundTrips,
    echo_datagram,
    make_echo_handler,
    serve_echo,
)

__all__ = ["EchoClient", "RoundTrips", "echo_datagram", "make_echo_handler", "serve_echo"]
