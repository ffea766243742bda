"""An Upgrade request switches the visitor connection to raw bytes only once the origin
has answered ``101 Switching Protocols``. Until then the visitor's later bytes are held;
if the origin answers anything else they are parsed as HTTP requests again — rewritten
and checked like every other request. CONNECT is refused (405)."""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.http_helpers import (
    error_code,
    host_of,
    read_responses,
    read_until_closed,
    web_agent,
)
from tests.e2e.origin import RecordingOrigin
from tests.e2e.procs import Agent, Edge, payload


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def edge(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Edge]:
    """One process, and ``--workers 2``: there a visitor that lands on the worker not
    holding its agent is handed over by its head's bytes, unparsed (relay/_httpfront.pyx),
    and one that lands right is decided from them too; either way its Upgrade waits for
    the 101 alike."""
    server = Edge(tmp_path / "edge", workers=int(request.param)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def declining() -> Iterator[RecordingOrigin]:
    """An origin that ignores Upgrade: answers 200 and goes on speaking HTTP."""
    server = RecordingOrigin(upgrade_status=200)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def switching() -> Iterator[RecordingOrigin]:
    """An origin that answers 101 and then echoes raw bytes."""
    server = RecordingOrigin(upgrade_status=101)
    try:
        yield server
    finally:
        server.close()


def _host(edge: Edge, agent: Agent) -> bytes:
    return f"{host_of(agent)}:{edge.http_port}".encode()


def _upgrade(host: bytes, path: bytes = b"/ws") -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: %b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" % (
        path,
        host,
    )


def _spoofing(host: bytes, path: bytes = b"/next") -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: %b\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n" % (path, host)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = sock.recv(size - len(got))
        if not chunk:
            raise ConnectionError(f"closed after {len(got)} of {size} bytes")
        got += chunk
    return bytes(got)


def _read_head(sock: socket.socket) -> bytes:
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed inside a response head")
        head += chunk
        assert len(head) < 16384
    return bytes(head)


@pytest.mark.parametrize("pipelined", [False, True], ids=["after-response", "pipelined"])
def test_upgrade_answered_200_leaves_the_next_request_parsed_and_rewritten(
    edge: Edge, agents: list[Agent], declining: RecordingOrigin, pipelined: bool
) -> None:
    agent = web_agent(edge, agents, str(declining.port), "--no-https")
    host = _host(edge, agent)
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
        if pipelined:
            sock.sendall(_upgrade(host) + _spoofing(host))
            answers = read_responses(sock, 2)
        else:
            sock.sendall(_upgrade(host))
            answers = read_responses(sock, 1)
            sock.sendall(_spoofing(host))
            answers += read_responses(sock, 1)
        assert [status for status, _ in answers] == [200, 200]
        # A request for another site on this connection is still refused: never raw.
        sock.sendall(_spoofing(b"elsewhere.relay.localhost", b"/elsewhere"))
        read_until_closed(sock, timeout=5)
    targets = [r.target for r in declining.requests]
    assert targets == [b"/ws", b"/next"]
    follow = declining.requests[1]
    assert follow.values(b"x-forwarded-for") == [b"6.6.6.6, 127.0.0.1"]
    assert follow.values(b"x-forwarded-proto") == [b"http"]
    assert b"/elsewhere" not in declining.received()


@pytest.mark.parametrize("early", [False, True], ids=["after-101", "bytes-with-the-request"])
def test_upgrade_answered_101_carries_raw_bytes_both_ways(
    edge: Edge, agents: list[Agent], switching: RecordingOrigin, early: bool
) -> None:
    agent = web_agent(edge, agents, str(switching.port), "--no-https")
    host = _host(edge, agent)
    data = payload(21, 3_000_000)
    head_bytes = b"not an HTTP request\r\n\r\n" if early else b""
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=20) as sock:
        sock.sendall(_upgrade(host) + head_bytes)
        head = _read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert _recv_exactly(sock, len(head_bytes)) == head_bytes
        sock.sendall(data)
        echoed = _recv_exactly(sock, len(data))
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
    assert [r.target for r in switching.requests] == [b"/ws"]


def test_bytes_sent_after_an_upgrade_request_wait_for_its_101(
    edge: Edge, agents: list[Agent]
) -> None:
    """The visitor's next bytes arrive while the origin is still deciding. On two workers
    some of these visitors are handed over with the Upgrade's head: the worker that takes
    one reads the rest itself, and must hold it as it holds its own visitors' bytes (not
    parse it as a request: a 400)."""
    origin = RecordingOrigin(upgrade_status=101, answer_after=0.3)
    try:
        agent = web_agent(edge, agents, str(origin.port), "--no-https")
        host = _host(edge, agent)
        for visitor in range(6):  # on two workers, all six landing local: 1 in 64
            early = b"frame %d sent before the 101\r\n" % visitor
            with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
                sock.sendall(_upgrade(host))
                time.sleep(0.1)
                sock.sendall(early)
                head = _read_head(sock)
                assert head.startswith(b"HTTP/1.1 101 "), (visitor, head)
                assert _recv_exactly(sock, len(early)) == early
    finally:
        origin.close()
    assert [r.target for r in origin.requests] == [b"/ws"] * 6


def test_upgrade_after_earlier_requests_on_the_connection_still_waits_for_101(
    edge: Edge, agents: list[Agent], switching: RecordingOrigin
) -> None:
    agent = web_agent(edge, agents, str(switching.port), "--no-https")
    host = _host(edge, agent)
    data = payload(22, 500_000)
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=20) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: %b\r\n\r\n" % host)
        assert read_responses(sock, 1) == [(200, b"seen 1 /first")]
        sock.sendall(_upgrade(host))
        head = _read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 "), head
        sock.sendall(data)
        echoed = _recv_exactly(sock, len(data))
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
    assert [r.target for r in switching.requests] == [b"/first", b"/ws"]


def test_upgrade_after_earlier_requests_answered_200_goes_on_as_http(
    edge: Edge, agents: list[Agent], declining: RecordingOrigin
) -> None:
    agent = web_agent(edge, agents, str(declining.port), "--no-https")
    host = _host(edge, agent)
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=20) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: %b\r\n\r\n" % host)
        sock.sendall(_upgrade(host) + _spoofing(host))
        answers = read_responses(sock, 3)
    assert [status for status, _ in answers] == [200, 200, 200]
    assert [r.target for r in declining.requests] == [b"/first", b"/ws", b"/next"]
    assert declining.requests[2].values(b"x-forwarded-for") == [b"6.6.6.6, 127.0.0.1"]


def test_connect_is_refused_with_405(
    edge: Edge, agents: list[Agent], declining: RecordingOrigin
) -> None:
    agent = web_agent(edge, agents, str(declining.port), "--no-https")
    host = _host(edge, agent)
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
        sock.sendall(b"CONNECT %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (host, host) + _spoofing(host))
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 405 "), answer[:200]
    assert error_code(answer) == "RLY_629"
    assert declining.received() == b""


@pytest.mark.parametrize("status", [101, 200])
def test_interim_responses_and_a_dripped_status_line_are_read_right(
    edge: Edge, agents: list[Agent], status: int
) -> None:
    # 100 Continue and 103 Early Hints before the answer, which arrives a byte at a time:
    # the edge skips the interim heads and decides on the final status only.
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
    server = RecordingOrigin(upgrade_status=status, interim=interim, drip=True)
    try:
        agent = web_agent(edge, agents, str(server.port), "--no-https")
        host = _host(edge, agent)
        with socket.create_connection(("127.0.0.1", edge.http_port), timeout=20) as sock:
            sock.sendall(_upgrade(host))
            assert _recv_exactly(sock, len(interim)) == interim
            head = _read_head(sock)
            assert head.startswith(b"HTTP/1.1 %d " % status), head
            if status == 101:
                data = payload(23, 100_000)
                sock.sendall(data)
                assert _recv_exactly(sock, len(data)) == data
            else:
                assert read_responses_after_head(sock, head) == b"seen 1 /ws"
                sock.sendall(_spoofing(host))
                assert read_responses(sock, 1)[0][0] == 200
        if status == 200:
            assert server.requests[1].values(b"x-forwarded-for") == [b"6.6.6.6, 127.0.0.1"]
    finally:
        server.close()


def test_upgrade_declined_over_https_leaves_the_connection_http(
    edge: Edge, agents: list[Agent], declining: RecordingOrigin
) -> None:
    web_agent(edge, agents, str(declining.port), "--subdomain", "wss")
    name = b"wss.relay.localhost"
    ctx = ssl.create_default_context(cafile=str(edge.ca_file))
    raw = socket.create_connection(("127.0.0.1", edge.https_port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=name.decode()) as sock:
        sock.sendall(_upgrade(name) + _spoofing(name))
        assert [status for status, _ in read_responses(sock, 2)] == [200, 200]
    assert [r.target for r in declining.requests] == [b"/ws", b"/next"]
    follow = declining.requests[1]
    assert follow.values(b"x-forwarded-for") == [b"6.6.6.6, 127.0.0.1"]
    assert follow.values(b"x-forwarded-proto") == [b"https"]


def read_responses_after_head(sock: socket.socket, head: bytes) -> bytes:
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return _recv_exactly(sock, length)
