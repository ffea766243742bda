"""One worker of a multi-process edge (``relay edge --workers N``, relay/cluster/).

Each worker is a whole edge — its own agent links, sessions and endpoints — whose
listeners share their ports with the other workers (SO_REUSEPORT). What makes N workers
one edge is here:

* every bind asks the supervisor first (``claim``): a name or port has one owner across
  the workers, by the rules of relay/cluster/claims.py; after every change the worker
  reports all it holds of the key (``state``), and the last report wins;
* the supervisor tells every worker which worker holds which name live (``where``), so a
  visitor accepted here for a name another worker holds is handed to it — its socket,
  with what was read from it — never relayed (relay/cluster/handoff.py);
* a worker told to ``drop`` a name (its agent came back on another worker) lets it go.

Only the workers that hold a TCP port listen on it, so its visitors are accepted where
their agent is; a worker whose members of the port are gone while another's serve on
hands its visitors over too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.cluster.channel import Channel, ChannelError, Message
from relay.cluster.handoff import Handoff, HandoffError, Inbox, Outbox
from relay.cluster.place import WorkerPlace
from relay.edge.cluster_asks import ClusterAsks
from relay.edge.members import hands_over, takes_visitors
from relay.edge.refusal import unreachable_page
from relay.edge.registry import Holder
from relay.edge.routes import HostEndpoint, HostRoutes
from relay.edge.tcp import TcpEndpoint
from relay.edge.worker_asks import SiblingWire
from relay.errors import BindError, EndpointAlreadyBound

if TYPE_CHECKING:
    from relay.edge.server import Edge

log = logging.getLogger("relay.edge.worker")

#: How long a bind waits for the supervisor's answer.
CLAIM_TIMEOUT = 5.0
#: Distinct sets of workers kept for sharing (``_worker_sets``). An edge of 8 workers has
#: at most 128 sets of the 7 others; past this the cache starts again: names keep their
#: tuples, only later ones share less. The supervisor's ``where`` is what fills it, and
#: without a bound every set ever seen stays.
MAX_WORKER_SETS = 1024


@dataclass(slots=True)
class RemoteEndpoint:
    """A name or port another worker holds live (``hostname`` as HostRoutes wants; a
    port's number for a TCP one). Each worker keeps one per name every other worker
    holds: slots and no stored key keep that table small (memory per agent session
    must not grow with the workers)."""

    family: str
    hostname: str
    workers: tuple[int, ...]
    turn: int = 0

    @property
    def key(self) -> str:
        return f"{self.family}:{self.hostname}"

    def next_worker(self) -> int:
        self.turn = (self.turn + 1) % len(self.workers)
        return self.workers[self.turn]


class EdgeWorker:
    def __init__(self, edge: Edge, place: WorkerPlace) -> None:
        self.edge = edge
        self.place = place
        self.index = place.index
        self.channel: Channel | None = None
        self.inbox: Inbox | None = None
        self.outbox: Outbox | None = None
        self._ids = itertools.count(1)
        self._claims: dict[int, asyncio.Future[Message]] = {}
        #: Claims whose bind stopped waiting (timed out, cancelled): key by claim id.
        self._abandoned: dict[int, str] = {}
        #: One tuple per set of workers, shared by every name they hold (a table of
        #: 10,000 names by 7 other workers holds a handful of tuples, not 10,000); at
        #: most MAX_WORKER_SETS of them.
        self._worker_sets: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._remote_tcp: dict[str, RemoteEndpoint] = {}
        self.remote_http: HostRoutes[RemoteEndpoint] = HostRoutes()
        self.remote_sni: HostRoutes[RemoteEndpoint] = HostRoutes()
        #: Visitors handed to other workers, and handed here, by front.
        self.handed_off = {"http": 0, "tls": 0, "tcp": 0}
        self.handed_in = {"http": 0, "tls": 0, "tcp": 0}
        #: Sends refused at once (a worker gone, or too far behind).
        self.sends_failed = 0
        #: The other workers' sessions and endpoints, for the API (relay/edge/worker_asks.py).
        self.wire = SiblingWire(self.index, place.count, self._to_supervisor)
        self.asks = ClusterAsks(str(self.index), lambda: self.wire)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(fileno=self.place.channel_fd)
        self.channel = Channel(sock, loop, self._message, self._supervisor_gone)
        self.inbox = Inbox(self.place.run_dir, self.index)
        self.inbox.start(loop, self._handed_in)
        self.outbox = Outbox(self.place.run_dir, loop, on_dropped=self._dropped)

    def _to_supervisor(self, message: Message) -> None:
        if self.channel is not None:
            self.channel.send(message)

    def ready(self, banner: list[str]) -> None:
        assert self.channel is not None
        self.channel.send({"op": "ready", "banner": banner, "pid": os.getpid()})

    def close(self) -> None:
        if self.inbox is not None:
            self.inbox.close()
        if self.outbox is not None:
            self.outbox.close()
        for future in self._claims.values():
            future.cancel()

    def status(self) -> dict[str, Any]:
        """For /status: this worker, the names other workers hold, the handoffs."""
        return {
            "index": self.index,
            "count": self.place.count,
            "elsewhere": {
                r.key: list(r.workers)
                for r in sorted(
                    (*self.remote_http.values(), *self.remote_sni.values()),
                    key=lambda r: r.key,
                )
            },
            "handed_off": dict(self.handed_off),
            "handed_in": dict(self.handed_in),
            "handoffs_failed": self.handoffs_failed,
        }

    # --- claims -------------------------------------------------------------------------

    async def claim(
        self, key: str, holder: Holder, rewrite: str | None = None, kind: str | None = None
    ) -> None:
        """Ask the supervisor for ``key`` for ``holder`` (an agent's link, maybe pooled,
        rewriting the Host to ``rewrite``, an endpoint of ``kind``); EndpointAlreadyBound
        when it is another's, or its live members rewrite the Host otherwise or serve a
        TLS-port name as the other kind."""
        assert self.channel is not None
        claim_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._claims[claim_id] = future
        self.channel.send(
            {
                "op": "claim",
                "id": claim_id,
                "key": key,
                "token": holder.token_id,
                "agent": holder.agent_id,
                "link": holder.link,
                "pooled": holder.pooled,
                "rewrite": rewrite,
                "kind": kind,
            }
        )
        try:
            async with asyncio.timeout(CLAIM_TIMEOUT):
                answer = await future
        except TimeoutError:
            self._abandoned[claim_id] = key
            raise BindError(f"the edge's supervisor did not answer for {key}") from None
        except asyncio.CancelledError:
            self._abandoned[claim_id] = key  # the session went while it waited
            raise
        finally:
            self._claims.pop(claim_id, None)
        if not answer.get("ok"):
            raise EndpointAlreadyBound(str(answer.get("why") or f"{key} is bound elsewhere"))

    def report(
        self,
        key: str,
        token_id: str,
        members: list[Holder],
        live: bool,
        taking: bool = True,
        rewrite: str | None = None,
        kind: str | None = None,
    ) -> None:
        """Everything this worker holds of ``key`` now (no members: nothing). Sent after
        every change, so the supervisor's table ends up as the workers are, whatever
        crossed on the way. ``live``: a member's session is up (else the key is orphaned,
        in grace); ``taking``: one of them takes new visitors (not all draining). Never
        raises: it is called while sessions are cleaned up."""
        if self.channel is None:
            return
        try:
            self.channel.send(
                {
                    "op": "state",
                    "key": key,
                    "token": token_id,
                    "members": [[m.agent_id, m.link, m.pooled] for m in members],
                    "live": live,
                    "taking": taking,
                    "rewrite": rewrite,
                    "kind": kind,
                }
            )
        except ChannelError as exc:
            # Unreachable while binds keep to members.MAX_MEMBERS_PER_KEY; if not, the cleanup
            # that called this must still finish (the supervisor's table lags instead).
            log.error("the state of %s (%d members) was not reported: %s", key, len(members), exc)

    # --- from the supervisor --------------------------------------------------------------

    def _message(self, message: Message) -> None:
        op = message["op"]
        if op == "claimed":
            claim_id = int(message.get("id", 0))
            future = self._claims.get(claim_id)
            if future is not None and not future.done():
                future.set_result(message)
            key = self._abandoned.pop(claim_id, None)
            if key is not None and message.get("ok"):
                # Granted to a bind that gave up: say what this worker really holds.
                self.edge.report(key)
        elif op == "where":
            workers = tuple(int(w) for w in message.get("workers", []) if int(w) != self.index)
            self._where(str(message["key"]), workers)
        elif op == "ask":
            event = message.get("event")
            if isinstance(event, dict):
                self.asks.handle(event)
        elif op == "answer":
            whole = self.wire.take(message)
            if whole is not None:
                self.asks.handle(whole)
        elif op == "drop":
            agent = message.get("agent")
            self.edge.drop_endpoint(
                str(message["key"]),
                str(agent) if agent is not None else None,
                int(message.get("link", 0)),
            )
        else:
            log.warning("unknown message from the supervisor: %s", op)

    def _where(self, key: str, workers: tuple[int, ...]) -> None:
        family, _, hostname = key.partition(":")
        family = sys.intern(family)  # one "http" for all, not a copy per name
        if len(self._worker_sets) >= MAX_WORKER_SETS and workers not in self._worker_sets:
            self._worker_sets.clear()
        workers = self._worker_sets.setdefault(workers, workers)
        if family == "tcp":
            # Accepted where a member is (only those workers listen); handed over only
            # from a worker whose members left while another's serve on.
            if workers:
                self._remote_tcp[key] = RemoteEndpoint(family, hostname, workers)
            else:
                self._remote_tcp.pop(key, None)
            return
        routes = self._remote_routes(family)
        if routes is None:
            return
        # The routes are the only index of these (no table by key: each worker keeps one
        # entry per name every other worker holds, so each byte counts N - 1 times).
        old = routes.get(hostname)
        if old is not None and not workers:
            routes.remove(old)
        elif old is not None:
            old.workers, old.turn = workers, 0
        elif workers:
            routes.add(RemoteEndpoint(family, hostname, workers))

    def _remote_routes(self, family: str) -> HostRoutes[RemoteEndpoint] | None:
        """The table of other workers' names of ``family``; None for ``tcp`` (ports)."""
        if family == "sni":
            return self.remote_sni
        return self.remote_http if family == "http" else None

    def _supervisor_gone(self) -> None:
        # Workers live only under their supervisor: without it nothing arbitrates binds.
        log.error("the edge's supervisor is gone; this worker drains and exits")
        os.kill(os.getpid(), signal.SIGTERM)

    # --- handing visitors over --------------------------------------------------------

    def http_holder(self, hostname: str) -> RemoteEndpoint | None:
        # An https name's plain-HTTP visitors go to its worker too (it redirects them),
        # unless an http endpoint matches here.
        found = self.remote_http.lookup(hostname)
        if found is None and self.edge.http_routes.lookup(hostname) is None:
            found = self.remote_sni.lookup(hostname)
        return found

    def hand_off(self, transport: Any, carried: bytes, target: Any) -> bool:
        """An HTTP visitor whose endpoint ``target`` (a RemoteEndpoint) another worker
        holds: pass its socket and ``carried`` (what was read from it)."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        return self._send(sock.fileno(), Handoff("http", target.key, carried), target)

    def sni_handed_off(
        self, conn: socket.socket, server_name: str, local: HostEndpoint | None
    ) -> bool:
        target = self.remote_sni.lookup(server_name)
        if target is None or not hands_over(local, target):
            return False
        return self._send(conn.fileno(), Handoff("tls", target.key), target)

    def tcp_handed_off(self, fd: int, key: str) -> bool:
        target = self._remote_tcp.get(key)
        if target is None:
            return False
        return self._send(fd, Handoff("tcp", key), target)

    @property
    def handoffs_failed(self) -> int:
        """Visitors not handed over: refused at once, or dropped after waiting for a
        worker that read none or went (Outbox.dropped)."""
        return self.sends_failed + (self.outbox.dropped if self.outbox is not None else 0)

    def _send(self, fd: int, handoff: Handoff, target: RemoteEndpoint) -> bool:
        """Hand the visitor to one of ``target``'s workers, in turn; another of them if
        that one cannot take it (gone, or too far behind)."""
        assert self.outbox is not None
        why: HandoffError | None = None
        for _ in range(len(target.workers)):
            try:
                self.outbox.send(target.next_worker(), fd, handoff)
            except HandoffError as exc:
                why = exc
                continue
            self.handed_off[handoff.front] += 1
            return True
        self.sends_failed += 1
        log.warning("handing a visitor of %s over failed: %s", handoff.key, why)
        return False

    def _dropped(self, front: str, fd: int) -> None:
        """A visitor handed to a worker that never took it (it read none for
        MAX_PENDING_FOR, or went; or this worker stops), given back by the outbox, which
        closes ``fd`` after. An HTTP visitor waited for an answer: it gets the page a
        handoff that fails at once gets. On the TLS port and a TCP port nothing was read
        and no handshake made: there is nothing to say, and the close is all it gets."""
        if front != "http":
            return
        sock = socket.socket(fileno=fd)
        try:
            unreachable_page(sock)  # on its own copy of the descriptor
        finally:
            sock.detach()  # ``fd`` stays the outbox's: closed once, by it

    def _handed_in(self, conn: socket.socket, handoff: Handoff) -> None:
        web = self.edge.web
        self.handed_in[handoff.front] += 1
        if handoff.again and self._handed_on(conn, handoff):
            return
        if handoff.front == "tcp":
            endpoint = self.edge.by_key.get(handoff.key)
            if not isinstance(endpoint, TcpEndpoint):
                conn.close()
                return
            loop = asyncio.get_running_loop()
            task = loop.create_task(loop.connect_accepted_socket(endpoint.adopt, conn))
            task.add_done_callback(_adoption_done)
        elif web is None:
            conn.close()
        elif handoff.front == "http":
            web.adopt_http(conn, handoff.carried)
        elif web.tls_front is not None:
            web.tls_front.adopt(conn)
        else:
            conn.close()

    def _handed_on(self, conn: socket.socket, handoff: Handoff) -> bool:
        """Pass a visitor handed here on to another worker holding its key, when no
        member of it here takes visitors (it drains, or went) while the sender's view
        said otherwise: the supervisor's ``where`` had not reached it yet. Once only
        (``again`` false on the way on); False: it is served here."""
        if takes_visitors(self.edge.by_key.get(handoff.key)):
            return False
        family, _, name = handoff.key.partition(":")
        routes = self._remote_routes(family)
        target = self._remote_tcp.get(handoff.key) if routes is None else routes.get(name)
        if target is None:
            return False
        if not self._send(conn.fileno(), dataclasses.replace(handoff, again=False), target):
            return False  # served here: an answer (503 for HTTP), not a silent close
        conn.close()  # our descriptor; the socket is the other worker's now
        return True


def _adoption_done(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("a handed-over visitor ended before it was served: %s", task.exception())
