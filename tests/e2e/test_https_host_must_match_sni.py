"""On the TLS port the server name (SNI) chose the certificate and so the endpoint: every
request on that connection must name a Host of the same endpoint (a port suffix is fine),
else 421 Misdirected Request. A ``tls`` (passthrough) endpoint never gets traffic the edge
decrypted."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest

from tests.e2e.http_helpers import error_code, read_responses, read_until_closed, web_agent
from tests.e2e.origin import RecordingOrigin
from tests.e2e.procs import Agent, Edge


@pytest.fixture
def origins() -> Iterator[list[RecordingOrigin]]:
    started = [RecordingOrigin() for _ in range(3)]
    try:
        yield started
    finally:
        for server in started:
            server.close()


def _tls(edge: Edge, name: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(edge.ca_file))
    raw = socket.create_connection(("127.0.0.1", edge.https_port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=name)


def test_host_of_another_endpoint_than_the_sni_gets_421(
    edge: Edge, agents: list[Agent], origins: list[RecordingOrigin]
) -> None:
    one, two, passthrough = origins
    web_agent(edge, agents, str(one.port), "--subdomain", "one")
    web_agent(edge, agents, str(two.port), "--subdomain", "two")
    web_agent(edge, agents, str(passthrough.port), "--domain", "pt.relay.localhost", kind="tls")
    port = edge.https_port
    for host in (b"two.relay.localhost", b"two.relay.localhost:%d" % port, b"pt.relay.localhost"):
        with _tls(edge, "one.relay.localhost") as sock:
            sock.sendall(b"GET /stolen HTTP/1.1\r\nHost: %b\r\n\r\n" % host)
            answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 421 "), (host, answer[:200])
        assert error_code(answer) == "RLY_630"
    assert two.received() == b""
    assert passthrough.received() == b""  # never plaintext the edge decrypted
    # The SNI's own name, with or without the port, is served.
    with _tls(edge, "one.relay.localhost") as sock:
        sock.sendall(
            b"GET /a HTTP/1.1\r\nHost: one.relay.localhost:%d\r\n\r\n" % port
            + b"GET /b HTTP/1.1\r\nHost: one.relay.localhost\r\n\r\n"
        )
        assert [s for s, _ in read_responses(sock, 2)] == [200, 200]
    assert [r.target for r in one.requests] == [b"/a", b"/b"]
