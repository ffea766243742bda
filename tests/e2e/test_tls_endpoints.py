"""The edge's TLS port with real clients: https (terminated, a certificate per SNI from the
edge's CA) and tls (passthrough: the edge peeks the SNI and never holds the upstream's key).

openssl s_client, curl and Python's ssl module connect to 127.0.0.1 only; the passthrough
upstream is a Python TLS echo server (its own self-signed certificate) in a thread.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.e2e.http_helpers import curl, host_of, web_agent
from tests.e2e.origin import Origin
from tests.e2e.procs import Agent, EchoServer, Edge

PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.S)
PASS_NAME = "pass.relay.localhost"
UPSTREAM_ORG = "Relay Passthrough Upstream Test"


def s_client(port: int, name: str, *extra: str, timeout: float = 20) -> tuple[int, str]:
    """``openssl s_client`` against 127.0.0.1:``port`` with SNI ``name``; (rc, stdout+stderr)."""
    proc = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            name,
            *extra,
        ],
        input=b"",
        capture_output=True,
        timeout=timeout,
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace")


def leaf_of(output: str) -> x509.Certificate:
    blocks = PEM_RE.findall(output.encode())
    assert blocks, output
    return x509.load_pem_x509_certificate(blocks[0])


def dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.DNSName))


# --- https: terminated at the edge --------------------------------------------------------


def test_https_leaf_per_sni_verifies_against_the_edge_ca(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    one = web_agent(edge, agents, str(origin.port), "--subdomain", "one")
    two = web_agent(edge, agents, str(origin.port), "--subdomain", "two")
    assert one.url == f"https://one.relay.localhost:{edge.https_port}"
    assert two.url == f"https://two.relay.localhost:{edge.https_port}"
    leaves = {}
    for name in ("one.relay.localhost", "two.relay.localhost"):
        rc, out = s_client(
            edge.https_port, name, "-CAfile", str(edge.ca_file), "-verify_hostname", name
        )
        assert rc == 0, out
        assert "Verify return code: 0 (ok)" in out, out
        leaf = leaf_of(out)
        assert dns_names(leaf) == [name]
        leaves[name] = leaf
    # Two names on one port, two certificates (not one with both names).
    a, b = leaves.values()
    assert a.fingerprint(hashes.SHA256()) != b.fingerprint(hashes.SHA256())
    # Both chain to the edge's CA (checked here too, independently of openssl).
    ca = x509.load_pem_x509_certificate(edge.ca_file.read_bytes())
    for leaf in leaves.values():
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
    # And the pages are served: each name reaches its endpoint.
    for agent in (one, two):
        got = curl(agent.url + "/hello", edge=edge)
        assert got.returncode == 0, got.stderr.decode()
        assert got.stdout == b"origin ok /hello"


def test_https_unknown_name_outside_the_base_domain_gets_an_unrecognized_name_alert(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    """(A name under the base domain gets the 404 page instead: test_https_unknown_name_page.)"""
    web_agent(edge, agents, str(origin.port), "--subdomain", "known")
    rc, out = s_client(edge.https_port, "nobody.example.org", "-CAfile", str(edge.ca_file))
    assert rc != 0
    assert "alert number 112" in out or "unrecognized name" in out, out
    assert "BEGIN CERTIFICATE" not in out
    # Python's client sees the same alert by name.
    ctx = ssl.create_default_context(cafile=str(edge.ca_file))
    with (
        socket.create_connection(("127.0.0.1", edge.https_port), timeout=10) as raw,
        pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"),
    ):
        ctx.wrap_socket(raw, server_hostname="nobody.example.org")


def test_https_keep_alive_reuses_the_connection(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    agent = web_agent(edge, agents, str(origin.port), "--subdomain", "keep")
    # curl() puts its URL argument last: /first is fetched first, then /second.
    result = curl(agent.url + "/second", "-v", agent.url + "/first", edge=edge)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"origin ok /firstorigin ok /second"
    assert b"Re-using existing connection" in result.stderr
    assert result.stderr.count(b"SSL connection using") == 1


def test_https_upload_of_random_bytes_matches_by_hash(
    edge: Edge, origin: Origin, agents: list[Agent], tmp_path: Path
) -> None:
    agent = web_agent(edge, agents, str(origin.port), "--subdomain", "upload")
    data = os.urandom(8 * 1024 * 1024 + 17)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(data)
    sent = curl(agent.url + "/sink", "-X", "POST", "--data-binary", f"@{upload}", edge=edge)
    assert sent.returncode == 0, sent.stderr.decode()
    assert json.loads(sent.stdout) == {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


# --- tls: passthrough, end-to-end encryption ----------------------------------------------


class TlsEchoServer:
    """A TLS server on 127.0.0.1 with its own self-signed certificate; echoes every byte."""

    def __init__(self, workdir: Path, name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, UPSTREAM_ORG),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        self.cert_file = workdir / "upstream-cert.pem"
        self.key_file = workdir / "upstream-key.pem"
        self.cert_file.write_bytes(self.cert_pem)
        self.key_file.write_bytes(self.key_pem_pkcs8())
        self.key_file.chmod(0o600)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        self.echo = EchoServer(ssl_context=ctx)
        self.port = self.echo.port

    @property
    def handshakes(self) -> int:
        return self.echo.handshakes

    def key_pem_pkcs8(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def key_forms(self) -> dict[str, bytes]:
        """Every encoding of the private key a careless edge might have written."""
        forms = {}
        for enc_name, enc in (
            ("PEM", serialization.Encoding.PEM),
            ("DER", serialization.Encoding.DER),
        ):
            for fmt_name, fmt in (
                ("PKCS8", serialization.PrivateFormat.PKCS8),
                ("traditional", serialization.PrivateFormat.TraditionalOpenSSL),
            ):
                forms[f"{enc_name}/{fmt_name}"] = self.key.private_bytes(
                    enc, fmt, serialization.NoEncryption()
                )
        scalar = self.key.private_numbers().private_value.to_bytes(32, "big")
        forms["raw scalar"] = scalar
        return forms

    def close(self) -> None:
        self.echo.close()


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[TlsEchoServer]:
    server = TlsEchoServer(tmp_path / "upstream", PASS_NAME)
    try:
        yield server
    finally:
        server.close()


def tls_echo(
    port: int, upstream: TlsEchoServer, data: bytes, address: str = "127.0.0.1"
) -> tuple[bytes, bytes]:
    """Connect to the edge with the upstream's certificate as the only trust anchor, echo
    ``data`` in lock-step chunks; return (peer certificate DER, what came back)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system roots: only the upstream's cert
    ctx.load_verify_locations(cadata=upstream.cert_pem.decode())
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    back = bytearray()
    with (
        socket.create_connection((address, port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname=PASS_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        step = 64 * 1024
        view = memoryview(data)
        for i in range(0, len(view), step):
            chunk = view[i : i + step]
            tls.sendall(chunk)
            want = i + len(chunk)
            while len(back) < want:
                got = tls.recv(want - len(back))
                if not got:
                    raise ConnectionError(f"closed after {len(back)} bytes")
                back += got
    return der, bytes(back)


def test_tls_passthrough_end_to_end_and_the_edge_never_holds_the_key(
    edge: Edge, agents: list[Agent], tls_upstream: TlsEchoServer
) -> None:
    agent = web_agent(edge, agents, str(tls_upstream.port), "--domain", PASS_NAME, kind="tls")
    assert host_of(agent) == PASS_NAME
    assert agent.remote_port == edge.https_port

    data = os.urandom(5 * 1024 * 1024)
    der, back = tls_echo(edge.https_port, tls_upstream, data)
    # The client saw exactly the upstream's certificate, not one of the edge's.
    assert hashlib.sha256(der).digest() == hashlib.sha256(tls_upstream.cert_der).digest()
    assert len(back) == len(data)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    assert tls_upstream.handshakes >= 1

    # openssl sees the upstream's subject too (and it verifies against that certificate).
    rc, out = s_client(
        edge.https_port,
        PASS_NAME,
        "-CAfile",
        str(tls_upstream.cert_file),
        "-verify_hostname",
        PASS_NAME,
    )
    assert rc == 0, out
    assert UPSTREAM_ORG in out, out
    assert "Verify return code: 0 (ok)" in out, out
    assert leaf_of(out) == tls_upstream.cert

    # The edge never held the key: no file in its data dir contains it in any encoding,
    # and the certificate manager has no entry for the passthrough name.
    forms = tls_upstream.key_forms()
    files = [p for p in edge.data_dir.rglob("*") if p.is_file()]
    assert files  # the walk really looked somewhere
    for path in files:
        content = path.read_bytes()
        for form, blob in forms.items():
            assert blob not in content, f"{path} contains the upstream key ({form})"
    certs_dir = edge.data_dir / "certs"
    if certs_dir.exists():
        assert not [p for p in certs_dir.iterdir() if p.name.startswith(PASS_NAME + ".")]
