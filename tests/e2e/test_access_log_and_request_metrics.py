"""The access log has one line per request (http) and per connection (tcp), with the
status, the bytes that really passed and the duration; the request metrics count the same
requests by status class; --log-format json makes every line JSON."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.http_helpers import host_of, web_agent
from tests.e2e.origin import Origin, blob
from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, payload
from tests.e2e.test_admin_listener import get, sample


def exchange(sock: socket.socket, request: bytes, *, head: bool = False) -> bytes:
    """Send one request and read its whole response (content-length framed)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head_bytes.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if head:
        length = 0
    while len(body) < length:
        body += sock.recv(65536)
    return head_bytes + b"\r\n\r\n" + body


def lines_of(path: Path, count: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{path}: {len(lines)} lines, wanted {count}")


@pytest.mark.timeout(120)
def test_each_request_and_connection_is_one_line_with_what_really_passed(
    tmp_path: Path, origin: Origin, echo: EchoServer, agents: list[Agent]
) -> None:
    log = tmp_path / "access.log"
    edge = Edge(tmp_path / "edge", extra=["--access-log", str(log)]).start()
    try:
        web = web_agent(edge, agents, str(origin.port), "--no-https")
        host = f"{host_of(web)}:{edge.http_port}".encode()
        requests = [
            (b"GET /hello HTTP/1.1\r\nHost: %b\r\n\r\n" % host, False, 200),
            (b"GET /status/404 HTTP/1.1\r\nHost: %b\r\n\r\n" % host, False, 404),
            (b"HEAD /head HTTP/1.1\r\nHost: %b\r\n\r\n" % host, True, 200),
            (b"GET /blob/300000 HTTP/1.1\r\nHost: %b\r\n\r\n" % host, False, 200),
            (
                b"POST /sink HTTP/1.1\r\nHost: %b\r\ncontent-length: 7\r\n\r\nabcdefg" % host,
                False,
                200,
            ),
            (b"GET /status/503 HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n" % host, False,
             503),
        ]  # fmt: skip
        received = []
        with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
            for request, head, _ in requests:
                received.append(exchange(sock, request, head=head))
        assert received[3].endswith(blob(300000))
        _, token = edge.token()
        tcp = Agent(edge, token, echo.port)
        agents.append(tcp)
        port = tcp.wait_bound()
        data = payload(41, 123_456)
        assert echo_roundtrip(port, data) == data
        lines = lines_of(log, len(requests) + 1)
        http_lines = [line for line in lines if " http " in line]
        assert len(http_lines) == len(requests), lines
        for line, (request, _, status), answer in zip(http_lines, requests, received, strict=True):
            fields = line.split()
            assert fields[5] == request.split(b" ", 1)[0].decode()
            assert fields[7] == str(status), line
            body_in = 7 if request.startswith(b"POST") else 0
            assert fields[8] == f"in={body_in}", line
            assert fields[9] == f"out={len(answer)}", line  # head and body, to the byte
            assert fields[10].endswith("s") and float(fields[10][:-1]) >= 0
        [tcp_line] = [line for line in lines if " tcp " in line]
        assert f"tcp://127.0.0.1:{port}" in tcp_line and " closed " in tcp_line
        assert f"in={len(data)} out={len(data)}" in tcp_line
        # The request metrics count the same requests.
        _, text = get(edge, "/metrics")
        assert sample(text, "relay_http_requests_total", kind="http", code_class="2xx") == 4
        assert sample(text, "relay_http_requests_total", kind="http", code_class="4xx") == 1
        assert sample(text, "relay_http_requests_total", kind="http", code_class="5xx") == 1
        assert sample(text, "relay_http_request_duration_seconds_count", kind="http") == 6
        assert sample(text, "relay_visitor_bytes_total", kind="http", direction="out") == sum(
            len(a) for a in received
        )
    finally:
        edge.stop()


@pytest.mark.timeout(90)
def test_log_format_json_makes_every_line_json(
    tmp_path: Path, origin: Origin, agents: list[Agent]
) -> None:
    edge = Edge(
        tmp_path / "edge", extra=["--access-log", "-"], global_options=["--log-format", "json"]
    ).start()
    try:
        web = web_agent(edge, agents, str(origin.port), "--no-https")
        host = f"{host_of(web)}:{edge.http_port}".encode()
        with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
            answer = exchange(sock, b"GET /j HTTP/1.1\r\nHost: %b\r\n\r\n" % host)
        assert edge.proc is not None
        line = edge.proc.wait_line('"target":"/j"', timeout=5)
        record = json.loads(line)
        assert record["status"] == 200 and record["bytes_out"] == len(answer)
        assert record["kind"] == "http" and record["method"] == "GET"
        logged = [json.loads(text) for text in edge.proc.output if text.startswith("{")]
        assert any(r.get("logger") == "relay.edge" for r in logged), edge.proc.output[:5]
    finally:
        edge.stop()
