"""One request, one site: a request whose Host is missing, repeated, or contradicted by
an absolute-form target cannot be routed to one tunnel and read as another's by the
origin.

Absolute-form targets (``GET http://b.example/ HTTP/1.1``) are routed by the target's
authority, as RFC 9112 §3.2.2 tells an origin to read them, and forwarded in origin form
with ``Host`` set to that authority — tunnel and origin see the same site.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.e2e.http_helpers import (
    error_code,
    host_of,
    read_responses,
    read_until_closed,
    web_agent,
)
from tests.e2e.origin import RecordingOrigin
from tests.e2e.procs import Agent, Edge


@pytest.fixture
def origins() -> Iterator[list[RecordingOrigin]]:
    started = [RecordingOrigin(), RecordingOrigin()]
    try:
        yield started
    finally:
        for server in started:
            server.close()


def _send(edge: Edge, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def test_two_host_headers_are_refused(
    edge: Edge, agents: list[Agent], origins: list[RecordingOrigin]
) -> None:
    a = web_agent(edge, agents, str(origins[0].port), "--no-https")
    b = web_agent(edge, agents, str(origins[1].port), "--no-https")
    host_a = f"{host_of(a)}:{edge.http_port}".encode()
    host_b = f"{host_of(b)}:{edge.http_port}".encode()
    for second in (host_b, host_a):
        answer = _send(edge, b"GET / HTTP/1.1\r\nHost: %b\r\nHost: %b\r\n\r\n" % (host_a, second))
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert error_code(answer) == "RLY_628"
    assert origins[0].received() == b"" and origins[1].received() == b""


def test_http_1_1_request_without_host_is_refused(
    edge: Edge, agents: list[Agent], origins: list[RecordingOrigin]
) -> None:
    web_agent(edge, agents, str(origins[0].port), "--no-https")
    answer = _send(edge, b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert error_code(answer) == "RLY_628"
    assert origins[0].received() == b""


def test_absolute_form_target_is_routed_by_its_authority_and_host_agrees(
    edge: Edge, agents: list[Agent], origins: list[RecordingOrigin]
) -> None:
    a = web_agent(edge, agents, str(origins[0].port), "--no-https")
    b = web_agent(edge, agents, str(origins[1].port), "--no-https")
    host_a = f"{host_of(a)}:{edge.http_port}".encode()
    host_b = f"{host_of(b)}:{edge.http_port}".encode()
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
        sock.sendall(b"GET http://%b/path?q=1 HTTP/1.1\r\nHost: %b\r\n\r\n" % (host_b, host_a))
        assert read_responses(sock, 1)[0][0] == 200
        # The connection now serves b: a request for a is not sent to b's agent.
        sock.sendall(b"GET /for-a HTTP/1.1\r\nHost: %b\r\n\r\n" % host_a)
        read_until_closed(sock, timeout=5)
    assert origins[0].received() == b""
    (seen,) = origins[1].requests
    assert seen.target == b"/path?q=1"
    assert seen.values(b"host") == [host_b]
    assert seen.values(b"x-forwarded-host") == [host_b]
    assert b"/for-a" not in origins[1].received()


@pytest.mark.parametrize(
    "target",
    [b"http://user@%b/", b"ftp://%b/", b"http:///nohost", b"http://%b"],
    ids=["userinfo", "scheme", "empty-authority", "no-path"],
)
def test_unusable_absolute_form_targets_are_refused(
    edge: Edge, agents: list[Agent], origins: list[RecordingOrigin], target: bytes
) -> None:
    a = web_agent(edge, agents, str(origins[0].port), "--no-https")
    host_a = f"{host_of(a)}:{edge.http_port}".encode()
    if b"%b" in target:
        target = target.replace(b"%b", host_a)
    answer = _send(edge, b"GET %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (target, host_a))
    if target == b"http://" + host_a:
        # No path: the origin form is "/" (RFC 9112 §3.2.1); routed normally.
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert [r.target for r in origins[0].requests] == [b"/"]
        return
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert error_code(answer) == "RLY_628"
    assert origins[0].received() == b""
