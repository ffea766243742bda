"""``--links K``: one agent, K connections to the edge (cloudflared holds four).

Each link is a whole session with the same agent id and its own link index. Link 0 binds
the endpoints; once it holds them all, links 1..K-1 connect, each in a process of its own
(relay/agent/link_process.py: a core each), and bind exactly the same names and ports.
The edge shares each endpoint's visitors among the links (relay/edge/members.py); on an
edge with workers the links usually land on different workers, so one agent's visitors
use several cores at both ends. A link that is lost takes no visitors from that moment
(the edge sends new ones to the others) and reconnects by itself (a link process that
dies is started again). What cannot heal (a refused token, a Stop) ends every link.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from relay.agent.client import Agent, AgentOptions
from relay.agent.link_process import BUSY_PERIOD, LinkChild
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
        self.leader = Agent(options, status=status)
        self.children: list[LinkChild] = []
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        self.leader.stop()
        for child in self.children:
            child.stop()

    async def run(self) -> None:
        """Run every link until stopped; raise the first error that cannot heal."""
        leader = self.leader
        leader.pops.busy = lambda: {c.pop for c in self.children if c.pop is not None}
        tasks = [asyncio.ensure_future(leader.run())]
        telling: asyncio.Future[None] | None = None
        try:
            bound = asyncio.ensure_future(leader.all_bound.wait())
            await asyncio.wait({tasks[0], bound}, return_when=asyncio.FIRST_COMPLETED)
            bound.cancel()
            if not tasks[0].done() and not self._stopping:
                for index in range(1, self.links):
                    child = LinkChild(index, self.options, leader, self.status, self._busy_for)
                    self.children.append(child)
                    tasks.append(asyncio.ensure_future(child.run()))
                telling = asyncio.ensure_future(self._tell_links())
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.stop()
            if telling is not None:
                telling.cancel()
            with contextlib.suppress(Exception):
                # Children end when their stdin does; their tasks wait for them to exit.
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
            for task in tasks:
                if not task.done():
                    task.cancel()

    def _busy_for(self, child: LinkChild) -> set[Pop]:
        """The PoPs the links other than ``child`` are connected to now."""
        busy = {c.pop for c in self.children if c is not child and c.pop is not None}
        if self.leader.connected and self.leader.pop is not None:
            busy.add(self.leader.pop)
        return busy

    async def _tell_links(self) -> None:
        """Tell each link process what link 0 holds and where the other links are."""
        while not self._stopping:
            for child in self.children:
                child.tell()
            await asyncio.sleep(BUSY_PERIOD)
