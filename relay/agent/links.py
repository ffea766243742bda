"""``--links K``: one agent, K connections to the edge (cloudflared holds four).

Each link is a whole session with the same agent id and its own link index. Link 0 binds
the endpoints; once it holds them all, links 1..K-1 connect and bind exactly the same
names and ports, and the edge shares each endpoint's visitors among the links
(relay/edge/members.py) — on an edge with workers, the links usually land on different
workers, so one agent's visitors use several cores there. A link that is lost takes no
visitors from that moment (the edge sends new ones to the others) and reconnects by
itself. What cannot heal (a refused token, a Stop) ends every link.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable

from relay.agent.client import Agent, AgentOptions
from relay.agent.pops import Pop

#: At most this many links (the edge refuses a link index of 16 or more).
MAX_LINKS = 16


class LinkedAgent:
    def __init__(self, options: AgentOptions, links: int, *, status: Callable[[str], None]) -> None:
        if not 1 <= links <= MAX_LINKS:
            raise ValueError(f"links must be 1..{MAX_LINKS}, not {links}")
        self.options = options
        self.links = links
        self.status = status
        self.agents: list[Agent] = [Agent(options, status=status)]
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        for agent in self.agents:
            agent.stop()

    async def run(self) -> None:
        """Run every link until stopped; raise the first error that cannot heal."""
        leader = self.agents[0]
        leader.pops.busy = self._busy_for(leader)
        tasks = [asyncio.ensure_future(leader.run())]
        try:
            bound = asyncio.ensure_future(leader.all_bound.wait())
            await asyncio.wait({tasks[0], bound}, return_when=asyncio.FIRST_COMPLETED)
            bound.cancel()
            if not tasks[0].done() and not self._stopping:
                for index in range(1, self.links):
                    agent = Agent(
                        dataclasses.replace(self.options, link=index, admin_listen=None),
                        status=_prefixed(self.status, f"link {index}: "),
                        leader=leader,
                    )
                    agent.pops.busy = self._busy_for(agent)
                    self.agents.append(agent)
                    tasks.append(asyncio.ensure_future(agent.run()))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.stop()
            for task in tasks:
                if not task.done():
                    task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks, return_exceptions=True)

    def _busy_for(self, agent: Agent) -> Callable[[], set[Pop]]:
        """The PoPs ``agent``'s sibling links are connected to now."""
        return lambda: {
            a.pop for a in self.agents if a is not agent and a.connected and a.pop is not None
        }


def _prefixed(status: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda line: status(prefix + line)
