"""ACME end to end against pebble: real HTTP-01 and TLS-ALPN-01 validation on 127.0.0.1.

Pebble resolves the test names through a mock DNS (pebble-challtestsrv: every name is
127.0.0.1) and connects to the challenge servers this test runs, which answer from the
issuer exactly as the edge's HTTP and TLS fronts will. The issued chain is verified against
pebble's root, then served through the CertificateManager in a real TLS handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import verification as xv

from relay.certs.acme_issuer import AcmeIssuer, AcmeLimits, Challenge
from relay.certs.manager import CertificateManager
from relay.control.secrets import SecretBox
from relay.errors import AcmeChallengeFailed, AcmeUnavailable, UnsupportedIdentifier
from tests.e2e.pebble import (
    AcmeProxy,
    Pebble,
    needs_pebble,
    server_port,
    start_http01_server,
    start_tls_alpn01_server,
)

pytestmark = [
    needs_pebble,
    pytest.mark.asyncio,
]


class _Holder:
    """Lets the challenge servers start before the issuer exists (pebble needs their ports)."""

    def __init__(self) -> None:
        self.issuer: AcmeIssuer | None = None
        self.proxy: AcmeProxy | None = None
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
    tmp_path: Path,
    challenge: Challenge,
    *,
    serve_challenges: bool = True,
    limits: AcmeLimits | None = None,
) -> AsyncIterator[tuple[Pebble, AcmeIssuer, SecretBox, _Holder]]:
    """Pebble, challenge servers and an issuer; the issuer talks to pebble through an
    :class:`AcmeProxy` (``holder.proxy``) that counts the orders."""
    holder = _Holder()
    http = await start_http01_server(holder.http01 if serve_challenges else lambda _: None)
    tls = await start_tls_alpn01_server(holder.alpn)
    pebble = Pebble(
        tmp_path / "pebble",
        http_port=server_port(http),
        tls_port=server_port(tls),
        env={"PEBBLE_WFE_NONCEREJECT": "0"},  # orders are counted
    )
    box = SecretBox({"k1": os.urandom(32)}, "k1")
    proxy: AcmeProxy | None = None
    try:
        await asyncio.to_thread(pebble.start)
        proxy = holder.proxy = AcmeProxy(pebble)
        holder.issuer = AcmeIssuer(
            proxy.directory_url,
            "ops@relay.test",
            tmp_path / "data",
            box,
            ca_bundle=pebble.ca_bundle,
            challenge=challenge,
            order_timeout=30,
            limits=limits,
        )
        yield pebble, holder.issuer, box, holder
    except BaseException:
        print(pebble.output())
        raise
    finally:
        if proxy is not None:
            await asyncio.to_thread(proxy.stop)
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


async def test_published_limits_are_kept_on_this_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PEBBLE_VA_ALWAYS_VALID", raising=False)
    limits = AcmeLimits(orders=3, failed_validations=2)
    async with _acme_world(tmp_path, "http-01", serve_challenges=False, limits=limits) as (
        _,
        issuer,
        _,
        holder,
    ):
        assert holder.proxy is not None
        for _ in range(2):  # the name fails validation twice: its limit
            with pytest.raises(AcmeChallengeFailed):
                await asyncio.wait_for(issuer.issue(["nope.relay.test"]), timeout=60)
        later = issuer.not_before("nope.relay.test")
        assert later is not None and later > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=59)
        with pytest.raises(AcmeUnavailable, match="limits"):
            await issuer.issue(["nope.relay.test"])  # refused here: the CA never sees it
        assert len(holder.proxy.order_times()) == 2

        # Another name may still be ordered, until the account's order budget is spent.
        assert issuer.not_before("other.relay.test") is None
        with pytest.raises(AcmeChallengeFailed):
            await asyncio.wait_for(issuer.issue(["other.relay.test"]), timeout=60)
        assert issuer.not_before("third.relay.test") is not None  # 3 orders in 3 hours
        with pytest.raises(AcmeUnavailable, match="limits"):
            await issuer.issue(["third.relay.test"])
        assert len(holder.proxy.order_times()) == 3


async def test_wildcard_needs_dns01(tmp_path: Path) -> None:
    box = SecretBox({"k1": os.urandom(32)}, "k1")
    issuer = AcmeIssuer("https://127.0.0.1:1/dir", None, tmp_path, box)
    with pytest.raises(UnsupportedIdentifier, match="DNS-01"):
        await issuer.issue(["*.relay.test"])
