"""The visitor's address survives edge -> stream header -> agent -> PROXY header.

HAProxy with ``accept-proxy`` is the upstream behind ``relay tcp --proxy-protocol v1|v2`` and
``relay http --no-https --proxy-protocol v2``; it answers every request itself with the
addresses the PROXY header told it. A visitor connects through the edge and must read back
its own source address and port (its socket's ``getsockname()``). Listens on 127.0.0.1 only;
HAProxy, the edge and the agents are stopped by PID.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest

from tests.e2e.haproxy import needs_haproxy
from tests.e2e.http_helpers import host_of, web_agent
from tests.e2e.procs import Agent, Edge

pytestmark = needs_haproxy


def ask_through(port: int, host: str) -> tuple[tuple[str, int], int, list[str]]:
    """GET / via the edge's ``port``; return (this visitor's own address, status, fields)."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    deadline = time.monotonic() + 10.0
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        me = sock.getsockname()
        sock.sendall(request)
        chunks: list[bytes] = []
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head, "no answer (did haproxy reject the PROXY header?)"
    status = int(head.split(b" ", 2)[1])
    return (me[0], int(me[1])), status, body.decode().split(" ")


def same_ip(seen: str, sent: str) -> bool:
    """HAProxy may print a mapped address as ``::ffff:a.b.c.d``; compare as addresses."""
    a, b = ipaddress.ip_address(seen), ipaddress.ip_address(sent)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    if isinstance(b, ipaddress.IPv6Address) and b.ipv4_mapped is not None:
        b = b.ipv4_mapped
    return a == b


def assert_visitor_seen(
    port: int, host: str, upstream_port: int, visits: int = 3
) -> list[tuple[str, int]]:
    """Several visits (each from a new source port): each one's address reaches haproxy."""
    seen_ports = []
    for _ in range(visits):
        me, status, fields = ask_through(port, host)
        assert status == 200, fields
        src, sport, dst, dport = fields[:4]
        assert same_ip(src, me[0]), (fields, me)
        assert int(sport) == me[1], (fields, me)
        # The agent does not know the edge's public address per connection: the
        # destination it reports is the upstream it dialled.
        assert same_ip(dst, "127.0.0.1") and int(dport) == upstream_port, fields
        seen_ports.append(me)
    assert len({p for _, p in seen_ports}) == visits
    return seen_ports


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tcp_endpoint_sends_the_visitors_address(
    edge: Edge, agents: list[Agent], haproxy: int, version: str
) -> None:
    _, token = edge.token()
    agent = Agent(edge, token, haproxy, extra=["--proxy-protocol", version])
    agents.append(agent)
    remote = agent.wait_bound()
    assert_visitor_seen(remote, "anything", haproxy)


def test_http_endpoint_sends_the_visitors_address(
    edge: Edge, agents: list[Agent], haproxy: int
) -> None:
    agent = web_agent(edge, agents, str(haproxy), "--no-https", "--proxy-protocol", "v2")
    assert_visitor_seen(edge.http_port, f"{host_of(agent)}:{edge.http_port}", haproxy)


def test_without_the_option_haproxy_gets_no_header(
    edge: Edge, agents: list[Agent], haproxy: int
) -> None:
    """Control: the header comes from the option (haproxy refuses a bare request)."""
    _, token = edge.token()
    agent = Agent(edge, token, haproxy)
    agents.append(agent)
    remote = agent.wait_bound()
    with socket.create_connection(("127.0.0.1", remote), timeout=5.0) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
    assert not data.startswith(b"HTTP/1.1 200")
