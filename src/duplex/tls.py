"""Certificates and pinned TLS, shared by the hub, the client and direct peer links.

duplex does not use certificate authorities between its own parts. The hub and every
device make a self-signed certificate once and keep it; the other side *pins* its
SHA-256 fingerprint: the client on first use of a hub (trust on first use, as ssh
does with host keys), the dialer of a direct link from the fingerprint the hub vouched
for in the introduction. A changed fingerprint is refused, never silently accepted.

This module is the one place that knows the ``ssl`` and ``cryptography`` APIs for it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from duplex.errors import BrokenResourceError, ConfigError

__all__ = [
    "PinMismatch",
    "client_context",
    "ensure_certificate",
    "fingerprint_of_der",
    "fingerprint_of_pem_file",
    "format_fingerprint",
    "peer_fingerprint",
    "server_context",
]


class PinMismatch(BrokenResourceError):
    """The peer's certificate is not the one pinned: maybe an impostor."""


def fingerprint_of_der(der: bytes) -> str:
    """Returns the SHA-256 fingerprint of a DER certificate, as lowercase hex."""
    return hashlib.sha256(der).hexdigest()


def format_fingerprint(fingerprint: str) -> str:
    """Returns ``ab:cd:...`` (how browsers and openssl print fingerprints)."""
    return ":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2))


def fingerprint_of_pem_file(path: str | os.PathLike[str]) -> str:
    """Returns the SHA-256 fingerprint of the first certificate in a PEM file.

    Raises:
        ConfigError: the file cannot be read or holds no certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read certificate {path}: {exc}") from exc
    return fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def ensure_certificate(directory: Path, name: str, common_name: str) -> tuple[Path, Path, str]:
    """Returns ``(cert, key, fingerprint)``, making a self-signed pair on first use.

    The key is an ECDSA P-256 key written with mode 0600; the certificate is valid
    for ten years (its identity is its pinned fingerprint, not its dates).

    Args:
        directory: where ``<name>.pem`` and ``<name>.key`` live.
        name: file stem.
        common_name: the certificate's subject CN (informational).

    Raises:
        ConfigError: the files cannot be written.
    """
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}.key"
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path, fingerprint_of_pem_file(cert_path)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise ConfigError(f"cannot write a certificate in {directory}: {exc}") from exc
    return cert_path, key_path, fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """Returns a TLS 1.3 server context for a certificate and key.

    Raises:
        ConfigError: they cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from exc
    return context


def client_context(
    cert: str | os.PathLike[str] | None = None, key: str | os.PathLike[str] | None = None
) -> ssl.SSLContext:
    """Returns a TLS 1.3 client context that checks nothing but leaves pinning to us.

    The CA and host-name checks are off on purpose: the peer's identity is its pinned
    fingerprint, compared by :func:`peer_fingerprint` right after the handshake and
    before a single byte of ours is sent.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context


def peer_fingerprint(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """Returns the SHA-256 fingerprint of the peer's certificate, or "" without TLS."""
    if ssl_object is None:
        return ""
    der = ssl_object.getpeercert(binary_form=True)
    return fingerprint_of_der(der) if der else ""
