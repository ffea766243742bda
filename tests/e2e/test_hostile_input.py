"""Garbage, old TLS and visitors that never read: each is contained, nothing else suffers."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.procs import Agent, EchoServer, Edge, SourceServer, echo_roundtrip, payload

#: Connections opened to the TLS port that never send a byte.
SILENT_VISITORS = 20


def bound_agent(edge: Edge, upstream: int, agents: list[Agent]) -> int:
    _, token = edge.token()
    agent = Agent(edge, token, upstream)
    agents.append(agent)
    return agent.wait_bound()


def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True


def tls_to_edge(edge: Edge) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(edge.ca_file))
    ctx.set_alpn_protocols(["relay/1"])
    raw = socket.create_connection(("127.0.0.1", edge.listen_port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def test_garbage_on_the_agent_port_closes_that_connection_only(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    port = bound_agent(edge, echo.port, agents)
    data = payload(11, 2_000_000)
    result: dict[str, bytes] = {}
    transfer = threading.Thread(target=lambda: result.update(got=echo_roundtrip(port, data)))
    transfer.start()

    # 1. Not TLS at all.
    with socket.create_connection(("127.0.0.1", edge.listen_port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 64)
        assert closed_by_peer(raw)
    # 2. TLS, then a yamux frame with version 7.
    with tls_to_edge(edge) as tls:
        tls.sendall(struct.pack(">BBHII", 7, 0, 1, 1, 0))
        assert closed_by_peer(tls)
    # 3. TLS, a valid SYN for the control stream, then a control message that is not JSON.
    with tls_to_edge(edge) as tls:
        body = b"\xff not json"
        frame = struct.pack(">BBHII", 0, 0, 1, 1, 4 + len(body))
        tls.sendall(frame + struct.pack(">I", len(body)) + body)
        assert closed_by_peer(tls)
    # 4. TLS, then silence: the handshake timeout is the edge's, not ours; just leave.

    transfer.join(60)
    assert hashlib.sha256(result["got"]).digest() == hashlib.sha256(data).digest()
    # And the tunnel still takes new visitors afterwards.
    again = payload(12, 100_000)
    assert echo_roundtrip(port, again) == again


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_agent_link_refuses_tls_below_1_2(edge: Edge, version: ssl.TLSVersion) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # let the client really offer the old version
    ctx.minimum_version = version
    ctx.maximum_version = version
    raw = socket.create_connection(("127.0.0.1", edge.listen_port), timeout=10)
    with pytest.raises(ssl.SSLError) as excinfo, raw:
        ctx.wrap_socket(raw, server_hostname="localhost")
    # The server said no — with a protocol_version alert (OpenSSL servers) or by closing
    # the handshake (uvloop's TLS does not flush the alert) — and not our own client
    # library refusing to offer the old version (that would prove nothing).
    message = str(excinfo.value).upper()
    assert "NO_PROTOCOLS_AVAILABLE" not in message, message
    assert "ALERT_PROTOCOL_VERSION" in message or "UNEXPECTED_EOF" in message, message


def test_agent_link_speaks_tls_1_2_and_1_3_with_alpn(edge: Edge) -> None:
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ssl.create_default_context(cafile=str(edge.ca_file))
        ctx.minimum_version = ctx.maximum_version = version
        ctx.set_alpn_protocols(["relay/1"])
        with (
            socket.create_connection(("127.0.0.1", edge.listen_port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert (
                tls.version()
                == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
            )
            assert tls.selected_alpn_protocol() == "relay/1"


@pytest.mark.timeout(120)
def test_visitor_that_never_reads_does_not_grow_edge_memory(
    edge: Edge, agents: list[Agent]
) -> None:
    source = SourceServer(limit=2 << 30)  # 2 GiB: far more than any buffer in the path
    try:
        port = bound_agent(edge, source.port, agents)
        assert edge.proc is not None
        before = edge.proc.rss_bytes()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as visitor:
            visitor.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            # Wait until the source is stuck: its count stops moving.
            deadline = time.monotonic() + 60
            last = -1
            while time.monotonic() < deadline:
                time.sleep(1.0)
                if source.written == last and last > 0:
                    break
                last = source.written
            stuck_at = source.written
            grown = edge.proc.rss_bytes() - before
            time.sleep(2.0)
            assert source.written == stuck_at, "the upstream kept writing: no backpressure"
        # Kernel buffers on four sockets plus the edge's window budget for one stream;
        # far below what the source would have pushed without backpressure.
        assert stuck_at < 128 * 1024 * 1024, stuck_at
        assert grown < 48 * 1024 * 1024, grown
    finally:
        source.close()


def test_visitors_silent_on_the_tls_port_are_cut_at_the_header_timeout(
    tmp_path: Path, echo: EchoServer, agents: list[Agent]
) -> None:
    """Connections to the TLS port that never send a byte (no ClientHello) are closed
    when the header timeout runs out, each of them; none keeps its descriptor, and a
    visitor that does speak is served meanwhile."""
    edge = Edge(tmp_path / "edge", extra=["--http-header-timeout", "1"]).start()
    silent: list[socket.socket] = []
    try:
        port = bound_agent(edge, echo.port, agents)
        assert edge.proc is not None
        before = len(os.listdir(f"/proc/{edge.proc.pid}/fd"))
        opened = time.monotonic()
        for _ in range(SILENT_VISITORS):
            silent.append(socket.create_connection(("127.0.0.1", edge.https_port), timeout=10))
        data = payload(12, 100_000)
        assert echo_roundtrip(port, data) == data  # others go on meanwhile
        for sock in silent:
            assert closed_by_peer(sock, timeout=5.0)
        took = time.monotonic() - opened
        assert 0.9 < took < 1.0 + 3.0, took
        deadline = time.monotonic() + 5  # bounded: the edge closes its ends at once
        while len(os.listdir(f"/proc/{edge.proc.pid}/fd")) > before:
            assert time.monotonic() < deadline, "the edge kept silent visitors' descriptors"
            time.sleep(0.05)
    finally:
        for sock in silent:
            sock.close()
        edge.stop()
