"""An edge at its descriptor limit with a connection queued on its TLS port: it does not
spin or flood its log (one line per listener, none per visitor), the tunnels it already
carries keep moving bytes, and the queued visitor is served once descriptors are free.

The limit is real: the test lowers the running edge's RLIMIT_NOFILE (prlimit(2)) to a
little above what it has open, then fills the rest with visitors of a TCP tunnel.
"""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.e2e.http_helpers import web_agent
from tests.e2e.origin import Origin
from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, payload

STUCK_FOR = 1.0
MAX_FILLERS = 200
HTTP_HOST = b"plain.relay.localhost"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def takes_a_visitor(port: int) -> socket.socket | None:
    """A TCP tunnel visitor that got through (its byte came back), or None."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(b"x")
        if sock.recv(1) == b"x":
            return sock
    except OSError:
        pass
    sock.close()
    return None


def wait_for_output(edge: Edge, needle: str, timeout: float = 5.0) -> None:
    assert edge.proc is not None
    deadline = time.monotonic() + timeout
    while needle not in edge.proc.text():
        assert time.monotonic() < deadline, f"no {needle!r} in:\n{edge.proc.text()[-2000:]}"
        time.sleep(0.05)


def http_get(edge: Edge, path: bytes) -> bytes:
    """One request to the HTTP listener (for the http endpoint), what came back."""
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
        try:
            sock.sendall(
                b"GET %b HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n" % (path, HTTP_HOST)
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            return b""
    return answer


@pytest.mark.timeout(120)
def test_tls_port_at_the_descriptor_limit_pauses_and_tunnels_keep_serving(
    edge: Edge, echo: EchoServer, origin: Origin, agents: list[Agent]
) -> None:
    assert edge.proc is not None
    pid = edge.proc.pid
    _, token = edge.token()
    tcp = Agent(edge, token, echo.port)
    agents.append(tcp)
    tcp_port = tcp.wait_bound()
    https = web_agent(edge, agents, str(origin.port), "--subdomain", "fdlimit")
    name = "fdlimit.relay.localhost"
    web_agent(edge, agents, str(origin.port), "--no-https", "--subdomain", "plain")
    assert https.url == f"https://{name}:{edge.https_port}"
    fillers: list[socket.socket] = []
    queued: socket.socket | None = None
    queued_link: socket.socket | None = None
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=30) as carried:
        try:
            assert echo_roundtrip(tcp_port, b"warm") == b"warm"
            carried.sendall(b"y")
            assert carried.recv(1) == b"y"
            _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_descriptors(pid) + 8, hard))
            for _ in range(MAX_FILLERS):
                visitor = takes_a_visitor(tcp_port)
                if visitor is None:
                    break
                fillers.append(visitor)
            else:
                pytest.fail("the edge never ran out of descriptors")
            queued = socket.create_connection(("127.0.0.1", edge.https_port), timeout=10)
            queued_link = socket.create_connection(("127.0.0.1", edge.listen_port), timeout=10)
            # One warning per listener: the TLS port pauses; the HTTP listener and the TCP
            # endpoints, whose accepts libuv makes (and drops at the limit), are named by
            # the process's watch.
            wait_for_output(edge, "pausing accepts on TLS port")
            wait_for_output(edge, "pausing accepts on agent listener")
            wait_for_output(edge, "TCP endpoints and the HTTP listener close new connections")
            log_before = len(edge.proc.output)
            cpu_before = cpu_seconds(pid)
            started = time.monotonic()
            for _ in range(20):  # visitors of the HTTP listener meanwhile: no line each
                assert http_get(edge, b"/dropped") == b""
                time.sleep(STUCK_FOR / 20)
            time.sleep(max(0.0, STUCK_FOR - (time.monotonic() - started)))
            cpu_used = cpu_seconds(pid) - cpu_before
            logged = edge.proc.output[log_before:]
            # The tunnel the edge already carries moves bytes at the limit.
            data = payload(31, 2_000_000)
            carried.sendall(data)
            echoed = bytearray()
            while len(echoed) < len(data):
                chunk = carried.recv(1 << 20)
                assert chunk, "the carried tunnel closed"
                echoed += chunk
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
        except BaseException:
            # Failing: the waiting sockets too, or the garbage collector would warn about
            # them in whichever test runs next.
            for waiting in (queued, queued_link):
                if waiting is not None:
                    waiting.close()
            raise
        finally:
            for visitor in fillers:
                visitor.close()
        assert queued is not None
        # Descriptors are free again: the queued visitor is accepted and served.
        ctx = ssl.create_default_context(cafile=str(edge.ca_file))
        with ctx.wrap_socket(queued, server_hostname=name) as tls:
            tls.sendall(
                b"GET /after HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n" % name.encode()
            )
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert answer.endswith(b"origin ok /after")
        # And the agent link that waited: its TLS handshake completes now.
        link_ctx = ssl.create_default_context(cafile=str(edge.ca_file))
        link_ctx.set_alpn_protocols(["relay/1"])
        with link_ctx.wrap_socket(queued_link, server_hostname="localhost") as link:
            assert link.selected_alpn_protocol() == "relay/1"
    assert cpu_used < 0.3, f"{cpu_used:.2f} CPU-s in {STUCK_FOR} s at the limit"
    assert logged == [], logged[:5]
    wait_for_output(edge, "accepting again on TLS port")
    wait_for_output(edge, "TCP endpoints and the HTTP listener take connections again")
    assert http_get(edge, b"/again").endswith(b"origin ok /again")
    output = edge.proc.text()
    assert output.count("pausing accepts on TLS port") == 1, output[-2000:]
    assert output.count("pausing accepts on agent listener") == 1, output[-2000:]
    assert output.count("close new connections as they arrive") == 1, output[-2000:]
    assert "descriptor limit reached (RLIMIT_NOFILE " in output
