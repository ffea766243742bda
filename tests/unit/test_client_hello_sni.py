"""ClientHello parsing for SNI routing: real hellos from Python's ssl and ``openssl s_client``,
every split point, several records, truncation, garbage, and fuzzing."""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
import time
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.edge.client_hello import (
    MAX_CLIENT_HELLO,
    MAX_CONSUMED,
    ClientHello,
    ClientHelloError,
    parse_client_hello,
)
from relay.errors import ProtocolViolation

# --------------------------------------------------------------------------------------
# sources of ClientHellos


@cache
def python_hello(server_hostname: str | None, alpn: tuple[str, ...] = ()) -> bytes:
    """The first flight of Python's ssl client (no network: MemoryBIO)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@cache
def openssl_hello(*args: str) -> bytes:
    """What ``openssl s_client`` sends to a 127.0.0.1 listener (stopped by PID)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(10.0)
        port = server.getsockname()[1]
        proc = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5.0)
                data = b""
                deadline = time.monotonic() + 10.0
                while parse_client_hello(data) is None and time.monotonic() < deadline:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                return data
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)


def records_of(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack(">H", data[pos + 3 : pos + 5])
        out.append(data[pos : pos + 5 + length])
        pos += 5 + length
    return out


def refragment(hello: bytes, size: int) -> bytes:
    """The same handshake message re-cut into records of ``size`` bytes (valid TLS)."""
    payload = b"".join(r[5:] for r in records_of(hello))
    version = hello[1:3]
    return b"".join(
        b"\x16" + version + struct.pack(">H", len(payload[i : i + size])) + payload[i : i + size]
        for i in range(0, len(payload), size)
    )


# --------------------------------------------------------------------------------------
# a builder for hand-made (and deliberately broken) hellos


def ext(kind: int, body: bytes) -> bytes:
    return struct.pack(">HH", kind, len(body)) + body


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(struct.pack(">BH", name_type, len(n)) + n for n in names)
    return ext(0, struct.pack(">H", len(entries)) + entries)


def alpn_ext(*names: bytes) -> bytes:
    entries = b"".join(bytes([len(n)]) + n for n in names)
    return ext(16, struct.pack(">H", len(entries)) + entries)


def build(
    *extensions: bytes,
    session_id: bytes = b"\x00" * 32,
    suites: bytes = b"\x13\x01\x13\x02",
    compression: bytes = b"\x00",
    legacy_version: int = 0x0303,
    with_extensions: bool = True,
    trailer: bytes = b"",
    handshake_type: int = 1,
) -> bytes:
    body = struct.pack(">H", legacy_version) + b"\x11" * 32
    body += bytes([len(session_id)]) + session_id
    body += struct.pack(">H", len(suites)) + suites
    body += bytes([len(compression)]) + compression
    if with_extensions:
        block = b"".join(extensions)
        body += struct.pack(">H", len(block)) + block
    body += trailer
    message = bytes([handshake_type]) + len(body).to_bytes(3, "big") + body
    return record(message)


def record(payload: bytes, content_type: int = 22, version: bytes = b"\x03\x01") -> bytes:
    return bytes([content_type]) + version + struct.pack(">H", len(payload)) + payload


def parse_ok(data: bytes) -> ClientHello:
    result = parse_client_hello(data)
    assert result is not None
    return result


# --------------------------------------------------------------------------------------
# real hellos


def test_python_hello_sni_alpn_version() -> None:
    data = python_hello("App.Example.COM", ("h2", "http/1.1"))
    hello = parse_ok(data)
    assert hello.server_name == "app.example.com"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.legacy_version == 0x0303
    assert 0x0304 in hello.supported_versions
    assert hello.consumed == len(data)


def test_python_hello_without_sni_or_alpn() -> None:
    hello = parse_ok(python_hello("127.0.0.1"))  # Python sends no SNI for an IP
    assert hello.server_name is None
    assert hello.alpn == ()


@pytest.mark.parametrize(
    "args",
    [
        ("-servername", "Tunnel.Example.org", "-alpn", "h2,http/1.1"),
        ("-servername", "tunnel.example.org", "-alpn", "h2,http/1.1", "-split_send_frag", "100"),
        ("-servername", "tls12.example.org", "-tls1_2", "-alpn", "acme-tls/1"),
    ],
    ids=["plain", "split-records", "tls1.2"],
)
def test_openssl_s_client_hello(args: tuple[str, ...]) -> None:
    data = openssl_hello(*args)
    hello = parse_ok(data)
    assert hello.server_name == args[1].lower()
    assert hello.alpn == tuple(args[args.index("-alpn") + 1].split(","))
    assert hello.legacy_version == 0x0303
    assert hello.consumed == len(data)
    if "-split_send_frag" in args:
        assert len(records_of(data)) > 1  # openssl really split the hello


@pytest.mark.parametrize(
    "source",
    [
        lambda: python_hello("a.example.com", ("h2",)),
        lambda: openssl_hello("-servername", "b.example.com", "-split_send_frag", "64"),
    ],
    ids=["python", "openssl-split"],
)
def test_every_split_point(source: object) -> None:
    assert callable(source)
    data: bytes = source()
    expected = parse_ok(data)
    for cut in range(len(data)):
        assert parse_client_hello(data[:cut]) is None, cut
        # what arrives after the hello (early data, a second segment) is not consumed
    assert parse_client_hello(data + b"\x17\x03\x03\x00\x01x") == expected
    assert parse_client_hello(memoryview(bytearray(data))) == expected


@pytest.mark.parametrize("size", [1, 2, 7, 100, 300])
def test_hello_split_over_many_records(size: int) -> None:
    data = refragment(python_hello("multi.example.com", ("h2",)), size)
    hello = parse_ok(data)
    assert hello.server_name == "multi.example.com"
    assert hello.consumed == len(data)
    step = max(1, len(data) // 200)
    for cut in range(0, len(data), step):
        assert parse_client_hello(data[:cut]) is None


# --------------------------------------------------------------------------------------
# hand-made hellos


def test_minimal_hello_without_extensions() -> None:
    hello = parse_ok(build(with_extensions=False, legacy_version=0x0301))
    assert hello == ClientHello(None, (), 0x0301, (), len(build(with_extensions=False)))


def test_unknown_name_types_are_skipped() -> None:
    data = build(sni_ext(b"x", name_type=7))
    assert parse_ok(data).server_name is None


def test_underscore_labels_are_accepted() -> None:
    assert parse_ok(build(sni_ext(b"my_host.example.com"))).server_name == "my_host.example.com"


def test_largest_accepted_hello() -> None:
    base = build(ext(21, b""))
    pad = MAX_CLIENT_HELLO - (len(base) - 5)
    data = build(ext(21, b"\x00" * pad))
    assert len(data) == MAX_CONSUMED
    assert parse_ok(data).consumed == MAX_CONSUMED
    with pytest.raises(ClientHelloError, match="exceeds the 16384-byte limit"):
        parse_client_hello(refragment(build(ext(21, b"\x00" * (pad + 1))), 16384)[:20])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "plain text"),
        (b"P", "plain text"),
        (b"\x80\x2e\x01\x00\x02", "SSLv2"),
        (b"\x17\x03\x03\x00\x10", "first byte 0x17"),
        (b"\x00", "first byte 0x00"),
        (b"\x16\x02", "record version 2.x"),
        (b"\x16\x03\x01\x00\x00", "record length 0"),
        (b"\x16\x03\x01\x40\x01", "record length 16385"),
        (record(b"\x02\x00\x00\x00")[:6], "type 2, not ClientHello"),
        (b"\x16\x03\x01\x00\x10\x01\x00\x40\x00", "exceeds the 16384-byte limit"),
        (
            refragment(build(), 10)[:15] + record(b"\x02", content_type=21),
            "content type 21 arrived before",
        ),
        (build(legacy_version=0x0200), "legacy_version 0x0200 is not TLS"),
        (build(session_id=b"\x00" * 33), "legacy_session_id is longer than 32"),
        (build(suites=b"\x13"), "cipher_suites must be a non-empty list"),
        (build(suites=b""), "cipher_suites must be a non-empty list"),
        (build(compression=b""), "no compression method"),
        (build(trailer=b"\x00"), "stray bytes after extensions"),
        (build(ext(5, b""), ext(5, b"")), "repeats extension 5"),
        (build(ext(0, b"")), "server_name_list length"),
        (build(ext(0, b"\x00\x00")), "server_name list is empty"),
        (build(sni_ext(b"a.example", b"b.example")), "more than one host_name"),
        (build(sni_ext(b"")), "invalid length"),
        (build(sni_ext(b"a" * 254)), "invalid length"),
        (build(sni_ext(b"example.com.")), "ends with a dot"),
        (build(sni_ext(b"192.0.2.1")), "IP address literal"),
        (build(sni_ext(b"::1")), "IP address literal"),
        (build(sni_ext("b\u00fccher.de".encode())), "not ASCII"),
        (build(sni_ext(b"-bad.example")), "not a valid DNS name"),
        (build(sni_ext(b"a..b")), "not a valid DNS name"),
        (build(sni_ext(b"a b.example")), "not a valid DNS name"),
        (build(sni_ext(b"a" * 64 + b".example")), "not a valid DNS name"),
        (build(alpn_ext()), "ALPN list is empty"),
        (build(alpn_ext(b"")), "ALPN protocol name is empty"),
        (build(alpn_ext(b"h2\x00")), "not printable ASCII"),
        (build(ext(16, b"\x00\x05\x02h2")), "exceeds the"),
        (build(ext(43, b"\x03\x03\x04\x03")), "supported_versions must list 2-byte"),
        (build(ext(43, b"\x02\x03\x04\x00")), "stray bytes"),
        (build(ext(0, b"\x00\x01")), "extension 0"),  # truncated inside an extension
        (
            build(with_extensions=False)[:-1],
            None,  # a short record is just "need more bytes"; see the next case
        ),
        (
            record(build(with_extensions=False)[5:] + b"\x01\x00\x00\x00"),
            "another handshake message",
        ),
    ],
)
def test_malformed(data: bytes, match: str | None) -> None:
    if match is None:
        assert parse_client_hello(data) is None
        return
    with pytest.raises(ClientHelloError, match=match) as info:
        parse_client_hello(data)
    assert isinstance(info.value, ProtocolViolation)
    assert info.value.code == "RLY_301"


def test_length_fields_lying_inside_the_body() -> None:
    data = bytearray(build(sni_ext(b"a.example.com"), alpn_ext(b"h2")))
    # handshake length says 1 byte less than the record holds
    body_len = int.from_bytes(data[6:9], "big")
    data[6:9] = (body_len - 1).to_bytes(3, "big")
    with pytest.raises(ClientHelloError):
        parse_client_hello(bytes(data))


def test_too_many_tiny_records_are_refused() -> None:
    data = build(ext(21, b"\x00" * 5000))
    tiny = refragment(data, 1)
    assert len(tiny) > MAX_CONSUMED
    for size in (MAX_CONSUMED - 1, MAX_CONSUMED, len(tiny)):
        if size < MAX_CONSUMED:
            assert parse_client_hello(tiny[:size]) is None
        else:
            with pytest.raises(ClientHelloError, match="does not fit"):
                parse_client_hello(tiny[:size])


def test_empty_input_needs_more() -> None:
    assert parse_client_hello(b"") is None


# --------------------------------------------------------------------------------------
# fuzzing: only ever None, a ClientHello, or ClientHelloError


def _only_typed_errors(data: bytes) -> None:
    try:
        result = parse_client_hello(data)
    except ClientHelloError:
        return
    assert result is None or isinstance(result, ClientHello)
    if result is not None:
        assert 0 < result.consumed <= min(len(data), MAX_CONSUMED)


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    _only_typed_errors(data)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_behind_a_record_header(data: bytes) -> None:
    _only_typed_errors(b"\x16\x03\x01" + struct.pack(">H", len(data)) + data)
    _only_typed_errors(record(b"\x01" + len(data).to_bytes(3, "big") + data))


@settings(max_examples=500)
@given(st.data())
def test_fuzz_mutated_real_hello(data: st.DataObject) -> None:
    base = bytearray(python_hello("fuzz.example.com", ("h2", "http/1.1")))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(base) - 1))
        action = data.draw(st.sampled_from(["flip", "set", "delete", "insert"]))
        if action == "flip":
            base[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "set":
            base[pos] = data.draw(st.integers(0, 255))
        elif action == "delete":
            del base[pos]
        else:
            base.insert(pos, data.draw(st.integers(0, 255)))
    cut = data.draw(st.integers(0, len(base)))
    _only_typed_errors(bytes(base[:cut]))
    _only_typed_errors(bytes(base))


@settings(max_examples=100)
@given(st.lists(st.integers(1, 200), min_size=1, max_size=10))
def test_random_record_sizes_round_trip(sizes: list[int]) -> None:
    payload = b"".join(r[5:] for r in records_of(python_hello("rt.example.com", ("h2",))))
    out, pos, i = b"", 0, 0
    while pos < len(payload):
        size = sizes[i % len(sizes)]
        out += record(payload[pos : pos + size])
        pos, i = pos + size, i + 1
    hello = parse_ok(out)
    assert (hello.server_name, hello.alpn, hello.consumed) == ("rt.example.com", ("h2",), len(out))
