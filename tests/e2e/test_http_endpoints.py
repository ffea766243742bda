"""HTTP endpoints with real clients: curl, raw sockets, a WebSocket client."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from tests.e2e.http_helpers import curl, host_of, raw_request, read_responses, web_agent
from tests.e2e.origin import Origin, blob
from tests.e2e.procs import Agent, Edge, free_port, payload


def header_map(body: bytes) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for name, value in json.loads(body)["headers"]:
        seen.setdefault(name, []).append(value)
    return seen


def test_keep_alive_reuses_the_connection_and_forwards_visitor_headers(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    agent = web_agent(edge, agents, str(origin.port), "--no-https", "--subdomain", "app")
    assert agent.url == f"http://app.relay.localhost:{edge.http_port}"
    # Two transfers in one curl run: /second first, then /headers on the same connection
    # (options after --next apply to the second transfer only).
    result = curl(
        agent.url + "/headers",
        agent.url + "/second",
        "--next",
        "-v",
        "--resolve",
        f"app.relay.localhost:{edge.http_port}:127.0.0.1",
        "-H",
        "Connection: keep-alive, x-private",
        "-H",
        "x-private: hop-by-hop",
        "-H",
        "keep-alive: timeout=5",
        "-H",
        "x-forwarded-for: 10.9.8.7",
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.startswith(b"origin ok /second")
    first = result.stdout[len(b"origin ok /second") :]
    assert b"Re-using existing connection" in result.stderr
    seen = header_map(first)
    assert seen["x-forwarded-for"] == ["10.9.8.7, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [f"app.relay.localhost:{edge.http_port}"]
    assert seen["forwarded"][0].startswith("for=127.0.0.1;proto=http;")
    assert seen["host"] == [f"app.relay.localhost:{edge.http_port}"]
    # Hop-by-hop headers (and those named by Connection) stay at the edge.
    for name in ("x-private", "keep-alive", "connection"):
        assert name not in seen, name


def test_host_header_rewrite_sends_the_upstream_host(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    agent = web_agent(edge, agents, str(origin.port), "--no-https", "--host-header", "rewrite")
    seen = header_map(curl(agent.url + "/headers").stdout)
    assert seen["host"] == [f"127.0.0.1:{origin.port}"]
    assert seen["x-forwarded-host"] == [f"{host_of(agent)}:{edge.http_port}"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_https_hundred_mib_chunked_upload_and_download_match_by_hash(
    edge: Edge, origin: Origin, agents: list[Agent], tmp_path: Path
) -> None:
    agent = web_agent(edge, agents, str(origin.port), "--subdomain", "big")
    assert agent.url.startswith("https://big.relay.localhost:")
    size = 100 * 1024 * 1024
    upload = tmp_path / "upload.bin"
    upload.write_bytes(payload(5, size))
    sent = curl(
        agent.url + "/sink",
        "-X",
        "POST",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        f"@{upload}",
        edge=edge,
    )
    assert sent.returncode == 0, sent.stderr.decode()
    assert json.loads(sent.stdout) == {
        "size": size,
        "sha256": hashlib.sha256(upload.read_bytes()).hexdigest(),
    }
    got = curl(agent.url + f"/blob/{size}?chunked", "--raw", "-o", "-", edge=edge)
    assert got.returncode == 0, got.stderr.decode()
    # --raw keeps the chunk framing: decode it here so a framing bug cannot hide.
    body, rest = bytearray(), memoryview(got.stdout)
    while True:
        line_end = bytes(rest[:20]).index(b"\r\n")
        n = int(bytes(rest[:line_end]), 16)
        if n == 0:
            break
        body += rest[line_end + 2 : line_end + 2 + n]
        rest = rest[line_end + 4 + n :]
    assert hashlib.sha256(body).digest() == hashlib.sha256(blob(size)).digest()


def test_websocket_echo_through_an_http_endpoint(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    agent = web_agent(edge, agents, str(origin.ws_port), "--no-https")
    sock = socket.create_connection(("127.0.0.1", edge.http_port), timeout=10)
    with ws_connect(f"ws://{host_of(agent)}:{edge.http_port}/echo", sock=sock) as ws:
        for i in range(20):
            message = payload(i, 10 + i * 5000)
            ws.send(message)
            assert ws.recv(timeout=10) == message
        ws.send("text frame")
        assert ws.recv(timeout=10) == "text frame"


def test_pipelined_requests_are_answered_in_order(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    agent = web_agent(edge, agents, str(origin.port), "--no-https")
    host = f"{host_of(agent)}:{edge.http_port}".encode()
    requests = b"".join(b"GET /n%d HTTP/1.1\r\nHost: %b\r\n\r\n" % (i, host) for i in range(5))
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
        sock.sendall(requests)
        answers = read_responses(sock, 5)
    assert [body for _, body in answers] == [b"origin ok /n%d" % i for i in range(5)]


def test_expect_continue_and_http_1_0_clients(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    agent = web_agent(edge, agents, str(origin.port), "--no-https")
    data = payload(8, 300_000)
    # The body goes through curl's stdin so that curl sends Expect and waits for 100.
    port = edge.http_port
    proc = subprocess.run(
        [
            "curl",
            "-sS",
            "-v",
            "--resolve",
            f"{host_of(agent)}:{port}:127.0.0.1",
            "-H",
            "Expect: 100-continue",
            "-X",
            "PUT",
            "--data-binary",
            "@-",
            agent.url + "/sink",
        ],
        input=data,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"HTTP/1.1 100 Continue" in proc.stderr
    assert json.loads(proc.stdout)["sha256"] == hashlib.sha256(data).hexdigest()
    old = curl(agent.url + "/old", "-0")
    assert old.returncode == 0 and old.stdout == b"origin ok /old"


def test_error_pages_carry_codes_for_each_failure(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    port = edge.http_port
    unknown = raw_request(
        port, b"GET / HTTP/1.1\r\nHost: nobody.relay.localhost\r\nAccept: application/json\r\n\r\n"
    )
    assert unknown.startswith(b"HTTP/1.1 404 ")
    assert json.loads(unknown.partition(b"\r\n\r\n")[2])["code"] == "RLY_610"
    browser = raw_request(
        port, b"GET / HTTP/1.1\r\nHost: nobody.relay.localhost\r\nAccept: text/html\r\n\r\n"
    )
    assert b"content-type: text/html" in browser.lower() and b"RLY_610" in browser
    assert raw_request(port, b"GARBAGE\x00\x01 nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nx-big: " + b"a" * 20_000 + b"\r\n\r\n"
    assert raw_request(port, huge).startswith(b"HTTP/1.1 431 ")
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(150))
    assert raw_request(port, many + b"\r\n").startswith(b"HTTP/1.1 431 ")
    # Upstream refused: the agent answers with a 502 page of its own.
    closed_port = free_port()
    refused = web_agent(edge, agents, str(closed_port), "--no-https")
    answer = raw_request(port, b"GET / HTTP/1.1\r\nHost: %b\r\n\r\n" % host_of(refused).encode())
    assert answer.startswith(b"HTTP/1.1 502 ") and b"RLY_613" in answer
    # Agent offline: the name is held for its token, visitors get 503.
    gone = web_agent(edge, agents, str(origin.port), "--no-https")
    gone.proc.kill()
    deadline = time.monotonic() + 10
    request = b"GET / HTTP/1.1\r\nHost: %b\r\n\r\n" % host_of(gone).encode()
    while time.monotonic() < deadline:
        offline = raw_request(port, request)
        if offline.startswith(b"HTTP/1.1 503 "):
            break
        time.sleep(0.2)
    assert offline.startswith(b"HTTP/1.1 503 ") and b"RLY_611" in offline


def test_a_request_whose_agent_dies_before_answering_gets_rly_616_at_once(
    edge: Edge, agents: list[Agent]
) -> None:
    """The upstream has the request and has not answered when the agent's process is
    SIGKILLed: the visitor is told at once that the tunnel went (502 RLY_616), not that
    the upstream could not be reached (RLY_613)."""
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    try:
        agent = web_agent(edge, agents, str(silent.getsockname()[1]), "--no-https")
        request = b"GET / HTTP/1.1\r\nHost: %b\r\n\r\n" % host_of(agent).encode()
        answer: list[bytes] = []
        visitor = threading.Thread(
            target=lambda: answer.append(raw_request(edge.http_port, request)), daemon=True
        )
        visitor.start()
        deadline = time.monotonic() + 10
        while not held:
            assert time.monotonic() < deadline, "the request never reached the upstream"
            time.sleep(0.02)
        agent.proc.kill()
        killed = time.monotonic()
        visitor.join(10)
        assert time.monotonic() - killed < 3.0
        assert answer and answer[0].startswith(b"HTTP/1.1 502 "), answer
        assert b"RLY_616" in answer[0] and b"RLY_613" not in answer[0], answer
    finally:
        for conn in held:
            conn.close()
        silent.close()


def test_plain_http_request_for_an_https_name_is_redirected(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    agent = web_agent(edge, agents, str(origin.port), "--subdomain", "secure")
    answer = raw_request(
        edge.http_port, b"GET /path?q=1 HTTP/1.1\r\nHost: secure.relay.localhost\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 308 ")
    assert f"location: {agent.url}/path?q=1".encode() in answer


@pytest.mark.timeout(120)
def test_slowloris_is_cut_at_the_header_timeout_while_others_carry_on(
    tmp_path: Path, origin: Origin, agents: list[Agent]
) -> None:
    edge = Edge(tmp_path / "edge", extra=["--http-header-timeout", "2"]).start()
    try:
        agent = web_agent(edge, agents, str(origin.port), "--no-https")
        host = f"{host_of(agent)}:{edge.http_port}".encode()
        slow = socket.create_connection(("127.0.0.1", edge.http_port), timeout=10)
        started = time.monotonic()
        head = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nx-drip: " + b"d" * 200
        cut_after = None
        served = 0
        try:
            for byte in head:
                slow.sendall(bytes([byte]))
                served += curl(agent.url + "/meanwhile").stdout == b"origin ok /meanwhile"
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            cut_after = time.monotonic() - started
        if cut_after is None:
            reply = slow.recv(65536)
            cut_after = time.monotonic() - started
            assert reply.startswith(b"HTTP/1.1 408 ") or reply == b""
        slow.close()
        assert cut_after < 8, cut_after
        assert served >= 5  # other visitors were served while the slow one dripped
    finally:
        edge.stop()


@pytest.mark.timeout(180)
def test_malformed_burst_does_not_disturb_a_concurrent_download(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    agent = web_agent(edge, agents, str(origin.port), "--no-https")
    size = 64 * 1024 * 1024
    result: dict[str, bytes] = {}

    def download() -> None:
        result["body"] = curl(agent.url + f"/blob/{size}", "--limit-rate", "40M").stdout

    thread = threading.Thread(target=download)
    thread.start()
    bad = 0
    for i in range(200):
        garbage = payload(i, 64).replace(b"\r", b"r").replace(b"\n", b"n") + b"\r\n\r\n"
        bad += raw_request(edge.http_port, garbage, timeout=5).startswith(b"HTTP/1.1 400 ")
    thread.join(120)
    assert bad == 200
    assert hashlib.sha256(result["body"]).digest() == hashlib.sha256(blob(size)).digest()
