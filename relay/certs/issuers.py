"""Where HTTPS endpoint certificates come from.

An :class:`Issuer` turns a list of hostnames into a certificate chain and its private key. Three
exist: :class:`LocalCAIssuer` (the default: the edge's own CA, instant, trusted by whoever
trusts ``ca.pem``), :class:`FileIssuer` (certificate files the operator manages) and
:class:`relay.certs.acme_issuer.AcmeIssuer` (RFC 8555). The
:class:`~relay.certs.manager.CertificateManager` decides *when* to issue, caches and stores.

Issuers whose issuance is cheap and local also implement :class:`SyncIssuer`, which lets the
manager issue inside a TLS ClientHello callback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from relay.certs.local_ca import LocalCA, _normalize_hostnames
from relay.errors import CertificateError, CertificateNameMismatch, ConfigError, DataDirError

__all__ = [
    "FileIssuer",
    "IssuedCert",
    "Issuer",
    "LocalCAIssuer",
    "PacedIssuer",
    "SyncIssuer",
    "cert_names",
    "name_covered",
    "normalize_hostname",
]

_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A certificate chain (leaf first, PEM), its private key (PKCS#8 PEM) and expiry.

    ``persist`` is False for certificates whose source of truth lives elsewhere (operator files):
    the manager then keeps them in memory only and never copies their key into the data dir.
    """

    chain_pem: bytes
    key_pem: bytes
    not_after: dt.datetime
    persist: bool = True

    @classmethod
    def from_pem(cls, chain_pem: bytes, key_pem: bytes, *, persist: bool = True) -> IssuedCert:
        """Build from PEM, checking that the key belongs to the leaf."""
        try:
            leaf = x509.load_pem_x509_certificate(chain_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CertificateError(f"unusable certificate or key: {exc}") from None
        if leaf.public_key() != key.public_key():
            raise CertificateError("the private key does not belong to the certificate")
        return cls(chain_pem, key_pem, leaf.not_valid_after_utc, persist)

    def names(self) -> list[str]:
        """The DNS names (SANs) of the leaf."""
        return cert_names(x509.load_pem_x509_certificate(self.chain_pem))


class Issuer(Protocol):
    """Anything that can issue a certificate for some hostnames."""

    async def issue(self, hostnames: list[str]) -> IssuedCert: ...


@runtime_checkable
class SyncIssuer(Protocol):
    """An issuer fast enough to be called inside a TLS handshake callback (no I/O waits)."""

    def issue_now(self, hostnames: list[str]) -> IssuedCert: ...


@runtime_checkable
class PacedIssuer(Protocol):
    """An issuer that must not be asked before a time of its own choosing: an ACME CA's
    ``Retry-After``, or one of its published limits reached. The manager never starts an
    order for ``hostname`` before ``not_before(hostname)`` (None: any time)."""

    def not_before(self, hostname: str) -> dt.datetime | None: ...


def normalize_hostname(name: str) -> str:
    """Lowercase, no trailing dot, syntax-checked (wildcards allowed); ConfigError otherwise."""
    return _normalize_hostnames([name])[0]


def cert_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


def name_covered(name: str, patterns: Iterable[str]) -> bool:
    """Whether a certificate with these SAN ``patterns`` is valid for ``name`` (RFC 6125).

    A wildcard matches exactly one whole left-most label: ``*.example.com`` covers
    ``a.example.com`` but neither ``example.com`` nor ``a.b.example.com``. A wildcard name asked
    for (``*.example.com``) is covered only by the identical wildcard.
    """
    name = name.lower().rstrip(".")
    for pattern in patterns:
        p = pattern.lower().rstrip(".")
        if p == name:
            return True
        if p.startswith("*.") and not name.startswith("*."):
            head, _, rest = name.partition(".")
            if rest == p[2:] and _LABEL_RE.fullmatch(head):
                return True
    return False


class LocalCAIssuer:
    """Issues from the edge's local CA (ECDSA P-256, about a millisecond per certificate)."""

    def __init__(self, ca: LocalCA, *, days: int = 90) -> None:
        if days < 1:
            raise ConfigError("certificate validity must be at least one day")
        self.ca = ca
        self.days = days

    def issue_now(self, hostnames: list[str]) -> IssuedCert:
        chain, key = self.ca.issue_server_cert(hostnames, [], days=self.days)
        return IssuedCert.from_pem(chain, key)

    async def issue(self, hostnames: list[str]) -> IssuedCert:
        return self.issue_now(hostnames)


class FileIssuer:
    """Serves an operator-provided certificate/key pair for the names it covers.

    The files are read on every call (so a renewed pair the operator drops in place is picked up
    by the manager's next renewal pass) and never written. A name the certificate does not cover
    raises :class:`~relay.errors.CertificateNameMismatch`.
    """

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)

    def load(self) -> IssuedCert:
        try:
            chain = self.cert_file.read_bytes()
            key = self.key_file.read_bytes()
        except OSError as exc:
            raise DataDirError(f"cannot read certificate files: {exc}") from None
        return IssuedCert.from_pem(chain, key, persist=False)

    def issue_now(self, hostnames: list[str]) -> IssuedCert:
        cert = self.load()
        have = cert.names()
        missing = [h for h in hostnames if not name_covered(h, have)]
        if missing:
            raise CertificateNameMismatch(
                f"{self.cert_file} does not cover {', '.join(missing)} "
                f"(it names {', '.join(have) or 'no DNS names'})"
            )
        return cert

    async def issue(self, hostnames: list[str]) -> IssuedCert:
        return await asyncio.to_thread(self.issue_now, hostnames)
