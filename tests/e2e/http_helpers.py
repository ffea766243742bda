"""Shared pieces of the HTTP endpoint tests: agents for web endpoints, curl, raw requests."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from urllib.parse import urlsplit

from tests.e2e.procs import Agent, Edge


def web_agent(
    edge: Edge, agents: list[Agent], upstream: str, *flags: str, kind: str = "http"
) -> Agent:
    _, token = edge.token()
    agent = Agent(edge, token, upstream, kind=kind, extra=list(flags))
    agents.append(agent)
    agent.wait_bound()
    return agent


def curl(
    url: str, *args: str, edge: Edge | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """curl with the URL's host resolved to 127.0.0.1 (and the edge's CA trusted)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    cmd = [
        "curl",
        "-sS",
        "--max-time",
        str(int(timeout)),
        "--resolve",
        f"{parts.hostname}:{port}:127.0.0.1",
    ]
    if edge is not None:
        cmd += ["--cacert", str(edge.ca_file)]
    return subprocess.run([*cmd, *args, url], capture_output=True, timeout=timeout + 10)


def raw_request(port: int, data: bytes, *, timeout: float = 10.0, tls: bool = False) -> bytes:
    """Send raw bytes, read until the server closes (or timeout); return what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock, timeout)


def exchange(
    port: int,
    host: str,
    head: bytes,
    body: bytes = b"",
    *,
    tls: ssl.SSLContext | None = None,
    address: str = "127.0.0.1",
) -> bytes:
    """One request (``head`` without its end, then ``body``) on a new connection that
    closes after it; the body of its 200 response."""
    data = one_request(port, host, head, body, tls=tls, address=address)
    status, _, rest = data.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), data[:300]
    return rest


def one_request(
    port: int,
    host: str,
    head: bytes,
    body: bytes = b"",
    *,
    tls: ssl.SSLContext | None = None,
    address: str = "127.0.0.1",
) -> bytes:
    """:func:`exchange`'s request, whatever the answer: the whole response."""
    raw = socket.create_connection((address, port), timeout=20)
    sock: socket.socket = tls.wrap_socket(raw, server_hostname=host) if tls else raw
    with sock:
        sock.sendall(head + b"connection: close\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def first_served(
    port: int, host: str, body: bytes, since: float, *, address: str, within: float = 8.0
) -> tuple[float | None, bytes]:
    """POST ``body`` to /sink on ``host`` every 0.1 s until a 200 comes back (bounded:
    ``within`` seconds after ``since``, a time.monotonic()): how long after ``since`` it
    was served (None: never) and the last answer."""
    head = f"POST /sink HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n".encode()
    answer = b""
    while time.monotonic() - since < within:
        try:
            answer = one_request(port, host, head, body, address=address)
        except OSError:
            answer = b""
        if answer.startswith(b"HTTP/1.1 200"):
            return time.monotonic() - since, answer
        time.sleep(0.1)
    return None, answer


def get_body(port: int, host: str) -> bytes:
    """One GET / on a new connection: the body of its 200 response."""
    return exchange(port, host, f"GET / HTTP/1.1\r\nhost: {host}\r\n".encode())


def host_of(agent: Agent) -> str:
    return urlsplit(agent.url).hostname or ""


def read_responses(
    sock: socket.socket, count: int, timeout: float = 10.0
) -> list[tuple[int, bytes]]:
    """Read ``count`` content-length framed responses from a keep-alive socket."""
    sock.settimeout(timeout)
    buf = b""
    out: list[tuple[int, bytes]] = []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed early")
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(buf) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed early")
            buf += chunk
        out.append((status, buf[:length]))
        buf = buf[length:]
    return out


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the peer sends until it closes (or ``timeout`` passes)."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def error_code(response: bytes) -> str:
    """The ``x-relay-error-code`` of an edge error page ("" if there is none)."""
    head = response.partition(b"\r\n\r\n")[0]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-relay-error-code":
            return value.strip().decode()
    return ""
