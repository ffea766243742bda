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

A child stops when its stdin ends or its stdout does (a write fails: the agent is gone,
however it went, SIGKILL included): it drains as on SIGTERM (GoAway, its streams get the
grace period) and exits. A child that dies otherwise (killed) is started again, after
:data:`RESTART_DELAY`; one that dies young (within :data:`YOUNG`) after twice as long as
the one before it, up to :data:`MAX_RESTART_DELAY` (:func:`restart_delay`), and
:data:`MAX_YOUNG_DEATHS` young deaths in a row end the agent with RLY_404: what kills a
child at its start (an import error, a module of another version after an in-place
upgrade) does not heal by starting it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from relay import logs
from relay.agent.client import Agent, AgentOptions, EndpointSpec
from relay.agent.link_metrics import PUSH_PERIOD
from relay.agent.metrics import AgentMetrics
from relay.agent.placement import Place
from relay.agent.pops import Pop
from relay.errors import RelayError, error_from_code
from relay.mux import MuxConfig
from relay.stop_signals import install_stop_handlers

log = logging.getLogger("relay.agent")

#: A child that died without an error of its own is started again after this long, and
#: after twice as long for each young death in a row before it, up to
#: :data:`MAX_RESTART_DELAY`.
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
#: A child that lived less than this long died young; one that lived longer starts the
#: count of young deaths again (it had worked: a later death is a new fault).
YOUNG = 10.0
#: This many young deaths in a row end the agent (RLY_404).
MAX_YOUNG_DEATHS = 8
#: The code of that error (relay/errors.py).
LINK_PROCESS_FAILED = "RLY_404"
#: How often the agent looks whether a link's place changed, to tell the others.
BUSY_PERIOD = 0.25
#: How often a link on the same PoP as a lower link looks for a PoP no link is on (one
#: that died and came back), doubling after each move that did not get it one (a PoP
#: that answers the probe but not the handshake), up to MAX_SPREAD_EVERY.
SPREAD_EVERY = 10.0
MAX_SPREAD_EVERY = 300.0
#: The longest line either side reads: the description with every endpoint.
MAX_LINE = 1024 * 1024


@dataclasses.dataclass
class LeaderView:
    """What link 0 was given, as a follower link needs it (relay/agent/client.py)."""

    remembered_ports: dict[EndpointSpec, int]
    remembered_names: dict[EndpointSpec, str]
    urls: dict[EndpointSpec, str]
    refused: set[EndpointSpec] = dataclasses.field(default_factory=set)


def describe_leader(leader: LeaderView | Agent) -> list[dict[str, Any]]:
    specs = (
        set(leader.remembered_ports)
        | set(leader.remembered_names)
        | set(leader.urls)
        | leader.refused
    )
    return [
        {
            "spec": dataclasses.asdict(spec),
            "port": leader.remembered_ports.get(spec),
            "name": leader.remembered_names.get(spec),
            "url": leader.urls.get(spec),
            "refused": spec in leader.refused,
        }
        for spec in specs
    ]


def apply_leader(view: LeaderView, described: list[dict[str, Any]]) -> None:
    """Update ``view`` in place (the follower's Agent holds these very dicts)."""
    for mapping in (view.remembered_ports, view.remembered_names, view.urls):
        mapping.clear()
    view.refused.clear()
    for item in described:
        spec = EndpointSpec(**item["spec"])
        if item.get("port") is not None:
            view.remembered_ports[spec] = int(item["port"])
        if item.get("name") is not None:
            view.remembered_names[spec] = str(item["name"])
        if item.get("url") is not None:
            view.urls[spec] = str(item["url"])
        if item.get("refused"):
            view.refused.add(spec)


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
    return [place.pop.host, place.pop.port, place.pop.name, place.worker, place.pop_name]


def _place_from(plain: Any) -> Place | None:
    if not isinstance(plain, list) or len(plain) != 5:
        return None
    pop = Pop(str(plain[0]), int(plain[1]), str(plain[2]))
    return Place(pop, int(plain[3]), str(plain[4]))


#: The other links of an agent, as (link index, place), for the one asking.
Others = Callable[["LinkChild"], list[tuple[int, Place]]]


def _links_plain(others: list[tuple[int, Place]]) -> list[list[Any]]:
    return sorted([index, *_place_plain(place)] for index, place in others)


def restart_delay(young_deaths: int) -> float:
    """How long to wait before starting a child again, after ``young_deaths`` children in
    a row died young (0: the last one had lived long)."""
    return min(MAX_RESTART_DELAY, RESTART_DELAY * 2.0 ** max(0, young_deaths - 1))


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
        self._stopping_now = False
        # Set by stop(): ends the wait before a restart at once.
        self._stop_asked = asyncio.Event()
        self._told_leader: list[dict[str, Any]] = []
        self._told_links: list[list[Any]] = []

    def stop(self, *, now: bool = False) -> None:
        """The child drains its link and exits (its stdin ends); ``now``: SIGKILL by pid,
        its streams cut (a second stop, or a drain that outlived its grace)."""
        self._stopping = True
        self._stopping_now = self._stopping_now or now
        self._stop_asked.set()
        process = self.process
        if process is None:
            return  # none yet, or one being started: _run_once does this once it is
        self._end(process)

    def _end(self, process: asyncio.subprocess.Process) -> None:
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()  # the child's stdin ends: it drains and stops its link
        if self._stopping_now and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def run(self) -> None:
        """Keep the child running until stopped; raise the error it ended with, if one
        cannot heal."""
        loop = asyncio.get_running_loop()
        young = 0
        while not self._stopping:
            started = loop.time()
            fatal = await self._run_once()
            if fatal is not None:
                raise fatal
            if self._stopping:
                return
            lived = loop.time() - started
            young = young + 1 if lived < YOUNG else 0
            ended = self.process.returncode if self.process is not None else None
            if young >= MAX_YOUNG_DEATHS:
                raise RelayError(
                    f"link {self.index}'s process died within {YOUNG:g}s of its start "
                    f"{young} times in a row (last exit status {ended}); its own error "
                    "output says why (an upgrade under a running agent? start it again)",
                    code=LINK_PROCESS_FAILED,
                )
            delay = restart_delay(young)
            self.status(
                f"link {self.index}: its process ended; starting it again in {delay:g}s "
                f"(exit status {ended}, after {lived:.1f}s)"
            )
            # A stop during the wait ends it (it may be MAX_RESTART_DELAY long).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_asked.wait(), delay)

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
        if self._stopping:
            # Stopped while it was being started (stop() found no process): it gets no
            # description, not even the token, and exits as soon as it reads its stdin.
            self._end(process)
            await process.wait()
            return None
        self._told_leader = describe_leader(self.leader)
        # Where the other links are goes with the start: the child picks its PoP at once.
        self._told_links = _links_plain(self.others(self))
        first = {
            "options": describe_options(self.options),
            "leader": self._told_leader,
            "links": self._told_links,
            "metrics": self._wants_metrics,
            "log": list(logs.in_use()),
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


class ToAgent:
    """A child's lines to the agent, on its stdout. Once the agent is gone (SIGKILLed,
    say), a write fails (BrokenPipeError): ``say`` never raises (its caller may be
    ``Agent.stop``, between setting its flag and starting its drain), writes nothing more,
    and calls ``gone`` once, soon, from the loop rather than from inside its caller."""

    def __init__(self, stream: TextIO, gone: Callable[[], None]) -> None:
        self.stream = stream
        self.gone = gone
        self.lost = False

    def say(self, message: dict[str, Any]) -> None:
        if self.lost:
            return
        try:
            self.stream.write(json.dumps(message) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # ValueError: the stream was closed
            self.lost = True
            self._silence()
            asyncio.get_running_loop().call_soon(self.gone)

    def _silence(self) -> None:
        # What the stream still buffers would be flushed again at exit and fail again
        # ("Exception ignored ... BrokenPipeError", exit status 120): /dev/null takes it.
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self.stream.fileno())
            finally:
                os.close(null)


async def _child() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = await reader.readline()
    if not line:
        return 0  # the agent stopped (or died) before it described this link
    first = json.loads(line)
    level, log_format = first.get("log", ("warning", "text"))
    logs.setup_logging(str(level), str(log_format))  # as the agent logs
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

    # The agent gone, this link stops as it would on SIGTERM: a drain, then the exit.
    to_agent = ToAgent(sys.stdout, lambda: agent.stop())
    say = to_agent.say
    agent = Agent(options, status=lambda line: say({"status": line}), leader=view)
    if first.get("metrics"):
        agent.metrics = AgentMetrics(agent)
    agent.pops.busy = lambda: {place.pop: place.pop_name for place in others.values()}
    agent.lower_places = lambda: [p for i, p in others.items() if i < options.link]

    async def listen() -> None:
        try:
            while line := await reader.readline():
                try:
                    message = json.loads(line)
                    if "leader" in message:
                        apply_leader(view, message["leader"])
                    if "links" in message:
                        learn(message["links"])
                except (ValueError, KeyError, TypeError) as exc:
                    # A line cut short by the agent's death, most likely: EOF follows.
                    log.warning("link %d: an unreadable line from the agent: %s", options.link, exc)
        except (OSError, ValueError) as exc:  # ValueError: a line past MAX_LINE
            log.warning("link %d: the agent's lines ended unreadable: %s", options.link, exc)
        # However stdin ended, the agent is gone: drain and stop (not a task that just ends
        # while the link serves on).
        agent.stop()

    async def report() -> None:
        told: Any = object()
        while True:
            place = agent.place if agent.connected else None
            now = None if place is None else _place_plain(place)
            if now != told:
                told = now
                say({"place": now})
            await asyncio.sleep(BUSY_PERIOD)

    async def spread() -> None:
        """With several PoPs, links hold as many as there are; a link that lost its PoP
        reconnects beside another link, and stays there when the PoP comes back. So a
        link on the PoP of a lower link (only lower ones: two links never chase each
        other) moves, without cutting a stream, to a PoP no link is on once the probe
        finds one; then the next PoP's death costs no reconnect again."""
        every = SPREAD_EVERY
        moved = False
        while True:
            await asyncio.sleep(every)
            here = agent.place if agent.connected else None
            if here is None or not agent.pops.several:
                continue
            if not any(here.same_pop(p) for i, p in others.items() if i < options.link):
                every, moved = SPREAD_EVERY, False
                continue
            if moved:  # beside a lower link again (or still draining): wait longer
                every, moved = min(every * 2, MAX_SPREAD_EVERY), False
                continue
            free = await agent.pops.free_pop(here.pop)
            if free is not None:
                moved = agent.leave_pop(f"{free} holds no link of this agent")

    async def push_metrics(metrics: AgentMetrics) -> None:
        while True:
            recent = metrics.own_status()["recent"]
            say({"metrics": metrics.exposition().decode("utf-8"), "recent": recent})
            await asyncio.sleep(PUSH_PERIOD)

    helpers = [
        asyncio.ensure_future(listen()),
        asyncio.ensure_future(report()),
        asyncio.ensure_future(spread()),
    ]
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
