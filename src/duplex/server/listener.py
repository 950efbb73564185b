"""Listening sockets, shared by every concurrency model.

This is CSAPP's ``open_listenfd`` grown up: ``getaddrinfo`` for IPv4 and IPv6, an
optional Unix domain socket, a backlog that is reported honestly after the kernel's
clamp, and the open-files limit raised before the first ``accept()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import resource
import socket
import stat

from duplex.config import ListenerConfig
from duplex.errors import BindError
from duplex.protocol.handler import Endpoint

__all__ = [
    "Listener",
    "NofileLimit",
    "bind_error",
    "bound_address",
    "create_listener",
    "create_udp_socket",
    "effective_backlog",
    "raise_nofile_limit",
    "read_somaxconn",
]

log = logging.getLogger(__name__)

SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"


def read_somaxconn() -> int | None:
    """Returns ``net.core.somaxconn``, or None where it cannot be read."""
    try:
        with open(SOMAXCONN_PATH) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def effective_backlog(asked: int, somaxconn: int | None) -> int:
    """Returns the accept-queue length the kernel will really use for ``listen(asked)``.

    Linux silently truncates the argument of ``listen()`` to ``net.core.somaxconn``
    (``__sys_listen`` in net/socket.c), so a server that prints the number it asked
    for is lying. We print both.
    """
    return asked if somaxconn is None else min(asked, somaxconn)


@dataclasses.dataclass(frozen=True, slots=True)
class NofileLimit:
    """The open-files limit (RLIMIT_NOFILE) before and after :func:`raise_nofile_limit`."""

    soft_before: int
    soft: int
    hard: int

    def __str__(self) -> str:
        if self.soft_before != self.soft:
            return f"{self.soft} (soft, raised from {self.soft_before}; hard {self.hard})"
        return f"{self.soft} (soft; hard {self.hard})"


def raise_nofile_limit() -> NofileLimit:
    """Raises the soft open-files limit to the hard limit.

    Every connection costs a descriptor, and the soft limit (often 1024) is the first
    wall a busy server hits. The hard limit can only be raised by root, and on these
    machines not even by root, so we take what the hard limit allows and say so.

    Returns:
        The limits before and after.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
            return NofileLimit(soft, soft, hard)
        return NofileLimit(soft, target, hard)
    return NofileLimit(soft, soft, hard)


@dataclasses.dataclass(slots=True)
class Listener:
    """A listening socket and the facts a server reports about it.

    Attributes:
        sock: the listening socket (blocking; drivers change that as they need).
        address: the address it is bound to, with the real port when 0 was asked.
        backlog: the backlog asked of ``listen()``.
        effective_backlog: the backlog after the somaxconn clamp.
        somaxconn: ``net.core.somaxconn``, or None where unknown.
        config: the configuration it was made from (prefork workers reuse it).
    """

    sock: socket.socket
    address: Endpoint
    backlog: int
    effective_backlog: int
    somaxconn: int | None
    config: ListenerConfig

    @property
    def clamped(self) -> bool:
        """True when the kernel will use a shorter accept queue than asked."""
        return self.effective_backlog < self.backlog

    def close(self) -> None:
        """Closes the socket, and removes the Unix socket file we created."""
        self.sock.close()
        if self.address.is_unix:
            with contextlib.suppress(OSError):
                os.unlink(self.address.host)


def _resolve(host: str, port: int, kind: socket.SocketKind) -> tuple[int, object]:
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, kind, 0, socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise BindError(f"invalid host {host!r}: {exc}") from exc
    # Prefer IPv6 for "::"-style hosts, otherwise whatever getaddrinfo ranks first.
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def bound_address(sock: socket.socket) -> Endpoint:
    """Returns the local address of ``sock`` as an :class:`Endpoint`."""
    return Endpoint.from_sockaddr(sock.getsockname())


def bind_error(exc: OSError, where: str) -> BindError:
    """Says why binding ``where`` failed, in words, from the ``errno`` of ``exc``."""
    if exc.errno == errno.EADDRINUSE:
        return BindError(f"{where} is already in use (is another server listening there?)")
    if exc.errno == errno.EACCES:
        return BindError(f"permission denied binding {where} (ports below 1024 need privileges)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return BindError(f"cannot bind {where}: no local interface has that address")
    return BindError(f"cannot bind {where}: {exc.strerror or exc}")


def _prepare_unix_path(path: str) -> None:
    """Removes a stale socket file, refuses to clobber anything else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover from a crashed server
    else:
        raise BindError(f"unix:{path} is already in use (another server answers there)")
    finally:
        probe.close()


def create_listener(
    config: ListenerConfig, *, reuse_port: bool = False, listen: bool = True
) -> Listener:
    """Creates, binds and (by default) listens on a socket as ``config`` says.

    Args:
        config: host/port or Unix path, backlog and options.
        reuse_port: set SO_REUSEPORT, so several processes can each bind the same port
            and the kernel spreads connections among them (the prefork model).
        listen: call ``listen()``; the prefork supervisor binds without listening to
            hold the port while its workers come and go.

    Returns:
        The listener, with the real bound address.

    Raises:
        BindError: invalid host, address in use, permission denied.
    """
    somaxconn = read_somaxconn()
    effective = effective_backlog(config.backlog, somaxconn)
    if config.unix:
        _prepare_unix_path(config.unix)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(config.unix)
            if listen:
                sock.listen(config.backlog)
        except OSError as exc:
            sock.close()
            raise bind_error(exc, f"unix:{config.unix}") from exc
        return Listener(
            sock, Endpoint(config.unix, -1), config.backlog, effective, somaxconn, config
        )

    family, sockaddr = _resolve(config.host, config.port, socket.SOCK_STREAM)
    sock = socket.socket(family, socket.SOCK_STREAM)
    where = str(Endpoint.from_sockaddr(sockaddr))
    try:
        if config.reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and config.host in ("::", ""):
            # Dual stack: one socket for IPv6 and IPv4-mapped clients.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)  # type: ignore[arg-type]
        if listen:
            sock.listen(config.backlog)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, where) from exc
    return Listener(sock, bound_address(sock), config.backlog, effective, somaxconn, config)


def create_udp_socket(
    config: ListenerConfig, port: int, *, reuse_port: bool = False
) -> socket.socket:
    """Creates a UDP socket bound to ``config.host`` and ``port`` (the TCP port).

    Raises:
        BindError: as for :func:`create_listener`.
    """
    family, sockaddr = _resolve(config.host, port, socket.SOCK_DGRAM)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and config.host in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)  # type: ignore[arg-type]
    except OSError as exc:
        sock.close()
        raise bind_error(exc, f"udp {Endpoint.from_sockaddr(sockaddr)}") from exc
    return sock
