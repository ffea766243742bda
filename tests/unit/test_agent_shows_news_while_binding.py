"""News from the edge (a Notice, a certificate's state) can arrive between a Bind and its
reply: the agent shows it and keeps waiting for the reply, instead of calling the edge a
protocol violator."""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

from relay.agent.client import Agent, AgentOptions, EndpointSpec, describe_certificate
from relay.mux import ControlChannel, MuxConfig, MuxStream
from relay.protocol import Auth, AuthOk, Bind, Bound, CertStatus, Notice


class ChattyEdge:
    """Answers Auth; answers each Bind with news first, then Bound, then more news."""

    def link_made(self, link: Any) -> None:
        self.link = link

    def stream_opened(self, stream_id: int) -> None:
        self.link.session.accept_stream(stream_id)
        control = ControlChannel(MuxStream(self.link, self.link.open_buffer_channel(stream_id)))
        self.task = asyncio.get_running_loop().create_task(self.serve(control))

    async def serve(self, control: ControlChannel) -> None:
        assert isinstance(await control.recv(), Auth)
        control.send(AuthOk("s_1", "test", "local", "tok"))
        for n in (1, 2):
            bind = await control.recv()
            assert isinstance(bind, Bind)
            control.send(Notice("info", f"before bound {n}"))
            control.send(Bound(bind.request_id, f"ep_{n}", f"https://n{n}.example", 0))
            control.send(CertStatus(f"ep_{n}", f"n{n}.example", "pending", "acme"))

    def goaway(self, code: int) -> None:
        pass

    def pong(self, rtt_us: int) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        pass


async def bind_two(lines: list[str]) -> Agent:
    loop = asyncio.get_running_loop()
    edge_link = MuxConfig().new_link(ChattyEdge(), loop, client=False)
    server = await loop.create_server(lambda: edge_link, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    specs = (EndpointSpec("https", "127.0.0.1", 1), EndpointSpec("https", "127.0.0.1", 2))
    agent = Agent(AgentOptions("127.0.0.1", port, "tok", specs), status=lines.append)
    agent_link = MuxConfig().new_link(agent, loop, client=True)
    try:
        await loop.create_connection(lambda: agent_link, "127.0.0.1", port)
        await agent._handshake(agent_link)
        return agent
    finally:
        agent_link.close()
        edge_link.close()
        server.close()
        await asyncio.sleep(0.05)


def test_news_between_a_bind_and_its_reply_is_shown_and_both_endpoints_bind() -> None:
    lines: list[str] = []
    agent = uvloop.run(asyncio.wait_for(bind_two(lines), 30))
    assert sorted(agent.bound) == ["ep_1", "ep_2"]
    assert "notice from the edge: before bound 1" in lines
    assert "notice from the edge: before bound 2" in lines
    assert "Certificate for n1.example: being issued (acme)" in lines


def test_a_local_ca_certificate_tells_the_user_what_visitors_must_trust() -> None:
    line = describe_certificate(
        CertStatus("ep_1", "app.localhost", "issued", "local", expires="2027-03-01T00:00:00Z")
    )
    assert line.startswith("Certificate for app.localhost: issued (local, valid until 2027")
    assert "visitors must trust that CA" in line
    failed = describe_certificate(
        CertStatus("ep_1", "a.example", "failed", "acme", code="RLY_805", message="CA down")
    )
    assert failed == "Certificate for a.example: not issued: error RLY_805: CA down"
