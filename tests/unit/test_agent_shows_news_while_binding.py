"""News from the edge (a Notice, a certificate's state) can arrive between a Bind and its
reply: the agent shows it and keeps waiting for the reply, instead of calling the edge a
protocol violator."""

from __future__ import annotations

import asyncio

import uvloop

from relay.agent.client import Agent, EndpointSpec, describe_certificate
from relay.mux import ControlChannel
from relay.protocol import Auth, AuthOk, Bind, Bound, CertStatus, Notice
from tests.unit.scripted_edge import ScriptedEdge, handshaken_agent


class ChattyEdge(ScriptedEdge):
    """Answers Auth; answers each Bind with news first, then Bound, then more news."""

    async def script(self, control: ControlChannel) -> None:
        assert isinstance(await control.recv(), Auth)
        control.send(AuthOk("s_1", "test", "local", "tok"))
        for n in (1, 2):
            bind = await control.recv()
            assert isinstance(bind, Bind)
            control.send(Notice("info", f"before bound {n}"))
            control.send(Bound(bind.request_id, f"ep_{n}", f"https://n{n}.example", 0))
            control.send(CertStatus(f"ep_{n}", f"n{n}.example", "pending", "acme"))


async def bind_two(lines: list[str]) -> Agent:
    specs = (EndpointSpec("https", "127.0.0.1", 1), EndpointSpec("https", "127.0.0.1", 2))
    async with handshaken_agent(ChattyEdge(), specs, lines.append) as agent:
        return agent


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
    renewal = describe_certificate(
        CertStatus(
            "ep_1", "a.example", "failed", "acme", expires="2027-01-01T00:00:00+00:00",
            code="RLY_805", message="CA down",
        )
    )  # fmt: skip
    assert renewal == (
        "Certificate for a.example: renewal failed (error RLY_805: CA down); "
        "valid until 2027-01-01T00:00:00+00:00"
    )
