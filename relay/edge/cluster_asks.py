"""The API of any node speaks for the whole cluster: it lists every node's live sessions
and endpoints, stops or restarts a session wherever it is, and reloads every node's
configuration (docs/scaling.md). Between the workers of one edge it also carries news
that needs no answer (:meth:`ClusterAsks.tell`: a reservation changed); nodes of a
cluster send theirs as sealed events of their own (relay/edge/cluster.py).

A node asks the others through Redis pub/sub (relay/cluster/presence.py): it publishes an
``ask`` event on the channel every node follows, and each other node answers on the
asker's own channel with what it holds (a list), or whether it acted (a stop or restart:
only the node holding the session does, and audits it there with the caller as actor).
The asker waits for one answer from each node it knows of: ``ASK_TIMEOUT`` bounds the whole
ask, its publish and the wait for the answers together. A node that does not answer in
time is left out of a list, and said so in the log. While the ask cannot be published at
all, or not within ``ASK_TIMEOUT`` (Redis does not answer), :class:`OthersUnasked` says
so, and the caller goes on with this node's own part (relay/edge/control_view.py); the
log says so once per outage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from relay.control.api import EndpointView, SessionView
from relay.errors import NotFound, RelayError

log = logging.getLogger("relay.edge.cluster")

#: How long an API call waits for the other nodes, publishing the ask included (a live
#: node answers in milliseconds: this bounds a call while a node has just died, or while
#: Redis takes connections but does not answer, whose own deadline is longer).
ASK_TIMEOUT = 1.5
#: Asks of this node waiting at once; more are refused (a runaway client of the API must
#: not grow the table without bound).
MAX_WAITING = 256
OPS = ("sessions", "endpoints", "stop", "restart", "reload")
#: News the other nodes act on and do not answer.
TELLS = ("reservations",)

V = TypeVar("V")


class Asked(Protocol):
    @property
    def node_id(self) -> str: ...


class AskWire(Protocol):
    """What carries the asks: Redis presence between nodes, or the supervisor between the
    workers of one edge (relay/edge/worker_asks.py)."""

    def nodes(self) -> Sequence[Asked]: ...

    async def publish_event(self, event: dict[str, str]) -> None: ...

    async def publish_to(self, node_id: str, event: dict[str, str]) -> None: ...


class LocalLive(Protocol):
    """This node's own part (relay/edge/control_view.py)."""

    def local_sessions(self) -> list[SessionView]: ...

    def local_endpoints(self) -> list[EndpointView]: ...

    def local_stop(self, session_id: str, *, actor: str) -> bool: ...

    def local_restart(self, session_id: str, *, actor: str) -> bool: ...

    def local_reload(self, *, actor: str) -> dict[str, Any]: ...

    def local_reservations_changed(self) -> None: ...


class OthersUnasked(NotFound):
    """The other nodes cannot be asked now: the ask could not be published. A 404 where
    it reaches the API (a stop of a session that is not here), since none of them could
    say whether they hold it."""


@dataclass
class _Waiting:
    nodes: set[str]
    answers: dict[str, Any] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: A stop or restart is done as soon as one node acted.
    first_yes: bool = False


class ClusterAsks:
    def __init__(self, node_id: str, presence: Callable[[], AskWire | None]) -> None:
        self.node_id = node_id
        self._presence = presence
        self._local: LocalLive | None = None
        self._waiting: dict[str, _Waiting] = {}
        self._answering: set[asyncio.Task[None]] = set()
        #: Whether the last ask could not be published: the log says so once per outage,
        #: not once per API call (a dashboard polling the list would flood it).
        self._cut_off = False

    def serve(self, local: LocalLive) -> None:
        """Answer the other nodes' asks from ``local``."""
        self._local = local

    # --- asking -----------------------------------------------------------------------

    async def sessions(self) -> list[SessionView]:
        views = []
        for answer in (await self._ask({"op": "sessions"})).values():
            views.extend(_views(answer, SessionView, _session_from))
        return views

    async def endpoints(self) -> list[EndpointView]:
        views = []
        for answer in (await self._ask({"op": "endpoints"})).values():
            views.extend(_views(answer, EndpointView, _endpoint_from))
        return views

    async def act(self, op: str, session_id: str, *, actor: str) -> bool:
        """Stop or restart ``session_id`` on the node that holds it: whether one did."""
        answers = await self._ask({"op": op, "session": session_id, "actor": actor}, True)
        return any(answer is True for answer in answers.values())

    async def reload(self, *, actor: str) -> dict[str, dict[str, Any] | None]:
        """Every other node reloads its own configuration: each one's outcome by node id
        (None: it did not answer in time, answered something else, or could not be
        asked)."""
        presence = self._presence()
        nodes = sorted(info.node_id for info in presence.nodes()) if presence else []
        try:
            answers = await self._ask({"op": "reload", "actor": actor})
        except OthersUnasked:
            # This node has reloaded already: a 404 would hide what it did. The others
            # are listed as not answering, as a silent node is.
            answers = {}
        return {
            n: a if isinstance(a, dict) else None for n, a in ((n, answers.get(n)) for n in nodes)
        }

    def tell(self, op: str) -> None:
        """Tell every other node ``op`` (one of :data:`TELLS`), answered by none: best
        effort, as the cluster's events (their poll is the net)."""
        presence = self._presence()
        if presence is None or op not in TELLS:
            return
        event = {"event": "ask", "ask": secrets.token_hex(8), "from": self.node_id, "op": op}
        task = asyncio.get_running_loop().create_task(presence.publish_event(event))
        self._answering.add(task)
        task.add_done_callback(self._told)

    def _told(self, task: asyncio.Task[None]) -> None:
        self._answering.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not tell the others: %s", task.exception())

    async def _ask(self, fields: dict[str, str], first_yes: bool = False) -> dict[str, Any]:
        presence = self._presence()
        if presence is None:
            return {}
        nodes = {info.node_id for info in presence.nodes()}
        if not nodes:
            return {}
        if len(self._waiting) >= MAX_WAITING:
            raise NotFound("too many questions to the other nodes at once; try again")
        ask_id = secrets.token_hex(8)
        waiting = _Waiting(nodes, first_yes=first_yes)
        # One deadline for the publish and the wait: presence bounds a publish to a Redis
        # that does not answer by its own, longer deadline (a wait for a pooled
        # connection, a reconnect and a read, each up to a second: up to 3 s in all).
        deadline = asyncio.get_running_loop().time() + ASK_TIMEOUT
        self._waiting[ask_id] = waiting
        try:
            try:
                await _publish_by(
                    presence,
                    {"event": "ask", "ask": ask_id, "from": self.node_id, **fields},
                    deadline,
                )
            except RelayError as err:
                self._note_cut_off(err)
                raise OthersUnasked(f"the other nodes cannot be asked now: {err}") from err
            if self._cut_off:
                self._cut_off = False
                log.info("cluster: the other nodes can be asked again")
            try:
                async with asyncio.timeout_at(deadline):
                    await waiting.done.wait()
            except TimeoutError:
                silent = sorted(nodes - set(waiting.answers))
                log.warning("cluster: no answer from node(s) %s to %s", silent, fields["op"])
            return waiting.answers
        finally:
            del self._waiting[ask_id]

    def _note_cut_off(self, err: RelayError) -> None:
        if not self._cut_off:
            self._cut_off = True
            log.warning(
                "cluster: the other nodes cannot be asked (%s); until they can, the API "
                "lists this node's own sessions and endpoints only, and reloads this node",
                err,
            )

    # --- the other nodes' asks and answers ----------------------------------------------

    def handle(self, event: dict[str, str]) -> None:
        """An ``ask`` or ``answer`` event from presence."""
        if event.get("event") == "ask":
            self._answer(event)
        elif event.get("event") == "answer":
            self._take(event)

    def _answer(self, event: dict[str, str]) -> None:
        asker, op, ask_id = event.get("from", ""), event.get("op", ""), event.get("ask", "")
        local = self._local
        if local is None or not asker or asker == self.node_id:
            return
        if op in TELLS:
            local.local_reservations_changed()
            return
        if op not in OPS:
            return
        body: Any
        if op == "sessions":
            body = [_plain(v) for v in local.local_sessions()]
        elif op == "endpoints":
            body = [_plain(v) for v in local.local_endpoints()]
        elif op == "reload":
            body = local.local_reload(actor=event.get("actor", "api"))
        else:
            act = local.local_stop if op == "stop" else local.local_restart
            body = act(event.get("session", ""), actor=event.get("actor", "api"))
        reply = {"event": "answer", "ask": ask_id, "node": self.node_id, "body": json.dumps(body)}
        presence = self._presence()
        if presence is None:
            return
        task = asyncio.get_running_loop().create_task(presence.publish_to(asker, reply))
        self._answering.add(task)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._answering.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("cluster: could not answer another node: %s", task.exception())

    def _take(self, event: dict[str, str]) -> None:
        waiting = self._waiting.get(event.get("ask", ""))
        node = event.get("node", "")
        if waiting is None or node not in waiting.nodes:
            return
        try:
            body = json.loads(event.get("body", "null"))
        except ValueError:
            body = None
        waiting.answers[node] = body
        if set(waiting.answers) >= waiting.nodes or (waiting.first_yes and body is True):
            waiting.done.set()


async def _publish_by(presence: AskWire, event: dict[str, str], deadline: float) -> None:
    """Publish ``event`` by ``deadline`` (the loop's clock). One that is not published by
    then raises :class:`RelayError`, as one that failed does.

    The publish is cancelled at the deadline, as presence's own deadline cancels it
    (Presence._call): redis-py closes a connection whose command was cancelled halfway
    and gives it back to the pool, which connects it again on its next use, so the
    client stays usable."""
    try:
        async with asyncio.timeout_at(deadline):
            await presence.publish_event(event)
    except TimeoutError:
        raise RelayError(f"Redis did not answer within {ASK_TIMEOUT:g} s") from None


def _plain(view: SessionView | EndpointView) -> dict[str, Any]:
    return dataclasses.asdict(view)


def _views(answer: Any, kind: type[V], build: Callable[[dict[str, Any]], V]) -> list[V]:
    if not isinstance(answer, list):
        return []
    views = []
    for item in answer:
        try:
            views.append(build(item))
        except (TypeError, ValueError, KeyError):
            log.debug("cluster: ignoring a malformed %s in an answer", kind.__name__)
    return views


def _session_from(item: dict[str, Any]) -> SessionView:
    view = SessionView(**{**item, "endpoints": tuple(item["endpoints"])})
    if not all(isinstance(getattr(view, f), str) for f in ("id", "account_id", "token_id")):
        raise TypeError("not a session")
    return view


def _endpoint_from(item: dict[str, Any]) -> EndpointView:
    view = EndpointView(**item)
    if not all(isinstance(getattr(view, f), str) for f in ("id", "url", "kind")):
        raise TypeError("not an endpoint")
    return view
