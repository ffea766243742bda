"""A re-bind refused because the edge holds as many endpoints of the token's account as
it allows (RLY_206): the agent leaves that endpoint out of the session and serves the
others, instead of ending the session, and so dropping them all, at every reconnect. It
does not ask for a new port or name either (that would be refused the same). Before any
session served, the refusal fails the agent as before. Against an edge played by a
script, over a real multiplexed link."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from relay.agent.client import Agent, AgentOptions, EndpointSpec
from relay.errors import TooManyEndpoints
from relay.mux import ControlChannel, MuxConfig, StreamReset
from relay.protocol import PROTOCOL_VERSION, Auth, AuthOk, Bind, Bound
from relay.protocol import BindError as BindErrorMessage
from tests.unit.scripted_edge import ScriptedEdge

SPECS = tuple(EndpointSpec("tcp", "127.0.0.1", port) for port in (1, 2, 3))
FULL = "account acc_x holds 3 TCP ports on this edge, its limit (max_tcp_ports_per_account)"


class FullEdge(ScriptedEdge):
    """Binds the first and third endpoints; refuses the second for the account's limit,
    and records every bind it was asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []  # (request id, port asked for)

    async def script(self, control: ControlChannel) -> None:
        assert isinstance(await control.recv(), Auth)
        control.send(AuthOk("s_1", "test", "local", "tok"))
        while True:
            try:
                bind = await control.recv()
            except (StreamReset, EOFError):
                return  # the agent's link closed: the test is over
            assert isinstance(bind, Bind)
            self.asked.append((bind.request_id, bind.remote_port))
            if bind.request_id == 2:
                control.send(BindErrorMessage(2, TooManyEndpoints.code, FULL))
            else:
                port = 20000 + bind.request_id
                control.send(Bound(bind.request_id, f"ep_{port}", f"tcp://e:{port}", port))


async def handshake(served_before: bool, lines: list[str]) -> tuple[Agent, FullEdge]:
    loop = asyncio.get_running_loop()
    edge = FullEdge()
    edge_link = MuxConfig().new_link(edge, loop, client=False)
    server = await loop.create_server(lambda: edge_link, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    agent = Agent(AgentOptions("127.0.0.1", port, "tok", SPECS), status=lines.append)
    if served_before:
        agent.sessions_started = 1  # a session served: this is a reconnect
        agent.remembered_ports = {spec: 20000 + n for n, spec in enumerate(SPECS, start=1)}
        agent.urls = {spec: f"tcp://e:{20000 + n}" for n, spec in enumerate(SPECS, start=1)}
    agent_link = MuxConfig().new_link(agent, loop, client=True)
    try:
        await loop.create_connection(lambda: agent_link, "127.0.0.1", port)
        await agent._handshake(agent_link, PROTOCOL_VERSION)
        return agent, edge
    finally:
        agent_link.close()
        edge_link.close()
        server.close()
        await asyncio.sleep(0.05)


def test_a_reconnected_agent_leaves_the_refused_endpoint_out_and_serves_the_others() -> None:
    lines: list[str] = []
    agent, edge = uvloop.run(asyncio.wait_for(handshake(True, lines), 30))
    assert sorted(agent.bound) == ["ep_20001", "ep_20003"]
    # Each asked for once, as remembered: no second bind of the refused one.
    assert edge.asked == [(1, 20001), (2, 20002), (3, 20003)]
    assert f"tcp://e:20002 is not served now (error RLY_206: {FULL}); the others serve on" in (
        lines
    )
    assert agent.refused == set()  # asked for again at the next session


def test_before_any_session_served_the_refusal_fails_the_agent() -> None:
    lines: list[str] = []
    with pytest.raises(TooManyEndpoints, match="max_tcp_ports_per_account"):
        uvloop.run(asyncio.wait_for(handshake(False, lines), 30))
