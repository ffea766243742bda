"""An ``EndpointEnded`` (protocol 2) from the edge: the agent drops that endpoint at once
when a reservation took it away (RLY_207, RLY_208: not asked for again, the others serve
on), only says so for another code, and ignores one for an endpoint it does not hold.
Against an edge played by a script, over a real multiplexed link."""

from __future__ import annotations

import asyncio

import uvloop

from relay.agent.client import Agent, EndpointSpec
from relay.mux import ControlChannel
from relay.protocol import Auth, AuthOk, Bind, Bound, EndpointEnded, Restart
from tests.unit.scripted_edge import ScriptedEdge, handshaken_agent

SPECS = tuple(EndpointSpec("http", "127.0.0.1", port) for port in (1, 2, 3))


class EndingEdge(ScriptedEdge):
    """Binds three endpoints; once the agent's session is up, ends two and names one
    it never had, then asks it to reconnect (what the test waits for)."""

    def __init__(self) -> None:
        self.go = asyncio.Event()

    async def script(self, control: ControlChannel) -> None:
        assert isinstance(await control.recv(), Auth)
        control.send(AuthOk("s_1", "test", "local", "tok"))
        for n in (1, 2, 3):
            bind = await control.recv()
            assert isinstance(bind, Bind)
            control.send(Bound(bind.request_id, f"ep_{n}", f"http://n{n}.example", 0))
        await self.go.wait()
        control.send(EndpointEnded("ep_1", "RLY_207", "n1.example is reserved by another account"))
        control.send(EndpointEnded("ep_9", "RLY_207", "not this agent's"))
        control.send(EndpointEnded("ep_2", "RLY_611", "the agent serving this host is gone"))
        control.send(Restart("done"))


async def ended(lines: list[str]) -> Agent:
    edge = EndingEdge()
    async with handshaken_agent(edge, SPECS, lines.append) as agent:
        agent.sessions_started = 1  # as run() counts a session once its handshake is done
        edge.go.set()
        assert agent._control is not None
        assert isinstance(await agent._recv_or_end(agent._control), Restart)
        return agent


def test_an_endpoint_taken_away_is_dropped_and_another_ended_one_is_only_said() -> None:
    lines: list[str] = []
    agent = uvloop.run(asyncio.wait_for(ended(lines), 30))
    assert sorted(agent.bound) == ["ep_3"]
    assert agent.refused == {SPECS[0]}  # not asked for again at the next reconnect
    assert (
        "http://n1.example is no longer served (error RLY_207: n1.example is reserved by "
        "another account); not asked for again, 2 endpoint(s) serve on"
    ) in lines
    assert (
        "http://n2.example is no longer served (error RLY_611: the agent serving this host is gone)"
    ) in lines
    assert not any("not this agent's" in line for line in lines), lines
