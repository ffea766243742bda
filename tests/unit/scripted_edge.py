"""An edge played by a script, for the agent's unit tests: a Link handler that serves the
agent's control stream with ``script(control)``, and an agent linked to it over loopback
TCP (no TLS) that has run its handshake (auth and binds)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from relay.agent.client import Agent, AgentOptions, EndpointSpec
from relay.mux import ControlChannel, MuxConfig, MuxStream
from relay.protocol import PROTOCOL_VERSION


class ScriptedEdge:
    """The edge side of one link: accepts the agent's control stream and runs ``script``
    on it; subclasses write the script."""

    def link_made(self, link: Any) -> None:
        self.link = link

    def stream_opened(self, stream_id: int) -> None:
        self.link.session.accept_stream(stream_id)
        control = ControlChannel(MuxStream(self.link, self.link.open_buffer_channel(stream_id)))
        self.task = asyncio.get_running_loop().create_task(self.script(control))

    async def script(self, control: ControlChannel) -> None:
        raise NotImplementedError

    def goaway(self, code: int) -> None:
        pass

    def pong(self, rtt_us: int) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        pass


@asynccontextmanager
async def handshaken_agent(
    edge: ScriptedEdge,
    specs: tuple[EndpointSpec, ...],
    status: Callable[[str], None],
    prepare: Callable[[Agent], None] | None = None,
) -> AsyncIterator[Agent]:
    """An agent for ``specs`` linked to ``edge``, its handshake done (raises what it
    raised); both links are closed on the way out. ``prepare``: called with the agent
    before its handshake (to make it one that reconnects, say)."""
    loop = asyncio.get_running_loop()
    edge_link = MuxConfig().new_link(edge, loop, client=False)
    server = await loop.create_server(lambda: edge_link, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    agent = Agent(AgentOptions("127.0.0.1", port, "tok", specs), status=status)
    if prepare is not None:
        prepare(agent)
    agent_link = MuxConfig().new_link(agent, loop, client=True)
    try:
        await loop.create_connection(lambda: agent_link, "127.0.0.1", port)
        await agent._handshake(agent_link, PROTOCOL_VERSION)
        yield agent
    finally:
        agent_link.close()
        edge_link.close()
        server.close()
        await asyncio.sleep(0.05)
