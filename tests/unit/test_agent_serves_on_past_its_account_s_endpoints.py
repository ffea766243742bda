"""A re-bind refused because the edge holds as many endpoints of the token's account as
it allows (RLY_206): the agent leaves that endpoint out and serves the others, instead
of ending the session (and so dropping them all) at every reconnect, and asks for it
again while the session lasts, until it is served. It does not ask for a new port or
name (that would be refused the same). With nothing served, the session ends (the agent
reconnects with backoff); before any session served, the refusal fails the agent as
before. Against an edge played by a script, over a real multiplexed link."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

import relay.agent.binds_later as binds_later
from relay.agent.client import Agent, EndpointSpec, SessionEnded
from relay.errors import TooManyEndpoints
from relay.mux import ControlChannel, StreamReset
from relay.protocol import Auth, AuthOk, Bind, Bound
from relay.protocol import BindError as BindErrorMessage
from tests.unit.scripted_edge import ScriptedEdge, handshaken_agent

SPECS = tuple(EndpointSpec("tcp", "127.0.0.1", port) for port in (1, 2, 3))
FULL = "account acc_x holds 3 TCP ports on this edge, its limit (max_tcp_ports_per_account)"


class FullEdge(ScriptedEdge):
    """Refuses the binds of ``full`` ports for the account's limit ``refusals`` times
    each, binds every other; records every bind it was asked for."""

    def __init__(self, full: set[int], refusals: int = 1_000) -> None:
        self.full = full
        self.refusals = refusals
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
            refused = sum(port == bind.remote_port for _, port in self.asked) <= self.refusals
            if bind.remote_port in self.full and refused:
                control.send(BindErrorMessage(bind.request_id, TooManyEndpoints.code, FULL))
            else:
                port = bind.remote_port
                control.send(Bound(bind.request_id, f"ep_{port}", f"tcp://e:{port}", port))


async def session(
    edge: FullEdge, served_before: bool, lines: list[str], serve_for: float = 0.0
) -> Agent:
    """The agent's handshake with ``edge`` (as a reconnect when ``served_before``), then
    its control loop for up to ``serve_for`` s, or until it serves all three."""

    def reconnecting(agent: Agent) -> None:
        if served_before:
            agent.sessions_started = 1  # a session served: this is a reconnect
            ports = {spec: 20000 + n for n, spec in enumerate(SPECS, start=1)}
            agent.remembered_ports = ports
            agent.urls = {spec: f"tcp://e:{port}" for spec, port in ports.items()}

    loop = asyncio.get_running_loop()
    async with handshaken_agent(edge, SPECS, lines.append, reconnecting) as agent:
        if serve_for:
            assert agent._control is not None
            loop_task = asyncio.ensure_future(agent._control_loop(agent._control))
            deadline = loop.time() + serve_for
            while len(agent.bound) < 3 and loop.time() < deadline:
                await asyncio.sleep(0.02)
            loop_task.cancel()
        return agent


def test_a_reconnected_agent_serves_the_others_and_asks_again_until_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(binds_later, "FIRST_AFTER", 0.05)
    lines: list[str] = []
    edge = FullEdge({20002}, refusals=2)  # room for it after two refusals
    agent = uvloop.run(asyncio.wait_for(session(edge, True, lines, serve_for=10), 30))
    assert sorted(agent.bound) == ["ep_20001", "ep_20002", "ep_20003"]
    # As remembered, never a new port; asked again (ids far above the first binds).
    assert [port for _, port in edge.asked] == [20001, 20002, 20003, 20002, 20002]
    assert [i for i, _ in edge.asked][3:] == [binds_later.FIRST_ID, binds_later.FIRST_ID + 1]
    said = f"tcp://e:20002 is not served now (error RLY_206: {FULL}); asked for again later"
    assert lines.count(said) == 1  # said once, not at every ask
    assert agent.refused == set()


def test_with_nothing_served_the_session_ends_and_the_agent_reconnects() -> None:
    lines: list[str] = []
    edge = FullEdge({20001, 20002, 20003})
    with pytest.raises(SessionEnded, match="no endpoint is served now"):
        uvloop.run(asyncio.wait_for(session(edge, True, lines), 30))


def test_before_any_session_served_the_refusal_fails_the_agent() -> None:
    lines: list[str] = []
    with pytest.raises(TooManyEndpoints, match="max_tcp_ports_per_account"):
        uvloop.run(asyncio.wait_for(session(FullEdge({0}), False, lines), 30))  # port 0: any


def test_asks_again_wait_longer_each_time_up_to_a_minute() -> None:
    later: binds_later.BindsLater[str] = binds_later.BindsLater()
    delays = [later.next_delay() for _ in range(8)]
    assert delays[:5] == [5.0, 10.0, 20.0, 40.0, 60.0] and set(delays[4:]) == {60.0}
    later.leave_out("a")
    later.leave_out("a")  # once
    later.leave_out("b")
    asks = later.due()
    assert [spec for _, spec in asks] == ["a", "b"] and later.waiting == []
    assert later.answered(asks[1][0]) == "b" and later.answered(asks[1][0]) is None
    assert later.answered(1) is None  # a session's first bind: not an ask again
    later.clear()
    assert later.asked == {} and later.next_delay() == 5.0
