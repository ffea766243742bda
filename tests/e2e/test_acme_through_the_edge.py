"""ACME through a real edge: pebble validates against the edge's own HTTP and TLS ports.

Pebble (with its mock DNS: every name is 127.0.0.1) is told the edge's ``--http-listen`` and
``--https-listen`` ports as its ``httpPort``/``tlsPort``, so HTTP-01 is answered by the edge's
HTTP front and TLS-ALPN-01 by its TLS front. Once the certificate is issued, curl with pebble's
root as its only CA gets the origin's answer over HTTPS. Everything on 127.0.0.1; every
process is stopped by PID.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.e2e.http_helpers import curl, web_agent
from tests.e2e.origin import Origin
from tests.e2e.pebble import Pebble, needs_pebble
from tests.e2e.procs import Agent, Edge

pytestmark = [
    needs_pebble,
    pytest.mark.slow,
]

ISSUE_TIMEOUT = 90.0


def fetch_leaf(port: int, name: str, root_pem: bytes) -> x509.Certificate:
    """One TLS handshake with pebble's root as the only trust anchor; the verified leaf."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=root_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def wait_for_certificate(
    edge: Edge, pebble: Pebble, name: str, root_pem: bytes
) -> x509.Certificate:
    """Poll the edge's TLS port until it serves a certificate pebble's root verifies."""
    deadline = time.monotonic() + ISSUE_TIMEOUT
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            return fetch_leaf(edge.https_port, name, root_pem)
        except (OSError, ssl.SSLError) as exc:  # alert until issued, then verified
            last = exc
            time.sleep(0.5)
    assert edge.proc is not None
    raise AssertionError(
        f"no verified certificate for {name} within {ISSUE_TIMEOUT}s (last: {last!r})\n"
        f"--- edge ---\n{edge.proc.text()}\n--- pebble ---\n{pebble.output()}"
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_edge_gets_an_acme_certificate_and_serves_https_with_it(
    tmp_path: Path,
    origin: Origin,
    agents: list[Agent],
    challenge: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PEBBLE_VA_ALWAYS_VALID", raising=False)
    name = f"app-{challenge.replace('-', '')}.relay.test"
    edge = Edge(tmp_path / "edge")  # ports chosen now, so pebble can be told them
    pebble = Pebble(tmp_path / "pebble", http_port=edge.http_port, tls_port=edge.https_port)
    with pebble:
        edge.extra = [
            "--base-domain",
            "relay.test",
            "--cert-issuer",
            "acme",
            "--acme-directory",
            pebble.directory_url,
            "--acme-ca-bundle",
            str(pebble.ca_bundle),
            "--acme-email",
            "ops@relay.test",
            "--acme-challenge",
            challenge,
        ]
        try:
            edge.start()
            agent = web_agent(edge, agents, str(origin.port), "--domain", name)
            assert agent.url == f"https://{name}:{edge.https_port}"
            root_pem = pebble.root_pem()
            root_file = tmp_path / "pebble-root.pem"
            root_file.write_bytes(root_pem)

            leaf = wait_for_certificate(edge, pebble, name, root_pem)
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.DNSName) == [name]
            # Issued by pebble, not by the edge's local CA.
            local_ca = x509.load_pem_x509_certificate(edge.ca_file.read_bytes())
            assert leaf.issuer != local_ca.subject

            got = curl(f"https://{name}:{edge.https_port}/acme", "--cacert", str(root_file))
            assert got.returncode == 0, got.stderr.decode()
            assert got.stdout == b"origin ok /acme"

            # Pebble really validated (no PEBBLE_VA_ALWAYS_VALID), through the edge's front
            # for this challenge: HTTP-01 on the edge's --http-listen port.
            log = pebble.output()
            assert "set VALID by completed challenge" in log, log
            via_http = f"validate w/ HTTP: http://{name}:{edge.http_port}/.well-known/"
            assert (via_http in log) == (challenge == "http-01"), log
        except BaseException:
            print(pebble.output())
            raise
        finally:
            for started in agents:
                started.stop()
            edge.stop()
