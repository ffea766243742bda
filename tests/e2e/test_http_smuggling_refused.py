"""Requests whose framing or forwarding headers a client could use to desync the origin
are refused at the edge (400 with a code): nothing of them reaches the origin.

The origin is ``RecordingOrigin``: it parses what it receives with httptools, as a real
server would, and records every byte — so a smuggled second request shows up as one.
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

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: other.example\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"


@pytest.fixture
def recording() -> Iterator[RecordingOrigin]:
    server = RecordingOrigin()
    try:
        yield server
    finally:
        server.close()


def _host(edge: Edge, agent: Agent) -> bytes:
    return f"{host_of(agent)}:{edge.http_port}".encode()


def _send(edge: Edge, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


@pytest.mark.parametrize(
    "nominated",
    [
        b"content-length",
        b"Transfer-Encoding",
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
    ],
)
def test_connection_naming_a_framing_or_forwarding_header_is_refused(
    edge: Edge, agents: list[Agent], recording: RecordingOrigin, nominated: bytes
) -> None:
    agent = web_agent(edge, agents, str(recording.port), "--no-https")
    host = _host(edge, agent)
    if nominated.lower() == b"transfer-encoding":
        body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
        framing = b"Transfer-Encoding: chunked\r\n"
    else:
        body = SMUGGLED
        framing = b"Content-Length: %d\r\n" % len(body)
    request = (
        b"POST /upload HTTP/1.1\r\nHost: %b\r\nConnection: keep-alive, %b\r\n%b"
        b"X-Forwarded-For: 1.1.1.1\r\n\r\n%b" % (host, nominated, framing, body)
    )
    answer = _send(edge, request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert error_code(answer) == "RLY_627"
    assert recording.received() == b""
    assert recording.requests == []


def test_refused_after_an_earlier_request_only_that_request_reached_the_origin(
    edge: Edge, agents: list[Agent], recording: RecordingOrigin
) -> None:
    agent = web_agent(edge, agents, str(recording.port), "--no-https")
    host = _host(edge, agent)
    first = b"GET /first HTTP/1.1\r\nHost: %b\r\n\r\n" % host
    bad = (
        b"POST /upload HTTP/1.1\r\nHost: %b\r\nConnection: content-length\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (host, len(SMUGGLED), SMUGGLED)
    )
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
        sock.sendall(first)
        assert read_responses(sock, 1) == [(200, b"seen 1 /first")]
        sock.sendall(bad)
        rest = read_until_closed(sock)
    assert b"smuggled" not in rest
    assert [r.target for r in recording.requests] == [b"/first"]
    assert b"smuggled" not in recording.received()


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nContent-Length: 77\r\n",
        b"Content-Length: 5, 77\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding: identity\r\n",
    ],
)
def test_conflicting_body_framing_is_refused(
    edge: Edge, agents: list[Agent], recording: RecordingOrigin, framing: bytes
) -> None:
    agent = web_agent(edge, agents, str(recording.port), "--no-https")
    request = b"POST /upload HTTP/1.1\r\nHost: %b\r\n%b\r\n0\r\n\r\n%b" % (
        _host(edge, agent),
        framing,
        SMUGGLED,
    )
    answer = _send(edge, request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert error_code(answer) in ("RLY_620", "RLY_627")
    assert recording.received() == b""


def test_transfer_encoding_on_http_1_0_is_refused(
    edge: Edge, agents: list[Agent], recording: RecordingOrigin
) -> None:
    # RFC 9112 §6.1: an HTTP/1.0 recipient may not know chunked; it would read the chunk
    # framing as the body's end and the rest as a request of its own.
    agent = web_agent(edge, agents, str(recording.port), "--no-https")
    body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    request = b"POST /upload HTTP/1.0\r\nHost: %b\r\nTransfer-Encoding: chunked\r\n\r\n%b" % (
        _host(edge, agent),
        body,
    )
    answer = _send(edge, request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert error_code(answer) == "RLY_627"
    assert recording.received() == b""


def test_body_reaches_the_origin_as_one_request_with_its_framing(
    edge: Edge, agents: list[Agent], recording: RecordingOrigin
) -> None:
    # The legitimate twin of the refused requests: the same body, forwarded as a body.
    agent = web_agent(edge, agents, str(recording.port), "--no-https")
    host = _host(edge, agent)
    chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
        sock.sendall(
            b"POST /a HTTP/1.1\r\nHost: %b\r\nContent-Length: %d\r\n\r\n%b"
            % (host, len(SMUGGLED), SMUGGLED)
            + b"POST /b HTTP/1.1\r\nHost: %b\r\nTransfer-Encoding: chunked\r\n\r\n%b"
            % (host, chunked)
        )
        assert [s for s, _ in read_responses(sock, 2)] == [200, 200]
    assert [(r.target, r.body) for r in recording.requests] == [
        (b"/a", SMUGGLED),
        (b"/b", SMUGGLED),
    ]


def test_every_x_forwarded_for_is_kept_in_order_then_the_visitor(
    edge: Edge, agents: list[Agent], recording: RecordingOrigin
) -> None:
    agent = web_agent(edge, agents, str(recording.port), "--no-https")
    request = (
        b"GET /xff HTTP/1.1\r\nHost: %b\r\nX-Forwarded-For: 10.0.0.1\r\n"
        b"x-forwarded-for: 10.0.0.2, 10.0.0.3\r\n\r\n" % _host(edge, agent)
    )
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
        sock.sendall(request)
        assert read_responses(sock, 1)[0][0] == 200
    (seen,) = recording.requests
    assert seen.values(b"x-forwarded-for") == [b"10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]
