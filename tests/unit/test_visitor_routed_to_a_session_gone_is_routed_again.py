"""A visitor's pump is made when its socket is accepted, and opens its stream a loop turn
later, when the socket connects (relay/_fastpath.pyx ``Pump.connection_made``). A session
that went away in between (its agent's GoAway: a pool member or a link leaving) would
refuse the stream; the pump routes the visitor again instead (``Pump.reroute``): to the
protocol the endpoint gives now, or, given none, it aborts the socket. A pump whose
session is still there never asks."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from relay.agent.client import EndpointSpec
from relay.mux import Pump
from relay.protocol import StreamHeader, StreamProtocol
from tests.unit.test_agent_visitor_streams import ENDPOINT, echo_upper, run, tunnel, upstream

pytestmark = pytest.mark.timeout(30)


def header(transport: Any) -> bytes:
    return StreamHeader(ENDPOINT, "203.0.113.7:40000", StreamProtocol.TCP).to_wire()


class Stand(asyncio.Protocol):
    """What the endpoint routes the visitor to the second time: says so, and closes."""

    def __init__(self) -> None:
        self.made = False

    def connection_made(self, transport: Any) -> None:
        self.made = True
        transport.write(b"routed again")
        transport.close()


async def visit(link: Any, reroute: Any, send: bytes = b"") -> tuple[Pump, bytes]:
    """A visitor socket served by a Pump on ``link``; what it reads until the end."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    pump = Pump(link, header_factory=header)
    pump.reroute = reroute
    await loop.connect_accepted_socket(lambda: pump, ours)
    theirs.setblocking(False)
    if send:
        await loop.sock_sendall(theirs, send)
        theirs.shutdown(socket.SHUT_WR)
    got = b""
    async with asyncio.timeout(5):
        while True:
            try:
                chunk = await loop.sock_recv(theirs, 65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    theirs.close()
    return pump, got


async def agent_went_away(t: Any) -> None:
    t.agent.link.session.go_away(0)
    t.agent.link.schedule_flush()
    deadline = time.monotonic() + 5
    while not t.edge_link.session.remote_went_away:
        assert time.monotonic() < deadline, "the GoAway never arrived"
        await asyncio.sleep(0.01)


def test_a_visitor_for_a_session_gone_away_goes_where_the_endpoint_says_now() -> None:
    async def scenario() -> None:
        async with (
            upstream(echo_upper) as port,
            tunnel(EndpointSpec("tcp", "127.0.0.1", port)) as t,
        ):
            await agent_went_away(t)
            before = t.edge_link.session.stream_count
            stand = Stand()
            pump, got = await visit(t.edge_link, lambda: stand)
            assert stand.made and got == b"routed again"
            assert pump.finished and pump.reroute is None
            assert t.edge_link.session.stream_count == before  # no stream was tried

    run(scenario)


def test_with_nowhere_else_to_go_the_visitor_is_aborted() -> None:
    async def scenario() -> None:
        async with (
            upstream(echo_upper) as port,
            tunnel(EndpointSpec("tcp", "127.0.0.1", port)) as t,
        ):
            await agent_went_away(t)
            asked: list[bool] = []
            pump, got = await visit(t.edge_link, lambda: asked.append(True))
            assert asked == [True] and got == b"" and pump.finished

    run(scenario)


def test_a_session_still_there_serves_the_visitor_without_asking() -> None:
    async def scenario() -> None:
        async with (
            upstream(echo_upper) as port,
            tunnel(EndpointSpec("tcp", "127.0.0.1", port)) as t,
        ):
            asked: list[bool] = []
            _, got = await visit(t.edge_link, lambda: asked.append(True), b"hello there")
            assert got == b"HELLO THERE" and asked == []

    run(scenario)
