"""The agent link's TLS: connect_link/serve_links over the direct transport (OpenSSL on the
socket, staging BIO) and over uvloop's TLS fallback — one suite, run over both."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from relay import _tlslink, tlslink
from relay.certs.local_ca import LocalCA
from relay.tls import client_context, server_context

TRANSPORTS = ["direct", "uvloop"]


@pytest.fixture(params=TRANSPORTS)
def transport_kind(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    kind = str(request.param)
    if kind == "direct":
        reason = _tlslink.unavailable()
        if reason is not None:
            pytest.skip(f"direct TLS link unavailable here: {reason}")
    else:
        monkeypatch.setenv("RELAY_TLS_DIRECT", "0")
    yield kind


@pytest.fixture
def contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = LocalCA.load_or_create(tmp_path)
    chain, key = ca.issue_server_cert(["localhost"], ["127.0.0.1"])
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    server = server_context(tmp_path / "chain.pem", tmp_path / "key.pem")
    client = client_context(ca_file=ca.ca_pem_path)
    return server, client


class Collector(asyncio.BufferedProtocol):
    """Hashes what it receives; records the callbacks it got."""

    def __init__(self) -> None:
        self.buffer = bytearray(64 * 1024)
        self.digest = hashlib.sha256()
        self.received = 0
        self.transport: Any = None
        self.made = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.eof = False
        self.pauses = 0
        self.resumes = 0
        self.expect = 0
        self.got_all: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.made.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.digest.update(self.buffer[:nbytes])
        self.received += nbytes
        if self.expect and self.received >= self.expect and not self.got_all.done():
            self.got_all.set_result(None)

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def pause_writing(self) -> None:
        self.pauses += 1

    def resume_writing(self) -> None:
        self.resumes += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(asyncio.wait_for(scenario(), 60))


async def pair(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> tuple[Any, Collector, Collector]:
    """A server and one connected client; (server, server-side protocol, client protocol)."""
    loop = asyncio.get_running_loop()
    server_ctx, client_ctx = contexts
    accepted: asyncio.Queue[Collector] = asyncio.Queue()

    def factory() -> Collector:
        proto = Collector()
        accepted.put_nowait(proto)
        return proto

    server = await tlslink.serve_links(
        loop, factory, "127.0.0.1", 0, ssl_context=server_ctx, handshake_timeout=5
    )
    port = server.sockets[0].getsockname()[1]
    _, client = await tlslink.connect_link(
        loop,
        Collector,
        "127.0.0.1",
        port,
        ssl_context=client_ctx,
        server_hostname="localhost",
        handshake_timeout=5,
    )
    remote = await asyncio.wait_for(accepted.get(), 5)
    await remote.made
    return server, remote, client


def test_the_direct_transport_proves_the_ssl_layout_before_using_it(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    if _tlslink.unavailable() is not None:
        pytest.skip(f"direct TLS link unavailable here: {_tlslink.unavailable()}")
    server_ctx, _ = contexts
    a, b = socket.socketpair()
    with a, b:
        with server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False) as tls:
            _tlslink.check_layout(tls)  # raises if the pointers do not agree
        assert tlslink.direct_tls()
        with pytest.raises((RuntimeError, AttributeError)):
            _tlslink.check_layout(b)  # a plain socket has no SSL* to find


def test_a_layout_that_does_not_check_out_means_the_uvloop_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(sslsock: object) -> None:
        raise RuntimeError("the _ssl._SSLSocket layout is not the expected one")

    if _tlslink.unavailable() is not None:
        pytest.skip(f"direct TLS link unavailable here: {_tlslink.unavailable()}")
    tlslink._self_test.cache_clear()
    monkeypatch.setattr(_tlslink, "check_layout", refuse)
    try:
        assert not tlslink.direct_tls()
        assert "layout check failed" in str(tlslink._self_test())
    finally:
        monkeypatch.undo()
        tlslink._self_test.cache_clear()
    assert tlslink.direct_tls()


def test_turning_the_direct_transport_off_uses_uvloop_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TLS_DIRECT", "0")
    assert not tlslink.direct_tls()
    assert "RELAY_TLS_DIRECT=0" in str(_tlslink.unavailable())


def test_bytes_cross_both_ways_intact_and_close_notify_ends_the_link(
    transport_kind: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    async def scenario() -> None:
        server, remote, client = await pair(contexts)
        assert client.transport.get_extra_info("ssl_object").selected_alpn_protocol() == "relay/3"
        assert client.transport.get_extra_info("peername")[0] == "127.0.0.1"
        size = 24 * 1024 * 1024
        up = os.urandom(size)
        down = os.urandom(size // 3)
        remote.expect, client.expect = len(up), len(down)
        # Odd-sized writes, some larger than the write limit: records and chunking must
        # not matter to the bytes.
        for i in range(0, len(up), 300_001):
            client.transport.write(up[i : i + 300_001])
        for i in range(0, len(down), 7_777):
            remote.transport.write(memoryview(down)[i : i + 7_777])
        await asyncio.wait_for(asyncio.gather(remote.got_all, client.got_all), 30)
        assert remote.digest.hexdigest() == hashlib.sha256(up).hexdigest()
        assert client.digest.hexdigest() == hashlib.sha256(down).hexdigest()
        client.transport.close()
        assert await asyncio.wait_for(client.lost, 5) is None
        await asyncio.wait_for(remote.lost, 5)
        assert remote.eof, "the peer saw close_notify, not a bare TCP close"
        server.close()

    run(scenario)


def test_a_peer_that_stops_reading_pauses_the_writer_until_it_reads_again(
    transport_kind: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    async def scenario() -> None:
        server, remote, client = await pair(contexts)
        remote.transport.pause_reading()
        client.transport.set_write_buffer_limits(256 * 1024, 64 * 1024)
        chunk = os.urandom(64 * 1024)
        sent = 0
        for _ in range(2000):  # bounded: at most 128 MiB
            if client.pauses:
                break
            client.transport.write(chunk)
            sent += len(chunk)
            await asyncio.sleep(0)
        assert client.pauses == 1, "the writer was never paused"
        assert client.transport.get_write_buffer_size() >= 256 * 1024
        assert sent < 64 * 1024 * 1024, "the socket buffers swallowed far too much"
        remote.expect = sent
        remote.transport.resume_reading()
        await asyncio.wait_for(remote.got_all, 30)
        assert client.resumes == 1
        assert remote.received == sent
        client.transport.abort()
        await asyncio.wait_for(remote.lost, 5)
        server.close()

    run(scenario)


def test_a_client_that_does_not_trust_the_edge_fails_and_the_server_keeps_serving(
    transport_kind: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext], tmp_path: Path
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server, remote, client = await pair(contexts)
        port = server.sockets[0].getsockname()[1]
        stranger = client_context(ca_file=LocalCA.load_or_create(tmp_path / "other").ca_pem_path)
        with pytest.raises(ssl.SSLCertVerificationError):
            await tlslink.connect_link(
                loop,
                Collector,
                "127.0.0.1",
                port,
                ssl_context=stranger,
                server_hostname="localhost",
                handshake_timeout=5,
            )
        # Plain HTTP instead of a ClientHello: answered with a TLS alert, then closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer == b"" or answer[:1] == b"\x15", answer[:20]
        writer.close()
        # The established link still works.
        remote.expect = 5
        client.transport.write(b"hello")
        await asyncio.wait_for(remote.got_all, 5)
        assert remote.digest.hexdigest() == hashlib.sha256(b"hello").hexdigest()
        client.transport.abort()
        server.close()

    run(scenario)


def test_a_client_that_never_finishes_its_handshake_is_closed_at_the_timeout(
    transport_kind: str, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await tlslink.serve_links(
            loop, Collector, "127.0.0.1", 0, ssl_context=contexts[0], handshake_timeout=0.5
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = loop.time()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        elapsed = loop.time() - started
        assert 0.3 < elapsed < 5, elapsed
        writer.close()
        server.close()

    run(scenario)
