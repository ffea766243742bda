"""``--links K`` on K cores: link 0 runs in the agent's own process, each of links
1..K-1 in a child process of its own. A link is a TLS connection with its own multiplexer
and byte path, and Python runs one core per process: in one process, K links share one
core, however many the edge gives them.

The agent starts a child once link 0 holds every endpoint: ``python -m
relay.agent.link_process``, with its description (the options, token included, and what
link 0 was given) as the first line on its stdin, never on its command line, where ``ps``
would show the token. Then JSON lines go both ways:

* agent → child: ``{"leader": …}`` when link 0 was given other names or ports (after an
  edge restart); ``{"links": [[index, host, port, name, worker], …]}``, where the other
  links are: a link prefers a PoP none is on, as in one process, and a worker no lower
  link holds (relay/agent/placement.py).
* child → agent: ``{"status": line}``, printed as ``link i: line``; ``{"place": [host,
  port, name, worker]}`` (or null) when its session comes or goes; ``{"metrics": text,
  "recent": […]}``, its exposition and recent streams, every second while the agent has
  an admin listener (relay/agent/link_metrics.py); ``{"fatal": {"code", "message"}}``
  before it exits with an error that cannot heal. The agent then ends with that error,
  as it would for a link of its own.

A child exits when its stdin ends: the agent is gone, however it went. A child that dies
otherwise (killed) is started again after :data:`RESTART_DELAY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.agent.client import Agent, AgentOptions, EndpointSpec
from relay.agent.link_metrics import PUSH_PERIOD
from relay.agent.metrics import AgentMetrics
from relay.agent.placement import Place
from relay.agent.pops import Pop
from relay.errors import RelayError, error_from_code
from relay.mux import MuxConfig
from relay.stop_signals import install_stop_handlers

log = logging.getLogger("relay.agent")

#: A child that died without an error of its own is started again after this long.
RESTART_DELAY = 1.0
#: How often the agent looks whether a link's place changed, to tell the others.
BUSY_PERIOD = 0.25
#: The longest line either side reads: the description with every endpoint.
MAX_LINE = 1024 * 1024


@dataclasses.dataclass
class LeaderView:
    """What link 0 was given, as a follower link needs it (relay/agent/client.py)."""

    remembered_ports: dict[EndpointSpec, int]
    remembered_names: dict[EndpointSpec, str]
    urls: dict[EndpointSpec, str]


def describe_leader(leader: LeaderView | Agent) -> list[dict[str, Any]]:
    specs = set(leader.remembered_ports) | set(leader.remembered_names) | set(leader.urls)
    return [
        {
            "spec": dataclasses.asdict(spec),
            "port": leader.remembered_ports.get(spec),
            "name": leader.remembered_names.get(spec),
            "url": leader.urls.get(spec),
        }
        for spec in specs
    ]


def apply_leader(view: LeaderView, described: list[dict[str, Any]]) -> None:
    """Update ``view`` in place (the follower's Agent holds these very dicts)."""
    for mapping in (view.remembered_ports, view.remembered_names, view.urls):
        mapping.clear()
    for item in described:
        spec = EndpointSpec(**item["spec"])
        if item.get("port") is not None:
            view.remembered_ports[spec] = int(item["port"])
        if item.get("name") is not None:
            view.remembered_names[spec] = str(item["name"])
        if item.get("url") is not None:
            view.urls[spec] = str(item["url"])


def describe_options(options: AgentOptions) -> dict[str, Any]:
    plain = dataclasses.asdict(options)
    plain["ca_file"] = str(options.ca_file) if options.ca_file is not None else None
    plain["admin_listen"] = None  # the agent's admin listener is link 0's
    return plain


def options_from(plain: dict[str, Any]) -> AgentOptions:
    fields = dict(plain)
    fields["endpoints"] = tuple(EndpointSpec(**e) for e in fields["endpoints"])
    fields["mux"] = MuxConfig(**fields["mux"])
    fields["ca_file"] = Path(fields["ca_file"]) if fields["ca_file"] else None
    fields["edges"] = tuple(tuple(e) for e in fields["edges"])
    fields["admin_listen"] = None
    return AgentOptions(**fields)


def _place_plain(place: Place) -> list[Any]:
    return [place.pop.host, place.pop.port, place.pop.name, place.worker]


def _place_from(plain: Any) -> Place | None:
    if not isinstance(plain, list) or len(plain) != 4:
        return None
    return Place(Pop(str(plain[0]), int(plain[1]), str(plain[2])), int(plain[3]))


#: The other links of an agent, as (link index, place), for the one asking.
Others = Callable[["LinkChild"], list[tuple[int, Place]]]


def _links_plain(others: list[tuple[int, Place]]) -> list[list[Any]]:
    return sorted([index, *_place_plain(place)] for index, place in others)


# --- the agent's side ---------------------------------------------------------------------


class LinkChild:
    """Link ``index`` of the agent, in a process of its own."""

    def __init__(
        self,
        index: int,
        options: AgentOptions,
        leader: Agent,
        status: Callable[[str], None],
        others: Others,
    ) -> None:
        """``others``: where the agent's other links are now."""
        self.index = index
        self.others = others
        self.options = dataclasses.replace(options, link=index, admin_listen=None)
        self.leader = leader
        self.status = status
        #: Where this link's session is (None: it has none now).
        self.place: Place | None = None
        #: The link process's id and its last exposition, and its recent streams (only
        #: with an admin listener).
        self.scrape: tuple[int, str] | None = None
        self.recent: list[dict[str, Any]] = []
        self._wants_metrics = options.admin_listen is not None
        self.process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._told_leader: list[dict[str, Any]] = []
        self._told_links: list[list[Any]] = []

    @property
    def pop(self) -> Pop | None:
        return None if self.place is None else self.place.pop

    def stop(self, *, now: bool = False) -> None:
        """The child drains its link and exits (its stdin ends); ``now``: SIGKILL by pid,
        its streams cut (a second stop, or a drain that outlived its grace)."""
        self._stopping = True
        process = self.process
        if process is None:
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()  # the child's stdin ends: it drains and stops its link
        if now and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def run(self) -> None:
        """Keep the child running until stopped; raise the error it ended with, if one
        cannot heal."""
        while not self._stopping:
            fatal = await self._run_once()
            if fatal is not None:
                raise fatal
            if self._stopping:
                return
            self.status(f"link {self.index}: its process ended; starting it again")
            await asyncio.sleep(RESTART_DELAY)

    async def _run_once(self) -> RelayError | None:
        process = self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay.agent.link_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=MAX_LINE,
        )
        assert process.stdin is not None and process.stdout is not None
        self._told_leader = describe_leader(self.leader)
        # Where the other links are goes with the start: the child picks its PoP at once.
        self._told_links = _links_plain(self.others(self))
        first = {
            "options": describe_options(self.options),
            "leader": self._told_leader,
            "links": self._told_links,
            "metrics": self._wants_metrics,
        }
        process.stdin.write(json.dumps(first).encode() + b"\n")
        fatal: RelayError | None = None
        try:
            while line := await process.stdout.readline():
                fatal = self._heard(json.loads(line)) or fatal
        except (ValueError, asyncio.LimitOverrunError) as exc:
            log.warning("link %d's process said something unreadable: %s", self.index, exc)
        finally:
            self.place = None
            self.scrape = None
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
            await process.wait()
        return fatal

    def _heard(self, message: dict[str, Any]) -> RelayError | None:
        if "status" in message:
            self.status(f"link {self.index}: {message['status']}")
        if "place" in message:
            self.place = _place_from(message["place"])
        if isinstance(message.get("metrics"), str) and self.process is not None:
            self.scrape = (self.process.pid, message["metrics"])
        if isinstance(message.get("recent"), list):
            self.recent = [s for s in message["recent"] if isinstance(s, dict)]
        fatal = message.get("fatal")
        if isinstance(fatal, dict):
            return error_from_code(str(fatal.get("code", "")), str(fatal.get("message", "")))
        return None

    def tell(self) -> None:
        """Send what changed: link 0's names and ports, where the other links are."""
        links = _links_plain(self.others(self))
        process = self.process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        leader = describe_leader(self.leader)
        if leader != self._told_leader:
            self._told_leader = leader
            process.stdin.write(json.dumps({"leader": leader}).encode() + b"\n")
        if links != self._told_links:
            self._told_links = links
            process.stdin.write(json.dumps({"links": links}).encode() + b"\n")


# --- the child's side ---------------------------------------------------------------------


async def _child() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    first = json.loads(await reader.readline())
    options = options_from(first["options"])
    view = LeaderView({}, {}, {})
    apply_leader(view, first["leader"])
    others: dict[int, Place] = {}

    def learn(links: list[Any]) -> None:
        others.clear()
        for plain in links:
            place = _place_from(plain[1:]) if isinstance(plain, list) and plain else None
            if place is not None:
                others[int(plain[0])] = place

    learn(first.get("links", []))

    def say(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    agent = Agent(options, status=lambda line: say({"status": line}), leader=view)
    if first.get("metrics"):
        agent.metrics = AgentMetrics(agent)
    agent.pops.busy = lambda: {place.pop for place in others.values()}
    agent.lower_places = lambda: [p for i, p in others.items() if i < options.link]

    async def listen() -> None:
        while line := await reader.readline():
            message = json.loads(line)
            if "leader" in message:
                apply_leader(view, message["leader"])
            if "links" in message:
                learn(message["links"])
        agent.stop()  # the agent is gone

    async def report() -> None:
        told: Any = object()
        while True:
            place = agent.place if agent.connected else None
            now = None if place is None else _place_plain(place)
            if now != told:
                told = now
                say({"place": now})
            await asyncio.sleep(BUSY_PERIOD)

    async def push_metrics(metrics: AgentMetrics) -> None:
        while True:
            recent = metrics.own_status()["recent"]
            say({"metrics": metrics.exposition().decode("utf-8"), "recent": recent})
            await asyncio.sleep(PUSH_PERIOD)

    helpers = [asyncio.ensure_future(listen()), asyncio.ensure_future(report())]
    if agent.metrics is not None:
        helpers.append(asyncio.ensure_future(push_metrics(agent.metrics)))
    # SIGTERM or Ctrl-C reach the link processes too (systemd signals the whole unit, a
    # terminal the whole process group): drain as the agent does, then stop now.
    install_stop_handlers(agent.stop, lambda: agent.stop(now=True))
    try:
        await agent.run()
    except RelayError as err:
        say({"fatal": {"code": err.code, "message": err.message}})
        return 1
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    return 0


def main() -> None:
    import uvloop

    sys.exit(uvloop.run(_child()))


if __name__ == "__main__":
    main()
