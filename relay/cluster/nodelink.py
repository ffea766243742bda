"""Links between edge nodes: a visitor that reached node A for a name node B holds is
carried to B over one link per pair of nodes.

A link is TLS with a certificate on both ends, each signed by the cluster CA (a CA of its
own, not the one that signs endpoint certificates), and yamux on top: the same Rust
session and Cython byte path as an agent link. Node A is the dialling side and opens one
stream per visitor, which starts with a StreamHeader (the visitor's address, the name,
the protocol). B does one of two things with it:

* **Join** (the header's endpoint id is ``JOIN``): A did the endpoint's work already (an
  http visitor's requests parsed and rewritten by A's HTTP front, with B's host rewrite
  from presence; a tls visitor's ciphertext passed through), so B opens a stream to the
  agent serving the name, with a header of its own endpoint id, and joins the two
  streams (``relay._fastpath.Joint``): no socket between them, no Python per chunk.
  A routes an http visitor this way once the link to B is up.
* **Serve** (any other id): the header is followed by the bytes A read (an HTTP head, read
  before the link was up; nothing on the TLS port, where A only peeked), then the
  visitor's bytes as they come, pumped on A by an ordinary ``Pump``. B joins the stream
  to one end of a socket pair and serves the other end as if the visitor had connected
  to B itself (relay/edge/cluster.py): B's HTTP front parses it, B's TLS port terminates
  an https visitor with B's certificate. That costs B a copy through the kernel each
  way, and is left for what only B can do (https) and for the first visitors while the
  link is dialled.

Links are dialled on the first visitor for a node, reused for every later one, and
redialled after a failure no sooner than ``REDIAL_AFTER``; visitors that arrive while one
is being dialled wait for it (at most ``MAX_WAITING`` per node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import relay_native

from relay._fastpath import Joint
from relay.errors import ProtocolViolation, RelayError
from relay.mux import MuxConfig, Pump
from relay.protocol import JOIN, StreamHeader
from relay.tls import prefer_tls13_suites
from relay.tlslink import Listener, connect_link, serve_links

log = logging.getLogger("relay.cluster.link")

#: The name every node certificate carries and every dialling node checks: membership of
#: the cluster is what is proven, by the CA's signature (.invalid: never a real name).
NODE_NAME = "node.relay-cluster.invalid"
#: A node that could not be dialled is not dialled again sooner than this.
REDIAL_AFTER = 1.0
#: The multiplexer's limits on a link between nodes: an agent link's, but a ping every
#: 2 s answered within 3 s. A network between PoPs that goes silent (a partition drops
#: every packet) then ends the link, and cuts the visitors on it, within 5 s instead of
#: 25 s; there is one link per pair of nodes, so the pings cost nothing.
NODE_LINK_MUX = MuxConfig(keepalive_interval_ms=2_000, keepalive_timeout_ms=3_000)
#: A node whose link failed is passed over, while another holds the same name, this long
#: (its Redis key may outlive it by the presence ttl).
UNREACHABLE_FOR = 10.0
#: Visitors waiting for one node's link to come up; more are refused at once.
MAX_WAITING = 1024
#: A link must be up within this; a stream's header must arrive within this.
CONNECT_TIMEOUT = 5.0
HEADER_TIMEOUT = 10.0
#: The traffic counters' index of an inter-node stream's pump (relay._fastpath.KINDS).
CLUSTER_KIND = 4

#: What B does with a forwarded visitor: its header and B's end of the socket pair.
Deliver = Callable[[StreamHeader, socket.socket], None]
#: For a stream to be joined (its header's endpoint is JOIN): the agent link to join it
#: to and the header that agent must get, or None when nothing here serves it.
#: A joined stream's agent link and the header its agent gets; or, when nothing here
#: serves it, the answer to send on the stream before closing it (empty: a reset).
Route = Callable[[StreamHeader], "tuple[Any, bytes] | bytes"]
#: A visitor that could not be forwarded (its socket, still A's to answer and close).
Failed = Callable[[socket.socket], None]


@dataclass(frozen=True)
class NodeTls:
    """This node's certificate and the cluster CA, as the two TLS contexts."""

    cert: Path
    key: Path
    ca: Path

    def server(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.cert, self.key)
        ctx.load_verify_locations(self.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED  # a node, or nothing
        return prefer_tls13_suites(ctx)

    def client(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.cert, self.key)
        ctx.load_verify_locations(self.ca)
        return prefer_tls13_suites(ctx)


@dataclass
class _Waiting:
    header: bytes
    sock: socket.socket
    failed: Failed


@dataclass
class _Outbound:
    """This node's link to one other node."""

    address: str
    link: Any = None
    dialling: bool = False
    #: When a dial last failed (no new dial for REDIAL_AFTER), and when a link was last
    #: lost (dialled again at the next visitor, but passed over meanwhile by lookups).
    failed_at: float = -1e9
    lost_at: float = -1e9
    waiting: list[_Waiting] = field(default_factory=list)


class NodeLinks:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        tls: NodeTls,
        deliver: Deliver,
        route: Route,
        mux: MuxConfig | None = None,
    ) -> None:
        self.loop = loop
        self.route = route
        self._server_ctx = tls.server()
        self._client_ctx = tls.client()
        self.deliver = deliver
        self.mux = mux or NODE_LINK_MUX
        self._out: dict[str, _Outbound] = {}
        self._inbound: set[Any] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: Listener | None = None
        self.forwarded = 0  # visitors sent to another node
        self.received = 0  # visitors another node sent here
        self.joined = 0  # of which joined to an agent's stream (no socket pair)
        self.answered = 0  # joins nothing here serves, answered with an error page
        self.failures = 0  # visitors that could not be sent
        #: Connections to the link port whose TLS handshake failed: no cluster
        #: certificate, another cluster's, an expired one, not TLS (counted where relay
        #: runs TLS on the socket itself; uvloop's TLS keeps its handshakes to itself).
        self.refused = 0

    def reload_tls(self, tls: NodeTls) -> None:
        """Use ``tls``'s certificate (the same cluster CA) for every handshake from now
        on, both ways; links already up keep theirs."""
        for ctx in (self._server_ctx, self._client_ctx):
            ctx.load_cert_chain(tls.cert, tls.key)

    # --- listening (node B) ------------------------------------------------------------

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        self._listener = await serve_links(
            self.loop,
            lambda: self.mux.new_link(_Inbound(self), self.loop, client=False),
            host,
            port,
            ssl_context=self._server_ctx,
            handshake_timeout=CONNECT_TIMEOUT,
            on_handshake=self._handshake_done,
            what="node link",
        )
        bound = self._listener.sockets[0].getsockname()
        return bound[0], bound[1]

    def _handshake_done(self, ok: bool) -> None:
        if not ok:
            self.refused += 1

    # --- forwarding (node A) -----------------------------------------------------------

    def forward(self, address: str, header: bytes, sock: socket.socket, failed: Failed) -> None:
        """Carry the visitor on ``sock`` to the node listening at ``address``: ``header``
        (StreamHeader and the bytes already read) first, then its bytes as they come.
        ``failed(sock)`` if that node cannot be reached."""
        out = self._out.get(address)
        if out is None:
            out = self._out[address] = _Outbound(address)
        if out.link is not None and not out.link.closed:
            self._start(out.link, header, sock, failed)
            return
        out.link = None
        if not out.dialling and time.monotonic() - out.failed_at < REDIAL_AFTER:
            self._failed(sock, failed)
            return
        if len(out.waiting) >= MAX_WAITING:
            self._failed(sock, failed)
            return
        out.waiting.append(_Waiting(header, sock, failed))
        if not out.dialling:
            out.dialling = True
            self._spawn(self._dial(out))

    async def _dial(self, out: _Outbound) -> None:
        host, _, port = out.address.rpartition(":")
        dialler = _Dialler(self, out, self.loop.create_future())
        link: Any = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _transport, link = await connect_link(
                    self.loop,
                    lambda: self.mux.new_link(dialler, self.loop, client=True),
                    host.strip("[]"),
                    int(port),
                    ssl_context=self._client_ctx,
                    server_hostname=NODE_NAME,
                    handshake_timeout=CONNECT_TIMEOUT,
                )
                # In TLS 1.3 this side's handshake is done before the other node has
                # checked this node's certificate: a refusal (expired, another cluster's)
                # comes as an alert after it. Only a ping answered proves the link, so no
                # visitor is started on one about to be cut (each would get a reset, not
                # the 503 a failed dial gives, and nothing would stop the next redial).
                link.session.ping()
                link.schedule_flush()
                await dialler.proven
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
            log.warning("cannot link to node %s: %s", out.address, exc or "timed out")
            dialler.proven.cancel()  # a loss after a timeout has nobody to tell
            if link is not None:
                link.close()
            out.dialling = False
            out.failed_at = time.monotonic()
            waiting, out.waiting = out.waiting, []
            for item in waiting:
                self._failed(item.sock, item.failed)
            return
        out.dialling = False
        out.link = link
        log.info("linked to node %s", out.address)
        waiting, out.waiting = out.waiting, []
        for item in waiting:
            self._start(link, item.header, item.sock, item.failed)

    def _start(self, link: Any, header: bytes, sock: socket.socket, failed: Failed) -> None:
        # Counted as "cluster" here: the visitor was counted by its kind when accepted.
        pump = Pump(link, header_factory=lambda _transport: header, kind=CLUSTER_KIND)
        self.forwarded += 1
        task = self._spawn(self.loop.connect_accepted_socket(lambda: pump, sock))
        task.add_done_callback(lambda t: self._started(t, sock, failed))

    def _started(self, task: asyncio.Task[Any], sock: socket.socket, failed: Failed) -> None:
        if task.cancelled() or task.exception() is not None:
            self.forwarded -= 1
            self._failed(sock, failed)

    def _failed(self, sock: socket.socket, failed: Failed) -> None:
        self.failures += 1
        try:
            failed(sock)
        finally:
            sock.close()

    def unreachable(self, address: str) -> bool:
        """Whether the node at ``address`` failed lately and has no link up now."""
        out = self._out.get(address)
        return (
            out is not None
            and out.link is None
            and time.monotonic() - max(out.failed_at, out.lost_at) < UNREACHABLE_FOR
        )

    def link_lost(self, out: _Outbound, link: Any) -> None:
        if out.link is link:
            out.link = None
            out.lost_at = time.monotonic()

    # --- receiving (node B) ------------------------------------------------------------

    def stream_arrived(self, link: Any, stream_id: int) -> None:
        link.session.accept_stream(stream_id)
        channel = link.open_buffer_channel(stream_id)
        # The header nearly always comes in the same read as the open, but its DATA is
        # delivered after this call: look once the batch is done.
        self.loop.call_soon(self._read_header, link, channel, self.loop.time() + HEADER_TIMEOUT)

    def _read_header(self, link: Any, channel: Any, deadline: float) -> None:
        try:
            if channel.reset or link.closed or channel.stream_id not in link.channels:
                return
            parsed = StreamHeader.parse(channel.peek())
            if parsed is None:
                if channel.fin or self.loop.time() >= deadline:
                    raise ProtocolViolation("inter-node stream ended or stalled in its header")
                # Look again on more bytes, and at the deadline at the latest.
                again = _Again(self, link, channel, deadline)
                channel.wait().add_done_callback(again.fire)
                again.timer = self.loop.call_at(deadline, again.fire, None)
                return
            header, used = parsed
            channel.take(used)
            if header.endpoint_id == JOIN:
                self._join(link, channel, header)
                return
            channel.hold()  # credit waits until the socket pair takes the bytes
            ours, theirs = socket.socketpair()
        except (RelayError, OSError) as exc:
            log.warning("inter-node stream %d refused: %s", channel.stream_id, exc)
            self._refuse(link, channel.stream_id)
            return
        self.received += 1
        pump = Pump(link, channel.stream_id, None, b"", CLUSTER_KIND)
        ours.setblocking(False)
        theirs.setblocking(False)
        self._spawn(self.loop.connect_accepted_socket(lambda: pump, ours))
        try:
            self.deliver(header, theirs)
        except Exception:
            log.exception("serving a forwarded visitor failed")
            theirs.close()

    def _join(self, link: Any, channel: Any, header: StreamHeader) -> None:
        """Join the stream to a new stream to the agent serving its name here."""
        found = self.route(header)
        if isinstance(found, bytes):
            log.info("inter-node stream for %s: nothing here serves it", header.server_name)
            self._answer(link, channel.stream_id, found)
            return
        agent_link = found[0]
        if agent_link.closed:
            log.info("inter-node stream for %s: its agent's link closed", header.server_name)
            self._refuse(link, channel.stream_id)
            return
        try:
            stream_id = agent_link.session.open_stream()
            agent_link.session.send(stream_id, found[1] + channel.take(-1))
        except relay_native.YamuxError as exc:
            log.info("inter-node stream for %s: %s", header.server_name, exc)
            self._refuse(link, channel.stream_id)
            return
        Joint.join(link, channel.stream_id, agent_link, stream_id)
        if channel.fin:
            agent_link.session.close_stream(stream_id)
        link.session.set_read_paused(channel.stream_id, False)  # a full channel paused it
        agent_link.schedule_flush()
        link.schedule_flush()
        self.received += 1
        self.joined += 1

    def _answer(self, link: Any, stream_id: int, answer: bytes) -> None:
        """Send ``answer`` and end the stream (a reset when there is nothing to say). The
        stream is no longer read: what the other node still sends on it (a request's
        body) stops at its window, and its visitor then at its own limits, instead of
        flowing here to be dropped for as long as it keeps sending."""
        if not answer:
            self._refuse(link, stream_id)
            return
        link.channels.pop(stream_id, None)
        try:
            link.session.set_read_paused(stream_id, True)
            link.session.send(stream_id, answer)
            link.session.close_stream(stream_id)
        except relay_native.YamuxError:
            self._refuse(link, stream_id)  # the other node reset it meanwhile
            return
        self.answered += 1
        link.schedule_flush()

    def _refuse(self, link: Any, stream_id: int) -> None:
        link.channels.pop(stream_id, None)
        link.session.reset_stream(stream_id)
        link.schedule_flush()

    def link_to(self, address: str) -> Any | None:
        """The link up now to the node at ``address``, if any (nothing is dialled)."""
        out = self._out.get(address)
        if out is None or out.link is None or out.link.closed:
            return None
        return out.link

    # --- life ------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def status(self) -> dict[str, Any]:
        return {
            "links_out": sorted(
                a for a, o in self._out.items() if o.link is not None and not o.link.closed
            ),
            "links_in": len(self._inbound),
            "forwarded": self.forwarded,
            "received": self.received,
            "joined": self.joined,
            "answered": self.answered,
            "failed": self.failures,
            "refused": self.refused,
        }

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for out in self._out.values():
            if out.link is not None:
                out.link.close()
            for item in out.waiting:
                item.sock.close()
            out.waiting.clear()
        for link in list(self._inbound):
            link.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _Again:
    """One more look at a stream's header: on its next bytes or at the deadline."""

    def __init__(self, links: NodeLinks, link: Any, channel: Any, deadline: float) -> None:
        self.links = links
        self.link = link
        self.channel = channel
        self.deadline = deadline
        self.timer: asyncio.TimerHandle | None = None
        self.fired = False

    def fire(self, _future: object) -> None:
        if self.fired:
            return
        self.fired = True
        if self.timer is not None:
            self.timer.cancel()
        self.links._read_header(self.link, self.channel, self.deadline)


class _Dialler:
    """The dialling side's link handler: it opens streams; the other node opens none.
    ``proven``: done at the first pong (the other node took this one's certificate),
    failed if the link is lost before."""

    def __init__(self, links: NodeLinks, out: _Outbound, proven: asyncio.Future[None]) -> None:
        self.links = links
        self.out = out
        self.link: Any = None
        self.proven = proven

    def link_made(self, link: Any) -> None:
        self.link = link

    def stream_opened(self, stream_id: int) -> None:
        self.link.session.reset_stream(stream_id)
        self.link.schedule_flush()

    def goaway(self, code: int) -> None:
        log.info("node %s sent GoAway(%d)", self.out.address, code)
        self.links.link_lost(self.out, self.link)

    def pong(self, rtt_us: int) -> None:
        if not self.proven.done():
            self.proven.set_result(None)

    def link_lost(self, exc: BaseException | None) -> None:
        if not self.proven.done():
            # Still being dialled: _dial says why (once), as for any failed dial.
            self.proven.set_exception(ConnectionError(f"refused after the handshake: {exc}"))
            return
        log.info("link to node %s lost: %s", self.out.address, exc or "closed")
        self.links.link_lost(self.out, self.link)


class _Inbound:
    """The listening side's link handler: every stream the other node opens is a visitor."""

    def __init__(self, links: NodeLinks) -> None:
        self.links = links
        self.link: Any = None

    def link_made(self, link: Any) -> None:
        self.link = link
        self.links._inbound.add(link)

    def stream_opened(self, stream_id: int) -> None:
        self.links.stream_arrived(self.link, stream_id)

    def goaway(self, code: int) -> None:
        pass

    def pong(self, rtt_us: int) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        self.links._inbound.discard(self.link)
