"""HTTPS visitors of names the TLS port has no certificate for get a page where the edge can
present a certificate covering the name, and the ``unrecognized_name`` alert elsewhere.

* An unknown name under the base domain: the local CA's ``*.<base_domain>`` certificate (or the
  operator's certificate files, if they cover it), then 404 RLY_610. An ACME edge has no such
  wildcard: the alert.
* A bound https name whose certificate is not issued yet (ACME, the CA unreachable): the local
  CA's base-domain wildcard, then 503 RLY_615; outside the base domain the alert, and the edge
  logs once per name why.
* A name outside the base domain that nothing serves: the alert, whatever the issuer.

Python's ssl client with the right trust anchor plays the browser. Everything on 127.0.0.1;
every process is stopped by PID.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from relay.certs.local_ca import LocalCA
from tests.e2e.http_helpers import error_code, read_until_closed, web_agent
from tests.e2e.origin import Origin
from tests.e2e.pebble import acme_flags, wait_lines
from tests.e2e.procs import Agent, Edge, free_port


def https_get(port: int, name: str, ca_file: Path) -> tuple[bytes, x509.Certificate]:
    """GET / for ``name`` over TLS (SNI and Host ``name``), verified against ``ca_file``:
    the whole response and the certificate the edge presented."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nAccept: */*\r\n\r\n".encode())
        return read_until_closed(tls), x509.load_der_x509_certificate(der)


def sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def assert_alert(port: int, name: str, ca_file: Path) -> None:
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        https_get(port, name, ca_file)


@pytest.mark.timeout(60)
def test_an_unknown_name_under_the_base_domain_gets_the_404_page(
    tmp_path: Path, origin: Origin, agents: list[Agent]
) -> None:
    edge = Edge(tmp_path / "edge", extra=["--base-domain", "relay.test"]).start()
    try:
        response, cert = https_get(edge.https_port, "nobody.relay.test", edge.ca_file)
        assert status_of(response) == 404, response
        assert error_code(response) == "RLY_610"
        assert b"nobody.relay.test" in response
        assert sans(cert) == ["*.relay.test"]  # the local CA's base-domain wildcard

        # Names the wildcard does not cover, and names outside the base domain: the alert.
        assert_alert(edge.https_port, "a.b.relay.test", edge.ca_file)
        assert_alert(edge.https_port, "nobody.example.org", edge.ca_file)

        # A bound name still gets its own certificate and its origin.
        web_agent(edge, agents, str(origin.port), "--subdomain", "app")
        response, cert = https_get(edge.https_port, "app.relay.test", edge.ca_file)
        assert status_of(response) == 200 and response.endswith(b"origin ok /")
        assert sans(cert) == ["app.relay.test"]
    finally:
        for agent in agents:
            agent.stop()
        edge.stop()


@pytest.mark.timeout(60)
def test_operator_certificate_files_explain_the_names_they_cover(tmp_path: Path) -> None:
    operator_ca = LocalCA.load_or_create(tmp_path / "operator-ca")
    chain, key = operator_ca.issue_server_cert(["*.relay.test", "relay.test"], [])
    cert_file, key_file = tmp_path / "site.pem", tmp_path / "site.key"
    cert_file.write_bytes(chain)
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    config = tmp_path / "edge.yaml"
    config.write_text(
        yaml.safe_dump(
            {"cert_issuer": "files", "cert_file": str(cert_file), "key_file": str(key_file)}
        )
    )
    edge = Edge(
        tmp_path / "edge", extra=["--base-domain", "relay.test", "--config", str(config)]
    ).start()
    try:
        response, cert = https_get(edge.https_port, "nobody.relay.test", operator_ca.ca_pem_path)
        assert status_of(response) == 404 and error_code(response) == "RLY_610", response
        assert sans(cert) == ["*.relay.test", "relay.test"]
        assert_alert(edge.https_port, "nobody.example.org", operator_ca.ca_pem_path)
    finally:
        edge.stop()


@pytest.mark.timeout(90)
def test_a_name_waiting_for_its_certificate_gets_the_503_page(
    tmp_path: Path, origin: Origin, agents: list[Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_CERT_RETRY_BASE", "1")
    monkeypatch.setenv("RELAY_CERT_RETRY_MAX", "5")
    some_ca = LocalCA.load_or_create(tmp_path / "unused-ca")  # the CA never answers
    edge = Edge(tmp_path / "edge")
    edge.extra = acme_flags(f"https://127.0.0.1:{free_port()}/dir", some_ca.ca_pem_path)
    try:
        edge.start()
        assert edge.proc is not None
        web_agent(edge, agents, str(origin.port), "--subdomain", "waiting")
        # A custom domain is bound only by the account that reserved it (the token's).
        edge.reserve_domain("waiting.example.org")
        _, token = edge.token()
        custom = Agent(
            edge, token, str(origin.port), kind="http", extra=["--domain", "waiting.example.org"]
        )
        agents.append(custom)
        custom.wait_bound()
        for agent in (agents[0], custom):
            wait_lines(agent.proc, "not issued: error RLY_805", timeout=30)

        # Under the base domain: the local CA's wildcard, and why there is no page yet.
        response, cert = https_get(edge.https_port, "waiting.relay.test", edge.ca_file)
        assert status_of(response) == 503, response
        assert error_code(response) == "RLY_615"
        assert b"not issued yet" in response
        assert sans(cert) == ["*.relay.test"]

        # An ACME edge has no wildcard for names nobody bound: the alert.
        assert_alert(edge.https_port, "nobody.relay.test", edge.ca_file)

        # Outside the base domain no certificate covers it: the alert, logged once.
        for _ in range(2):
            assert_alert(edge.https_port, "waiting.example.org", edge.ca_file)
        why = "TLS visitors for waiting.example.org get an unrecognized_name alert"
        wait_lines(edge.proc, why, timeout=10)
        time.sleep(0.5)
        assert len(wait_lines(edge.proc, why)) == 1, edge.proc.text()
    finally:
        for agent in agents:
            agent.stop()
        edge.stop()
