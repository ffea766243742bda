"""``--links K``: one agent, K connections to the edge (cloudflared holds four).

Each link is a whole session with the same agent id and its own link index. Link 0 binds
the endpoints; once it holds them all, links 1..K-1 connect, each in a process of its own
(relay/agent/link_process.py: a core each), and bind exactly the same names and ports.
The edge shares each endpoint's visitors among the links (relay/edge/members.py); on an
edge with workers each link moves to a worker no lower link holds, while there is one
(relay/agent/placement.py), so one agent's visitors use several cores at both ends. The
link processes start one after another, each once the one before has its place, so each
knows where the lower ones are. A link that is lost takes no visitors from that moment
(the edge sends new ones to the others) and reconnects by itself (a link process that
dies is started again). What cannot heal (a refused token, a Stop) ends every link.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from relay.agent.client import Agent, AgentOptions
from relay.agent.link_metrics import LinkScrapes, LinksExposition, links_ready, links_status
from relay.agent.link_process import BUSY_PERIOD, LinkChild
from relay.agent.placement import Place

#: At most this many links (the edge refuses a link index of 16 or more).
MAX_LINKS = 16
#: How long the next link process waits for the one before it to have a place: past
#: that (an edge slow to answer) it starts anyway.
PLACE_WAIT = 10.0


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

    def stop(self, *, now: bool = False) -> None:
        """Every link drains (relay/agent/client.py ``Agent.stop``); ``now``: at once."""
        self._stopping = True
        self.leader.stop(now=now)
        for child in self.children:
            child.stop(now=now)

    async def run(self) -> None:
        """Run every link until stopped; raise the first error that cannot heal."""
        leader = self.leader
        leader.pops.busy = lambda: {
            c.place.pop: c.place.pop_name for c in self.children if c.place is not None
        }
        if leader.metrics is not None and self.links > 1:
            leader.metrics.combine = LinksExposition(
                self.links, self._scrapes, self._connected
            ).combine
            leader.metrics.combine_status = self._status
            leader.metrics.combine_ready = self._ready
        tasks = [asyncio.ensure_future(leader.run())]
        telling: asyncio.Future[None] | None = None
        try:
            bound = asyncio.ensure_future(leader.all_bound.wait())
            await asyncio.wait({tasks[0], bound}, return_when=asyncio.FIRST_COMPLETED)
            bound.cancel()
            if not tasks[0].done() and not self._stopping:
                telling = asyncio.ensure_future(self._tell_links())
                for index in range(1, self.links):
                    if self._stopping or any(t.done() for t in tasks):
                        break
                    child = LinkChild(index, self.options, leader, self.status, self._others_of)
                    self.children.append(child)
                    tasks.append(asyncio.ensure_future(child.run()))
                    await self._placed(child, tasks)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.stop()
            if telling is not None:
                telling.cancel()
            with contextlib.suppress(Exception):
                # Children drain and end when their stdin does; their tasks wait for them
                # to exit (a drain may take its grace period).
                await asyncio.wait_for(
                    asyncio.gather(*tasks, return_exceptions=True),
                    self.options.grace_period + 15,
                )
            for task in tasks:
                if not task.done():
                    task.cancel()

    async def _placed(self, child: LinkChild, tasks: Sequence[asyncio.Future[None]]) -> None:
        """Wait (bounded) until ``child`` has a place or any link ended."""
        deadline = asyncio.get_running_loop().time() + PLACE_WAIT
        while child.place is None and not self._stopping and not any(t.done() for t in tasks):
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(BUSY_PERIOD / 5)

    def _scrapes(self) -> LinkScrapes:
        return {c.index: c.scrape for c in self.children}

    def _status(self, own: dict[str, Any]) -> dict[str, Any]:
        leader = self.leader
        links = [_link_row(0, leader.place if leader.connected else None)]
        links += [_link_row(c.index, c.place) for c in self.children]
        links += [_link_row(i, None) for i in range(len(links), self.links)]  # not started
        return links_status(own, links, [c.recent for c in self.children])

    def _ready(self, own: tuple[bool, str]) -> tuple[bool, str]:
        # While link 0 reconnects, the edge sends every visitor to the other links.
        links = [(c.place is not None, c.scrape[1] if c.scrape else None) for c in self.children]
        return links_ready(own, len(self.options.endpoints), links)

    def _connected(self) -> int:
        return int(self.leader.connected) + sum(c.place is not None for c in self.children)

    def _others_of(self, child: LinkChild) -> list[tuple[int, Place]]:
        """Where the links other than ``child`` are now, with their link indexes."""
        others = [(c.index, c.place) for c in self.children if c is not child and c.place]
        if self.leader.connected and self.leader.place is not None:
            others.append((0, self.leader.place))
        return others

    async def _tell_links(self) -> None:
        """Tell each link process what link 0 holds and where the other links are."""
        while not self._stopping:
            for child in self.children:
                child.tell()
            await asyncio.sleep(BUSY_PERIOD)


def _link_row(index: int, place: Place | None) -> dict[str, Any]:
    if place is None:
        return {"link": index, "connected": False, "pop": None, "pop_name": None, "worker": None}
    # Link 0 is not told its worker (relay/agent/placement.py): None, not a guess.
    return {"link": index, "connected": True, "pop": str(place.pop),
            "pop_name": place.pop_name or None,
            "worker": place.worker if index else None}  # fmt: skip
