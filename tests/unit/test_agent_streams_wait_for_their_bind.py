"""After a reconnect the edge routes visitors the moment it binds, so a visitor's stream
can reach the agent in the same read as the Bound reply, and be looked at before the
control loop has read that reply. Such a stream waits for the binds (it is served), and a
stream for an endpoint the agent never bound gets 503 RLY_611, not a 502 that blames the
upstream."""

from __future__ import annotations

import asyncio
import json

import uvloop

from relay.agent.client import EndpointSpec
from relay.mux import ControlChannel, MuxStream
from relay.protocol import Auth, AuthOk, Bind, Bound, StreamHeader, StreamProtocol
from tests.unit.scripted_edge import ScriptedEdge, handshaken_agent

ENDPOINT = "ep_new"


class EdgeThatRoutesAtOnce(ScriptedEdge):
    """Answers Auth, then each Bind with Bound — and in the same flush opens a visitor
    stream for ``visitor_endpoint`` carrying a whole HTTP request."""

    def __init__(self, visitor_endpoint: str) -> None:
        self.visitor_endpoint = visitor_endpoint
        self.visitor: asyncio.Future[MuxStream] = asyncio.get_running_loop().create_future()

    async def script(self, control: ControlChannel) -> None:
        assert isinstance(await control.recv(), Auth)
        control.send(AuthOk("s_1", "test", "local", "tok"))
        bind = await control.recv()
        assert isinstance(bind, Bind)
        control.send(Bound(bind.request_id, ENDPOINT, "http://app.example", 0))
        link = self.link
        stream_id = link.session.open_stream()
        stream = MuxStream(link, link.open_buffer_channel(stream_id))
        header = StreamHeader(
            self.visitor_endpoint,
            "203.0.113.9:5000",
            StreamProtocol.HTTP,
            "app.example",
            {"accept": "application/json"},
        ).to_wire()
        link.send(stream_id, header + b"GET /hello HTTP/1.1\r\nHost: app.example\r\n\r\n")
        self.visitor.set_result(stream)


async def answer_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
    await writer.drain()
    writer.close()


async def visitor_answer(visitor_endpoint: str) -> bytes:
    origin = await asyncio.start_server(answer_hello, "127.0.0.1", 0)
    spec = EndpointSpec("http", "127.0.0.1", origin.sockets[0].getsockname()[1])
    edge = EdgeThatRoutesAtOnce(visitor_endpoint)
    try:
        async with handshaken_agent(edge, (spec,), lambda line: None):
            stream = await asyncio.wait_for(edge.visitor, 5)
            chunks = []
            async with asyncio.timeout(5):
                while chunk := await stream.read():
                    chunks.append(chunk)
            return b"".join(chunks)
    finally:
        origin.close()


def test_a_stream_that_overtakes_its_bound_reply_is_served() -> None:
    answer = uvloop.run(asyncio.wait_for(visitor_answer(ENDPOINT), 30))
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer
    assert answer.endswith(b"hello")


def test_a_stream_for_an_endpoint_never_bound_gets_503_rly_611() -> None:
    answer = uvloop.run(asyncio.wait_for(visitor_answer("ep_unknown"), 30))
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["code"] == "RLY_611"
