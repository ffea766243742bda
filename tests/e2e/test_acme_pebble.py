"""ACME end to end against pebble: real HTTP-01 and TLS-ALPN-01 validation on 127.0.0.1.

Pebble resolves the test names through a mock DNS (pebble-challtestsrv: every name is
127.0.0.1) and connects to the challenge servers this test runs, which answer from the
issuer exactly as the edge's HTTP and TLS fronts will. The issued chain is verified against
pebble's root, then served through the CertificateManager in a real TLS handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import verification as xv

from relay.certs.acme_issuer import AcmeIssuer, Challenge
from relay.certs.manager import CertificateManager
from relay.control.secrets import SecretBox
from relay.errors import AcmeChallengeFailed, UnsupportedIdentifier
from tests.e2e.pebble import (
    CHALLTESTSRV,
    PEBBLE,
    Pebble,
    server_port,
    start_http01_server,
    start_tls_alpn01_server,
)

pytestmark = [
    pytest.mark.skipif(
        not PEBBLE.exists() or not CHALLTESTSRV.exists(),
        reason="pebble not installed (apt-get install -y pebble)",
    ),
    pytest.mark.asyncio,
]


class _Holder:
    """Lets the challenge servers start before the issuer exists (pebble needs their ports)."""

    def __init__(self) -> None:
        self.issuer: AcmeIssuer | None = None
        self.answered: list[str] = []  # what the validator asked for and got

    def http01(self, token: str) -> bytes | None:
        body = self.issuer.http01_response(token) if self.issuer else None
        if body is not None:
            self.answered.append(f"http-01 {token}")
        return body

    def alpn(self, name: str) -> tuple[bytes, bytes] | None:
        pair = self.issuer.tls_alpn01_certificate(name) if self.issuer else None
        if pair is not None:
            self.answered.append(f"tls-alpn-01 {name}")
        return pair


@asynccontextmanager
async def _acme_world(
    tmp_path: Path, challenge: Challenge, *, serve_challenges: bool = True
) -> AsyncIterator[tuple[Pebble, AcmeIssuer, SecretBox, _Holder]]:
    holder = _Holder()
    http = await start_http01_server(holder.http01 if serve_challenges else lambda _: None)
    tls = await start_tls_alpn01_server(holder.alpn)
    pebble = Pebble(tmp_path / "pebble", http_port=server_port(http), tls_port=server_port(tls))
    box = SecretBox({"k1": os.urandom(32)}, "k1")
    try:
        await asyncio.to_thread(pebble.start)
        holder.issuer = AcmeIssuer(
            pebble.directory_url,
            "ops@relay.test",
            tmp_path / "data",
            box,
            ca_bundle=pebble.ca_bundle,
            challenge=challenge,
            order_timeout=30,
        )
        yield pebble, holder.issuer, box, holder
    except BaseException:
        print(pebble.output())
        raise
    finally:
        await asyncio.to_thread(pebble.stop)
        for server in (http, tls):
            server.close()
            await server.wait_closed()


async def _handshake(ctx: ssl.SSLContext, root_pem: bytes, name: str) -> x509.Certificate:
    """Serve ``ctx`` on 127.0.0.1 and connect with a client that trusts only ``root_pem``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        client = ssl.create_default_context(cadata=root_pem.decode())
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", server_port(server), ssl=client, server_hostname=name
            ),
            timeout=10,
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return x509.load_der_x509_certificate(der)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
async def test_issue_via_challenge_and_serve(
    tmp_path: Path, challenge: Challenge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PEBBLE_VA_ALWAYS_VALID", raising=False)
    name = f"{challenge.replace('-', '')}.relay.test"
    async with _acme_world(tmp_path, challenge) as (pebble, issuer, box, holder):
        manager = CertificateManager(tmp_path / "data", issuer, box)
        await asyncio.wait_for(manager.ensure(name), timeout=90)
        root_pem = await asyncio.to_thread(pebble.root_pem)

        chain = x509.load_pem_x509_certificates(manager.chain_pem(name) or b"")
        leaf, intermediates = chain[0], chain[1:]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [name]
        root = x509.load_pem_x509_certificate(root_pem)
        verifier = (
            xv.PolicyBuilder().store(xv.Store([root])).build_server_verifier(x509.DNSName(name))
        )
        verified = verifier.verify(leaf, intermediates)
        assert verified[-1] == root

        ctx = manager.context_for(name)
        assert ctx is not None
        served = await _handshake(ctx, root_pem, name)
        assert served == leaf

        # Pebble really validated through our responder (several vantage points may ask).
        assert holder.answered
        assert all(a.startswith(challenge) for a in holder.answered)
        if challenge == "tls-alpn-01":
            assert f"tls-alpn-01 {name}" in holder.answered
        # Nothing pending stays published; no plaintext private key anywhere in the data dir.
        assert issuer.tls_alpn01_certificate(name) is None
        for path in (tmp_path / "data").rglob("*"):
            if path.is_file():
                assert b"PRIVATE KEY" not in path.read_bytes(), path

        # A second manager (a restart) serves the stored certificate without a new order.
        again = CertificateManager(tmp_path / "data", issuer, box)
        assert again.chain_pem(name) == manager.chain_pem(name)


async def test_failed_validation_is_a_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PEBBLE_VA_ALWAYS_VALID", raising=False)
    async with _acme_world(tmp_path, "http-01", serve_challenges=False) as (_, issuer, _, _):
        with pytest.raises(AcmeChallengeFailed) as exc_info:
            await asyncio.wait_for(issuer.issue(["nope.relay.test"]), timeout=60)
        assert exc_info.value.code == "RLY_804"
        assert "nope.relay.test" in str(exc_info.value)


async def test_wildcard_needs_dns01(tmp_path: Path) -> None:
    box = SecretBox({"k1": os.urandom(32)}, "k1")
    issuer = AcmeIssuer("https://127.0.0.1:1/dir", None, tmp_path, box)
    with pytest.raises(UnsupportedIdentifier, match="DNS-01"):
        await issuer.issue(["*.relay.test"])
