"""The agent's side of a visitor stream, in one process: an edge-side Link and an Agent joined
over loopback TCP (no TLS), upstreams served by the same event loop.

Covers what the agent does per visitor connection: the StreamHeader read (in the batch it came
with, or later), the upstream dial and its timeout, the PROXY preamble, TLS upstreams, and what
the visitor sees when something fails (a reset, or an RLY_613/RLY_614 page for HTTP)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import uvloop

import relay.agent.client as client
from relay.agent.client import Agent, AgentOptions, BoundEndpoint, EndpointSpec, _Deadlines
from relay.certs.local_ca import LocalCA
from relay.mux import MuxConfig, MuxStream, StreamReset
from relay.protocol import StreamHeader, StreamProtocol
from tests.e2e.procs import unanswered_port

ENDPOINT = "ep_test"


class EdgeSide:
    """The edge's Link handler: nothing to do, the test drives the link itself."""

    def link_made(self, link: Any) -> None:
        self.link = link

    def stream_opened(self, stream_id: int) -> None:
        raise AssertionError("the agent must not open visitor streams")

    def goaway(self, code: int) -> None:
        pass

    def pong(self, rtt_us: int) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        pass


class Tunnel:
    def __init__(self, agent: Agent, edge_link: Any) -> None:
        self.agent = agent
        self.edge_link = edge_link

    def open(
        self, first: bytes = b"", *, protocol: StreamProtocol = StreamProtocol.TCP
    ) -> tuple[MuxStream, bytes]:
        """Open a visitor stream as the edge does; ``first`` goes out after the header, in
        the same send. Returns the stream and the header's wire form."""
        link = self.edge_link
        stream_id = link.session.open_stream()
        stream = MuxStream(link, link.open_buffer_channel(stream_id))
        header = StreamHeader(
            ENDPOINT, "203.0.113.7:40000", protocol, "app.example", {"accept": "application/json"}
        ).to_wire()
        link.send(stream_id, header + first)
        return stream, header


@asynccontextmanager
async def tunnel(spec: EndpointSpec) -> AsyncIterator[Tunnel]:
    loop = asyncio.get_running_loop()
    config = MuxConfig()
    edge_link = config.new_link(EdgeSide(), loop, client=False)
    server = await loop.create_server(lambda: edge_link, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    agent = Agent(AgentOptions("127.0.0.1", port, "token", (spec,)), status=lambda line: None)
    agent.bound[ENDPOINT] = BoundEndpoint(spec, ENDPOINT, "tcp://edge:1", 1)
    agent_link = config.new_link(agent, loop, client=True)
    await loop.create_connection(lambda: agent_link, "127.0.0.1", port)
    try:
        yield Tunnel(agent, edge_link)
    finally:
        agent_link.close()
        edge_link.close()
        server.close()
        await asyncio.sleep(0.05)


async def read_all(stream: MuxStream, timeout: float = 5.0) -> bytes:
    """Everything until the agent ends the stream (FIN); StreamReset if it resets it."""
    chunks = []
    async with asyncio.timeout(timeout):
        while chunk := await stream.read():
            chunks.append(chunk)
    return b"".join(chunks)


@asynccontextmanager
async def upstream(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    """A server on this loop (its port); on the way out its connections are aborted too."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handler(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        await asyncio.sleep(0.01)


async def echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers the first line, upper-cased, then closes."""
    data = await reader.readline()
    writer.write(data.upper())
    await writer.drain()
    writer.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(asyncio.wait_for(scenario(), 30))


# --------------------------------------------------------------------------------------


def test_header_and_early_bytes_in_one_batch_reach_the_upstream_and_the_answer_returns() -> None:
    async def scenario() -> None:
        async with (
            upstream(echo_upper) as port,
            tunnel(EndpointSpec("tcp", "127.0.0.1", port)) as t,
        ):
            stream, _ = t.open(b"hello, upstream\n")
            stream.close()  # FIN before the upstream is even dialled
            assert await read_all(stream) == b"HELLO, UPSTREAM\n"
            assert len(t.agent._dial_deadlines) == 0

    run(scenario)


def test_header_split_across_deliveries_is_read_once_it_is_complete() -> None:
    async def scenario() -> None:
        async with (
            upstream(echo_upper) as port,
            tunnel(EndpointSpec("tcp", "127.0.0.1", port)) as t,
        ):
            link = t.edge_link
            stream, header = t.open()
            # Open a second stream whose header comes in three pieces.
            stream_id = link.session.open_stream()
            split = MuxStream(link, link.open_buffer_channel(stream_id))
            for piece in (header[:1], header[1:7], header[7:] + b"late\n"):
                link.send(stream_id, piece)
                await asyncio.sleep(0.05)
            split.close()
            stream.close()
            assert await read_all(split) == b"LATE\n"
            assert await read_all(stream) == b""
            assert len(t.agent._header_deadlines) == 0

    run(scenario)


def test_stream_without_a_whole_header_is_reset_at_the_header_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client, "HEADER_TIMEOUT", 0.3)

    async def scenario() -> None:
        async with tunnel(EndpointSpec("tcp", "127.0.0.1", closed_port())) as t:
            link = t.edge_link
            stream_id = link.session.open_stream()
            stream = MuxStream(link, link.open_buffer_channel(stream_id))
            link.send(stream_id, b"\x00\x40\x01")  # 64 bytes announced, 3 sent
            started = asyncio.get_running_loop().time()
            with pytest.raises(StreamReset):
                await read_all(stream)
            assert asyncio.get_running_loop().time() - started >= 0.25
            assert len(t.agent._header_deadlines) == 0

    run(scenario)


def test_stream_ending_inside_its_header_is_reset() -> None:
    async def scenario() -> None:
        async with tunnel(EndpointSpec("tcp", "127.0.0.1", closed_port())) as t:
            link = t.edge_link
            stream_id = link.session.open_stream()
            stream = MuxStream(link, link.open_buffer_channel(stream_id))
            link.send(stream_id, b"\x00\x40\x01")
            stream.close()
            with pytest.raises(StreamReset):
                await read_all(stream)

    run(scenario)


def test_stream_for_an_unknown_endpoint_is_reset() -> None:
    async def scenario() -> None:
        async with tunnel(EndpointSpec("tcp", "127.0.0.1", closed_port())) as t:
            link = t.edge_link
            stream_id = link.session.open_stream()
            stream = MuxStream(link, link.open_buffer_channel(stream_id))
            link.send(stream_id, StreamHeader("ep_nobody", "192.0.2.1:5").to_wire())
            with pytest.raises(StreamReset):
                await read_all(stream)

    run(scenario)


def test_tcp_visitor_is_reset_when_the_upstream_refuses() -> None:
    async def scenario() -> None:
        async with tunnel(EndpointSpec("tcp", "127.0.0.1", closed_port())) as t:
            stream, _ = t.open(b"anyone?")
            with pytest.raises(StreamReset):
                await read_all(stream)

    run(scenario)


def test_http_visitor_gets_a_502_rly_613_page_when_the_upstream_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = closed_port()
    page: dict[str, Any] = {}

    async def scenario() -> None:
        async with tunnel(EndpointSpec("http", "127.0.0.1", port)) as t:
            stream, _ = t.open(b"GET / HTTP/1.1\r\n\r\n", protocol=StreamProtocol.HTTP)
            answer = await read_all(stream)
            assert answer.startswith(b"HTTP/1.1 502 ")
            page.update(json.loads(answer.partition(b"\r\n\r\n")[2]))
            assert page["code"] == "RLY_613"

    with caplog.at_level("WARNING", logger="relay.agent"):
        run(scenario)
    # The agent's own line names the upstream and the request id the visitor was shown.
    [line] = [r.getMessage() for r in caplog.records if "RLY" not in r.getMessage()]
    assert line.startswith(f"visitor 203.0.113.7:40000: upstream 127.0.0.1:{port}: "), line
    assert line.endswith(f"(request id {page['request_id']})"), line


def test_http_visitor_gets_a_504_rly_614_page_when_the_upstream_connect_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client, "UPSTREAM_CONNECT_TIMEOUT", 0.3)

    async def scenario() -> None:
        with unanswered_port() as port:
            async with tunnel(EndpointSpec("http", "127.0.0.1", port)) as t:
                stream, _ = t.open(b"GET / HTTP/1.1\r\n\r\n", protocol=StreamProtocol.HTTP)
                answer = await read_all(stream)
                assert answer.startswith(b"HTTP/1.1 504 ")
                assert json.loads(answer.partition(b"\r\n\r\n")[2])["code"] == "RLY_614"
                assert len(t.agent._dial_deadlines) == 0

    run(scenario)


def test_tcp_visitor_is_reset_when_the_upstream_connect_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client, "UPSTREAM_CONNECT_TIMEOUT", 0.3)

    async def scenario() -> None:
        with unanswered_port() as port:
            async with tunnel(EndpointSpec("tcp", "127.0.0.1", port)) as t:
                stream, _ = t.open(b"x")
                with pytest.raises(StreamReset):
                    await read_all(stream)

    run(scenario)


def tls_server_context(tmp_path: Path) -> ssl.SSLContext:
    chain, key = LocalCA.load_or_create(tmp_path).issue_server_cert(["localhost"], ["127.0.0.1"])
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    return ctx


def test_https_upstream_is_dialled_with_tls(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with upstream(echo_upper, tls_server_context(tmp_path)) as port:
            spec = EndpointSpec(
                "http", "127.0.0.1", port, upstream_scheme="https", upstream_tls_verify=False
            )
            async with tunnel(spec) as t:
                stream, _ = t.open(b"over tls\n", protocol=StreamProtocol.HTTP)
                assert await read_all(stream) == b"OVER TLS\n"

    run(scenario)


def test_https_upstream_that_never_finishes_its_handshake_times_out_with_504(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client, "UPSTREAM_CONNECT_TIMEOUT", 0.3)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts TCP, never answers the ClientHello
        writer.close()

    async def scenario() -> None:
        async with upstream(silent) as port:
            spec = EndpointSpec(
                "http", "127.0.0.1", port, upstream_scheme="https", upstream_tls_verify=False
            )
            async with tunnel(spec) as t:
                stream, _ = t.open(b"GET / HTTP/1.1\r\n\r\n", protocol=StreamProtocol.HTTP)
                answer = await read_all(stream)
                assert answer.startswith(b"HTTP/1.1 504 ") and b"RLY_614" in answer

    run(scenario)


def test_proxy_protocol_v1_preamble_precedes_the_visitor_bytes() -> None:
    async def scenario() -> None:
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.set_result(await reader.read())
            writer.close()

        spec = EndpointSpec("tcp", "127.0.0.1", 0, proxy_protocol="v1")
        async with upstream(record) as port, tunnel(replace(spec, upstream_port=port)) as t:
            stream, _ = t.open(b"payload")
            stream.close()
            await read_all(stream)
            data = await received
        assert data == f"PROXY TCP4 203.0.113.7 127.0.0.1 40000 {port}\r\n".encode() + b"payload"

    run(scenario)


def test_upstream_hostname_is_resolved_before_dialling() -> None:
    async def scenario() -> None:
        async with (
            upstream(echo_upper) as port,
            tunnel(EndpointSpec("tcp", "localhost", port)) as t,
        ):
            stream, _ = t.open(b"by name\n")
            assert await read_all(stream) == b"BY NAME\n"

    run(scenario)


# --------------------------------------------------------------------------------------


class Expiring:
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    def expire(self) -> None:
        self.log.append(self.name)


def test_deadlines_expire_what_is_left_in_order_on_one_timer() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines()
        expired: list[str] = []
        items = [Expiring(expired, name) for name in "abcd"]
        for item in items[:2]:
            deadlines.add(item, loop, 0.1)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        for item in items[2:]:
            deadlines.add(item, loop, 0.1)  # type: ignore[arg-type]
        deadlines.discard(items[0])  # type: ignore[arg-type]
        deadlines.discard(items[3])  # type: ignore[arg-type]
        await asyncio.sleep(0.08)
        assert expired == ["b"]
        await asyncio.sleep(0.08)
        assert expired == ["b", "c"]
        assert len(deadlines) == 0

    run(scenario)


def test_a_lone_bulk_download_is_framed_at_once_and_arrives_whole() -> None:
    """The upstream sends 16 MiB as fast as it can. The agent's upstream pump reads only
    what the session frames at once and waits for the link's flush when that is full, so
    nearly every byte takes the one-copy path (none waits in the stream's backlog first);
    and every byte arrives, in order."""
    size = 16 << 20
    block = bytes(range(256)) * 256  # 64 KiB

    async def send_bulk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        writer.close()

    async def scenario() -> None:
        async with (
            upstream(send_bulk) as port,
            tunnel(EndpointSpec("tcp", "127.0.0.1", port)) as t,
        ):
            stream, _ = t.open(b"go\n")
            got = hashlib.sha256()
            n = 0
            async with asyncio.timeout(20):
                while chunk := await stream.read():
                    got.update(chunk)
                    n += len(chunk)
            assert n == size
            assert got.hexdigest() == hashlib.sha256(block * (size // len(block))).hexdigest()
            stats = t.agent.link.session.stats()
            assert stats["bytes_framed_directly"] >= 0.9 * size, stats

    run(scenario)
