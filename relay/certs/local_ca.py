"""The edge's local certificate authority.

On first start the edge makes a private CA (ECDSA P-256, 10 years) under ``<data_dir>/ca/`` and
uses it to issue the certificate agents see on the agent link and, by default, certificates for
HTTPS endpoints. Agents trust it by loading ``ca.pem`` (``--ca``) or by pinning the edge
certificate's SHA-256 fingerprint.

The CA is created complete-or-not-at-all (both files are written into a private temporary
directory that is renamed into place), and never silently replaced: agents may already trust
it. The edge certificate, in contrast, is disposable and is re-issued whenever it is close to
expiry, names different hosts, or no longer matches its key or the CA.

TODO(secrets-at-rest): private keys are stored as unencrypted PKCS#8 PEM protected only by file
mode 0600. Application-layer envelope encryption of keys at rest (AES-256-GCM data keys wrapped
by the operator's key-encryption key; DESIGN.md, Control plane -> Secrets) comes in a later issue.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.errors import ConfigError, DataDirError
from relay.secret_files import read_owner_only_file

__all__ = [
    "LocalCA",
    "cert_pem_fingerprint_matches",
    "edge_certificate",
    "fingerprint_sha256",
    "normalize_pin",
]

CA_VALIDITY = dt.timedelta(days=3650)
#: Backdating covers agents whose clocks run a little behind the edge's.
BACKDATE = dt.timedelta(minutes=5)
RENEW_BEFORE = dt.timedelta(days=30)
_HOSTNAME_RE = re.compile(r"(\*\.)?((?!-)[a-z0-9-]{1,63}(?<!-))(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class LocalCA:
    """A loaded local CA: its certificate, key and location."""

    def __init__(self, ca_dir: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.ca_dir = ca_dir
        self.cert = cert
        self.key = key

    @property
    def ca_pem_path(self) -> Path:
        """The file agents load to trust this edge (``--ca``)."""
        return self.ca_dir / "ca.pem"

    @property
    def key_path(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> LocalCA:
        """Load ``<data_dir>/ca/``, creating the CA on first start."""
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca_dir = data_dir / "ca"
        if not (ca_dir / "ca.pem").exists() and not (ca_dir / "ca.key").exists():
            _create_ca_dir(ca_dir)
        return cls._load(ca_dir)

    @classmethod
    def _load(cls, ca_dir: Path) -> LocalCA:
        cert_path, key_path = ca_dir / "ca.pem", ca_dir / "ca.key"
        if not cert_path.exists() or not key_path.exists():
            raise DataDirError(
                f"{ca_dir} holds only one of ca.pem and ca.key; restore the missing file, or "
                "delete both to create a new CA (agents will then need the new ca.pem)"
            )
        key = _read_private_key(key_path)
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError as exc:
            raise DataDirError(f"{cert_path} is not a PEM certificate") from exc
        if cert.public_key() != key.public_key():
            raise DataDirError(f"{cert_path} and {key_path} do not belong together")
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            raise DataDirError(f"{cert_path} is not a CA certificate")
        return cls(ca_dir, cert, key)

    def issue_server_cert(
        self, hostnames: list[str], ips: list[str], *, days: int = 90, client_auth: bool = False
    ) -> tuple[bytes, bytes]:
        """Issue a server certificate; return ``(chain PEM = leaf + CA, key PEM)``.
        ``client_auth``: it may also authenticate a client (an edge node's certificate on
        the links between nodes, which both ends present).

        ``hostnames`` may include wildcards (``*.example.com``); ``ips`` are IPv4/IPv6 literals.
        """
        names = _normalize_hostnames(hostnames)
        addrs = _parse_ips(ips)
        if not names and not addrs:
            raise ConfigError("a server certificate needs at least one hostname or IP address")
        if days < 1:
            raise ConfigError("certificate validity must be at least one day")
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        not_after = min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        # CN is legacy (clients match SANs) and limited to 64 characters; it is for humans.
        cn = names[0] if names and len(names[0]) <= 64 else "relay edge"
        san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        san += [x509.IPAddress(a) for a in addrs]
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        if client_auth:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
            )
            .sign(self.key, hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem
        return chain, _key_pem(key)


def edge_certificate(data_dir: Path, hostnames: list[str], ips: list[str]) -> tuple[Path, Path]:
    """Return ``(cert_path, key_path)`` of the agent-link certificate, issuing it if needed.

    Re-issued when missing, expiring within 30 days, for different hostnames/IPs, not signed by
    the current CA, or not matching its key. A key file readable by group/other is refused, not
    replaced: that is an operator mistake worth seeing.
    """
    ca = LocalCA.load_or_create(data_dir)
    edge_dir = data_dir / "edge"
    edge_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = edge_dir / "cert.pem", edge_dir / "key.pem"
    want = (set(_normalize_hostnames(hostnames)), set(_parse_ips(ips)))
    if not _edge_cert_current(ca, cert_path, key_path, want):
        chain, key_pem = ca.issue_server_cert(hostnames, ips)
        # Key first: a crash between the two renames leaves a mismatched pair, which the check
        # above detects and repairs on the next start.
        write_file_atomic(key_path, key_pem, 0o600)
        write_file_atomic(cert_path, chain, 0o644)
    return cert_path, key_path


def _edge_cert_current(
    ca: LocalCA, cert_path: Path, key_path: Path, want: tuple[set[str], set[Address]]
) -> bool:
    if not cert_path.exists() or not key_path.exists():
        return False
    data = read_owner_only_file(key_path)  # bad permissions: DataDirError, not a silent re-issue
    try:
        key = _parse_private_key(data, key_path)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (DataDirError, ValueError):
        return False  # corrupt: the edge certificate is disposable, issue a new one
    if cert.public_key() != key.public_key():
        return False
    if cert.issuer != ca.cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < RENEW_BEFORE:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = (
        set(san.get_values_for_type(x509.DNSName)),
        set(san.get_values_for_type(x509.IPAddress)),
    )
    return have == want


def fingerprint_sha256(cert_pem: bytes) -> str:
    """``sha256:<lowercase hex>`` of the DER of the first certificate in ``cert_pem``."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def normalize_pin(pin: str) -> str:
    """Canonical 64-hex-digit form of a pin; :class:`ConfigError` if it isn't one.

    Accepts ``sha256:<hex>`` or bare hex, with or without colons, any case. Call it when the
    configuration is loaded so a typo is reported as such, not as a mismatch at connect time.
    """
    s = pin.strip().lower()
    if s.startswith("sha256:"):
        s = s[len("sha256:") :]
    s = s.replace(":", "")
    if _HEX64_RE.fullmatch(s) is None:
        raise ConfigError("certificate pin must be a SHA-256 fingerprint (64 hex digits)")
    return s


def cert_pem_fingerprint_matches(der: bytes, pin: str) -> bool:
    """Whether the DER certificate ``der`` (as from ``getpeercert(binary_form=True)``) has
    SHA-256 fingerprint ``pin``. A malformed pin raises :class:`ConfigError`."""
    return hmac.compare_digest(hashlib.sha256(der).hexdigest(), normalize_pin(pin))


# -- helpers -------------------------------------------------------------------------------


def _create_ca_dir(ca_dir: Path) -> None:
    """Write a new CA into a private temp dir, then rename it into place atomically."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed_ca(key)
    tmp = ca_dir.with_name(f".{ca_dir.name}.{secrets.token_hex(8)}.tmp")
    tmp.mkdir(mode=0o700)
    try:
        _write_file_new(tmp / "ca.key", _key_pem(key), 0o600)
        _write_file_new(tmp / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _fsync_dir(tmp)
        try:
            # rename(2) replaces only an *empty* directory; a populated one means a concurrent
            # start won the race (or the operator restored one), and we load that instead.
            os.rename(tmp, ca_dir)
        except OSError:
            if not (ca_dir / "ca.pem").exists():
                raise
        _fsync_dir(ca_dir.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _self_signed_ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"relay local CA {secrets.token_hex(4)}")]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(key, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _read_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read a key file, refusing one that group/other can access or that isn't P-256."""
    return _parse_private_key(read_owner_only_file(path), path)


def _parse_private_key(data: bytes, path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise DataDirError(f"key file {path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise DataDirError(f"key file {path} is not an ECDSA P-256 key")
    return key


def _write_file_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically; the new file has ``mode`` from its first byte."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write_file_new(tmp, data, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _normalize_hostnames(hostnames: list[str]) -> list[str]:
    out: list[str] = []
    for h in hostnames:
        n = h.strip().lower().rstrip(".")
        if len(n) > 253 or _HOSTNAME_RE.fullmatch(n) is None:
            raise ConfigError(f"invalid hostname for a certificate: {h!r}")
        if n not in out:
            out.append(n)
    return out


def _parse_ips(ips: list[str]) -> list[Address]:
    out: list[Address] = []
    for ip in ips:
        try:
            a = ipaddress.ip_address(ip.strip())
        except ValueError as exc:
            raise ConfigError(f"invalid IP address for a certificate: {ip!r}") from exc
        if a not in out:
            out.append(a)
    return out
