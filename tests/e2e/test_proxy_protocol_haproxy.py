"""Our PROXY protocol headers read by a real consumer: Debian's HAProxy with ``accept-proxy``.

HAProxy answers every request itself with the addresses the header told it
(``%[src] %[src_port] %[dst] %[dst_port] %[fc_pp_authority]``), so the test sees exactly
what a service behind the agent would log. Listens on 127.0.0.1 only; HAProxy is stopped
by its PID.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest

from relay.agent.proxy_protocol import PP2_TYPE_AUTHORITY, encode_v1, encode_v2
from tests.e2e.haproxy import needs_haproxy

pytestmark = needs_haproxy


def ask(port: int, header: bytes) -> tuple[int, str]:
    """Send ``header`` + a GET; return (status, body)."""
    request = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    deadline = time.monotonic() + 10.0
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(header + request)
        chunks: list[bytes] = []
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head, "haproxy closed the connection without answering (header rejected?)"
    status = int(head.split(b" ", 2)[1])
    return status, body.decode()


def same_ip(seen: str, sent: str) -> bool:
    """HAProxy prints a mapped address as ``::ffff:a.b.c.d``; compare as addresses."""
    a, b = ipaddress.ip_address(seen), ipaddress.ip_address(sent)
    if a.version != b.version:
        a6 = a if isinstance(a, ipaddress.IPv6Address) else None
        b6 = b if isinstance(b, ipaddress.IPv6Address) else None
        return (a6 is not None and a6.ipv4_mapped == b) or (b6 is not None and b6.ipv4_mapped == a)
    return a == b


CASES = [
    pytest.param(("203.0.113.7", 51234), ("198.51.100.1", 443), id="ipv4"),
    pytest.param(("2001:db8::42", 40000), ("2001:db8::1", 8443), id="ipv6"),
    pytest.param(("2001:db8::42", 40001), ("127.0.0.1", 80), id="ipv6-to-ipv4"),
    pytest.param(("203.0.113.8", 1), ("::1", 65535), id="ipv4-to-ipv6"),
]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(("src", "dst"), CASES)
def test_haproxy_sees_the_encoded_addresses(
    haproxy: int, version: str, src: tuple[str, int], dst: tuple[str, int]
) -> None:
    header = encode_v1(src, dst) if version == "v1" else encode_v2(src, dst)
    status, body = ask(haproxy, header)
    assert status == 200, body
    seen_src, seen_sport, seen_dst, seen_dport = body.split(" ")[:4]
    assert same_ip(seen_src, src[0]), body
    assert int(seen_sport) == src[1]
    assert same_ip(seen_dst, dst[0]), body
    assert int(seen_dport) == dst[1]


def test_haproxy_reads_v2_authority_tlv(haproxy: int) -> None:
    header = encode_v2(
        ("192.0.2.9", 1234), ("192.0.2.1", 443), tlvs={PP2_TYPE_AUTHORITY: b"app.example.com"}
    )
    status, body = ask(haproxy, header)
    assert status == 200
    assert body == "192.0.2.9 1234 192.0.2.1 443 app.example.com"


def test_haproxy_rejects_a_missing_header(haproxy: int) -> None:
    """Sanity check that the listener really requires the header we send."""
    request = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
    with socket.create_connection(("127.0.0.1", haproxy), timeout=5.0) as sock:
        sock.sendall(request)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
    assert not data.startswith(b"HTTP/1.1 200")
