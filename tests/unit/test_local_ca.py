"""Local CA: creation and reload, issued leaves verify, real TLS handshakes, pinning, files."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.certs.local_ca import (
    LocalCA,
    cert_pem_fingerprint_matches,
    edge_certificate,
    fingerprint_sha256,
    normalize_pin,
)
from relay.errors import ConfigError, DataDirError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _chain(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA.load_or_create(tmp_path)


# -- the CA itself -----------------------------------------------------------------------


def test_ca_is_created_with_the_documented_profile(tmp_path: Path, ca: LocalCA) -> None:
    assert ca.ca_pem_path == tmp_path / "ca" / "ca.pem"
    cert = x509.load_pem_x509_certificate(ca.ca_pem_path.read_bytes())
    (cn,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert isinstance(cn.value, str)
    prefix, _, suffix = cn.value.rpartition(" ")
    assert prefix == "relay local CA" and len(suffix) == 8 and int(suffix, 16) >= 0
    assert cert.issuer == cert.subject

    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature

    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and isinstance(pub.curve, ec.SECP256R1)
    cert.verify_directly_issued_by(cert)  # self-signed signature checks out

    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)


def test_ca_files_have_private_permissions(tmp_path: Path, ca: LocalCA) -> None:
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600
    assert _mode(tmp_path / "ca") == 0o700
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.key", "ca.pem"]
    assert [p.name for p in tmp_path.iterdir()] == ["ca"]  # no temp dirs left behind


def test_key_is_private_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        LocalCA.load_or_create(tmp_path)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600


def test_second_start_loads_the_same_ca(tmp_path: Path, ca: LocalCA) -> None:
    again = LocalCA.load_or_create(tmp_path)
    assert again.cert == ca.cert
    assert fingerprint_sha256(again.cert_pem) == fingerprint_sha256(ca.cert_pem)


def test_different_data_dirs_get_different_cas(tmp_path: Path) -> None:
    a = LocalCA.load_or_create(tmp_path / "a")
    b = LocalCA.load_or_create(tmp_path / "b")
    assert a.cert.subject != b.cert.subject


def test_concurrent_first_start_agrees_on_one_ca(tmp_path: Path) -> None:
    results: list[LocalCA] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def run() -> None:
        barrier.wait()
        try:
            results.append(LocalCA.load_or_create(tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.cert.fingerprint(hashes.SHA256()) for r in results}) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ca"]


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604])
def test_ca_key_readable_by_others_is_refused(tmp_path: Path, ca: LocalCA, mode: int) -> None:
    os.chmod(tmp_path / "ca" / "ca.key", mode)
    with pytest.raises(DataDirError, match="0600"):
        LocalCA.load_or_create(tmp_path)


@pytest.mark.parametrize("missing", ["ca.pem", "ca.key"])
def test_half_a_ca_is_refused_not_replaced(tmp_path: Path, ca: LocalCA, missing: str) -> None:
    (tmp_path / "ca" / missing).unlink()
    with pytest.raises(DataDirError, match="only one of"):
        LocalCA.load_or_create(tmp_path)
    assert not (tmp_path / "ca" / missing).exists()


def test_mismatched_ca_key_is_refused(tmp_path: Path, ca: LocalCA) -> None:
    other = LocalCA.load_or_create(tmp_path / "other")
    (tmp_path / "ca" / "ca.key").write_bytes((tmp_path / "other" / "ca" / "ca.key").read_bytes())
    assert other.cert != ca.cert
    with pytest.raises(DataDirError, match="do not belong together"):
        LocalCA.load_or_create(tmp_path)


def test_corrupt_ca_files_are_refused(tmp_path: Path, ca: LocalCA) -> None:
    (tmp_path / "ca" / "ca.pem").write_bytes(b"not a cert")
    with pytest.raises(DataDirError):
        LocalCA.load_or_create(tmp_path)


# -- issued leaves -----------------------------------------------------------------------


def test_issued_leaf_has_the_documented_profile(ca: LocalCA) -> None:
    chain_pem, key_pem = ca.issue_server_cert(
        ["localhost", "edge.example.com"], ["127.0.0.1", "::1"]
    )
    leaf, ca_cert = _chain(chain_pem)
    assert ca_cert == ca.cert
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert leaf.public_key() == key.public_key()

    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "edge.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())

    lifetime = leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=89) < lifetime <= dt.timedelta(days=90)


def _verifier(ca: LocalCA, subject: x509.verification.Subject) -> xv.ServerVerifier:
    return xv.PolicyBuilder().store(xv.Store([ca.cert])).build_server_verifier(subject)


def test_issued_leaf_verifies_against_the_ca(ca: LocalCA) -> None:
    chain_pem, _ = ca.issue_server_cert(["localhost"], ["127.0.0.1"])
    leaf = _chain(chain_pem)[0]
    for subject in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        path = _verifier(ca, subject).verify(leaf, [])
        assert path[-1] == ca.cert


def test_issued_leaf_does_not_verify_for_other_names_or_cas(tmp_path: Path, ca: LocalCA) -> None:
    chain_pem, _ = ca.issue_server_cert(["localhost"], [])
    leaf = _chain(chain_pem)[0]
    with pytest.raises(xv.VerificationError):
        _verifier(ca, x509.DNSName("example.com")).verify(leaf, [])
    other = LocalCA.load_or_create(tmp_path / "other")
    with pytest.raises(xv.VerificationError):
        _verifier(other, x509.DNSName("localhost")).verify(leaf, [])


def test_wildcard_hostnames_are_issued(ca: LocalCA) -> None:
    chain_pem, _ = ca.issue_server_cert(["*.tunnels.example.com"], [])
    leaf = _chain(chain_pem)[0]
    _verifier(ca, x509.DNSName("abc.tunnels.example.com")).verify(leaf, [])


def test_leaf_never_outlives_the_ca(ca: LocalCA) -> None:
    chain_pem, _ = ca.issue_server_cert(["localhost"], [], days=100_000)
    assert _chain(chain_pem)[0].not_valid_after_utc <= ca.cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("hostnames", "ips"),
    [
        ([], []),
        (["bad host"], []),
        (["-leading.example.com"], []),
        (["a.*.example.com"], []),
        (["a" * 64 + ".com"], []),
        ([], ["999.1.1.1"]),
        ([], ["localhost"]),
    ],
)
def test_bad_names_are_config_errors(ca: LocalCA, hostnames: list[str], ips: list[str]) -> None:
    with pytest.raises(ConfigError):
        ca.issue_server_cert(hostnames, ips)


def test_zero_day_validity_is_refused(ca: LocalCA) -> None:
    with pytest.raises(ConfigError):
        ca.issue_server_cert(["localhost"], [], days=0)


# -- real TLS ----------------------------------------------------------------------------


@contextmanager
def tls_server(cert_path: Path, key_path: Path) -> Iterator[tuple[int, list[BaseException]]]:
    """Serve TLS on 127.0.0.1 for one connection at a time; yield (port, server errors)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if stop.is_set():  # the wake-up connection from teardown
                conn.close()
                return
            with conn:
                conn.settimeout(10)
                try:
                    with ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"hello from edge")
                except (ssl.SSLError, OSError) as exc:
                    errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], errors
    finally:
        stop.set()
        # Wake accept() with a throwaway connection, then close.
        with socket.create_connection(("127.0.0.1", listener.getsockname()[1]), timeout=5):
            pass
        thread.join(10)
        listener.close()


def _connect(port: int, ctx: ssl.SSLContext, server_hostname: str) -> tuple[bytes, bytes]:
    """Return (received bytes, peer certificate DER)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        data = b""
        while chunk := tls.recv(1024):
            data += chunk
        return data, der


def _client_ctx(ca_pem: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname + CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=ca_pem)  # only our CA, no system store
    return ctx


def test_tls_handshake_with_only_the_ca_file(tmp_path: Path) -> None:
    cert_path, key_path = edge_certificate(tmp_path, ["localhost"], ["127.0.0.1"])
    ca = LocalCA.load_or_create(tmp_path)
    ctx = _client_ctx(ca.ca_pem_path)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    with tls_server(cert_path, key_path) as (port, errors):
        assert _connect(port, ctx, "localhost")[0] == b"hello from edge"
        assert _connect(port, ctx, "127.0.0.1")[0] == b"hello from edge"
    assert errors == []


def test_tls_handshake_fails_for_wrong_name_or_other_ca(tmp_path: Path) -> None:
    cert_path, key_path = edge_certificate(tmp_path, ["localhost"], [])
    other = LocalCA.load_or_create(tmp_path / "other")
    with tls_server(cert_path, key_path) as (port, _errors):
        good = _client_ctx(LocalCA.load_or_create(tmp_path).ca_pem_path)
        with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname"):
            _connect(port, good, "edge.example.com")
        with pytest.raises(ssl.SSLCertVerificationError):
            _connect(port, _client_ctx(other.ca_pem_path), "localhost")


def test_pinned_fingerprint_matches_the_live_certificate(tmp_path: Path) -> None:
    cert_path, key_path = edge_certificate(tmp_path, ["localhost"], [])
    pin = fingerprint_sha256(cert_path.read_bytes())
    assert pin.startswith("sha256:") and len(pin) == 7 + 64 and pin == pin.lower()

    # A pinning client trusts no CA: it checks the fingerprint of whatever it is shown.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with tls_server(cert_path, key_path) as (port, _errors):
        _, der = _connect(port, ctx, "localhost")

    hexpin = pin.removeprefix("sha256:")
    colons = ":".join(hexpin[i : i + 2] for i in range(0, 64, 2))
    for form in (
        pin,
        hexpin,
        hexpin.upper(),
        colons,
        colons.upper(),
        "SHA256:" + hexpin,
        f" {pin} ",
    ):
        assert cert_pem_fingerprint_matches(der, form), form

    other_cert, _ = edge_certificate(tmp_path / "other", ["localhost"], [])
    assert not cert_pem_fingerprint_matches(der, fingerprint_sha256(other_cert.read_bytes()))
    flipped = hexpin[:-1] + ("0" if hexpin[-1] != "0" else "1")
    assert not cert_pem_fingerprint_matches(der, flipped)


@pytest.mark.parametrize(
    "pin", ["", "sha256:", "abc", "sha1:" + "a" * 40, "g" * 64, "a" * 63, "a" * 65]
)
def test_malformed_pins_are_config_errors(pin: str) -> None:
    with pytest.raises(ConfigError):
        normalize_pin(pin)
    with pytest.raises(ConfigError):
        cert_pem_fingerprint_matches(b"der", pin)


# -- the edge certificate on disk --------------------------------------------------------


def test_edge_certificate_is_created_and_reused(tmp_path: Path) -> None:
    cert_path, key_path = edge_certificate(tmp_path, ["localhost"], ["127.0.0.1"])
    assert (cert_path, key_path) == (tmp_path / "edge" / "cert.pem", tmp_path / "edge" / "key.pem")
    assert _mode(key_path) == 0o600
    assert _mode(tmp_path / "edge") == 0o700
    first = cert_path.read_bytes()
    assert len(_chain(first)) == 2
    # Same request in another order and case: nothing is re-issued.
    edge_certificate(tmp_path, ["LOCALHOST"], ["127.0.0.1"])
    assert cert_path.read_bytes() == first
    assert sorted(p.name for p in (tmp_path / "edge").iterdir()) == ["cert.pem", "key.pem"]


def test_edge_certificate_reissued_when_names_change(tmp_path: Path) -> None:
    cert_path, _ = edge_certificate(tmp_path, ["localhost"], [])
    first = cert_path.read_bytes()
    edge_certificate(tmp_path, ["localhost", "edge.example.com"], [])
    second = cert_path.read_bytes()
    assert second != first
    san = _chain(second)[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost", "edge.example.com"]
    edge_certificate(tmp_path, ["localhost", "edge.example.com"], ["10.0.0.1"])
    assert cert_path.read_bytes() != second


def test_edge_certificate_reissued_when_expiring_soon(tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(tmp_path)
    cert_path, key_path = edge_certificate(tmp_path, ["localhost"], [])
    chain, key = ca.issue_server_cert(["localhost"], [], days=29)
    cert_path.write_bytes(chain)
    key_path.write_bytes(key)
    edge_certificate(tmp_path, ["localhost"], [])
    leaf = _chain(cert_path.read_bytes())[0]
    assert leaf.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=80)


def test_edge_certificate_reissued_when_ca_replaced(tmp_path: Path) -> None:
    cert_path, _ = edge_certificate(tmp_path, ["localhost"], [])
    for p in (tmp_path / "ca").iterdir():
        p.unlink()
    (tmp_path / "ca").rmdir()
    edge_certificate(tmp_path, ["localhost"], [])
    new_ca = LocalCA.load_or_create(tmp_path)
    leaf = _chain(cert_path.read_bytes())[0]
    leaf.verify_directly_issued_by(new_ca.cert)


def test_edge_certificate_repaired_when_pair_is_inconsistent(tmp_path: Path) -> None:
    cert_path, key_path = edge_certificate(tmp_path, ["localhost"], [])
    _, other_key = LocalCA.load_or_create(tmp_path).issue_server_cert(["localhost"], [])
    key_path.write_bytes(other_key)  # e.g. a crash between the two renames
    edge_certificate(tmp_path, ["localhost"], [])
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert _chain(cert_path.read_bytes())[0].public_key() == key.public_key()

    cert_path.write_bytes(b"garbage")
    edge_certificate(tmp_path, ["localhost"], [])
    assert len(_chain(cert_path.read_bytes())) == 2


def test_edge_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    _, key_path = edge_certificate(tmp_path, ["localhost"], [])
    os.chmod(key_path, 0o644)
    with pytest.raises(DataDirError, match="0600"):
        edge_certificate(tmp_path, ["localhost"], [])
