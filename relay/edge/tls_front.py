"""The TLS port: peek at the ClientHello, then terminate (https) or pass through (tls).

The ClientHello is read with MSG_PEEK, so nothing is consumed: a passthrough connection
hands the untouched ciphertext — ClientHello included — to the agent, and a terminated
one gives the whole handshake to the TLS engine with the certificate chosen by SNI. The
edge never holds a key for a ``tls`` endpoint.

A name with no certificate of its own (no endpoint, or an https endpoint whose certificate
is not issued yet) is asked about once per connection: ``fallback_for`` may give a stand-in
certificate and a front that answers with an error page (404 RLY_610, 503 RLY_615);
otherwise the visitor gets a fatal ``unrecognized_name`` alert. Names that have their
certificate never get there: their lookup is the same two dict lookups as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from relay._httpfront import HttpVisitor
from relay.accepting import AcceptLoop
from relay.edge.client_hello import ClientHelloError, parse_client_hello
from relay.edge.http import HttpFront
from relay.edge.members import serving_session
from relay.edge.routes import HostRoutes
from relay.edge.tcp import Refuse, format_address
from relay.mux import Pump
from relay.protocol import StreamHeader, StreamProtocol

if TYPE_CHECKING:
    from relay.edge.metrics import EdgeMetrics
    from relay.edge.routes import HostEndpoint

#: Given a server name with no certificate of its own and its endpoint (None: no endpoint
#: serves it), a stand-in context and the front that answers its requests, or None.
FallbackFor = Callable[[str, "HostEndpoint | None"], "tuple[ssl.SSLContext, HttpFront] | None"]

log = logging.getLogger("relay.edge.tls")

#: A ClientHello larger than this is refused (16 KiB record + header, twice for split).
MAX_HELLO = 2 * (16 * 1024 + 5)
#: How often to look again when a ClientHello has arrived only in part.
PEEK_RETRY = 0.005
#: TLS record: alert, legacy version 1.2, length 2, fatal (2), unrecognized_name (112).
ALERT_UNRECOGNIZED_NAME = bytes((21, 3, 3, 0, 2, 2, 112))


class TlsElsewhere(Protocol):
    def sni_handed_off(
        self, conn: socket.socket, server_name: str, local: HostEndpoint | None
    ) -> bool:
        """Hand ``conn`` to the worker that holds ``server_name`` live, when its name is
        the better match than ``local`` (this worker's); False when no other worker
        should serve it (or it cannot take it): then it is served here."""


class TlsFront:
    def __init__(
        self,
        routes: HostRoutes[HostEndpoint],
        https: HttpFront,
        *,
        context_for: Callable[[str], ssl.SSLContext | None],
        acme_context_for: Callable[[str], ssl.SSLContext | None] | None,
        hello_timeout: float,
        fallback_for: FallbackFor | None = None,
        metrics: EdgeMetrics | None = None,
        log_access: bool = False,
    ) -> None:
        self.routes = routes
        self.https = https
        self.context_for = context_for
        self.acme_context_for = acme_context_for
        self.hello_timeout = hello_timeout
        self.fallback_for = fallback_for
        self.metrics = metrics
        #: Whether passthrough connections get an access log line each.
        self.log_access = log_access
        self.sock: socket.socket | None = None
        self.acceptor: AcceptLoop | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: set[_PendingHello] = set()
        #: Set on a worker's TLS port: other workers' endpoints (relay/edge/worker.py), or
        #: on a node of a cluster: other nodes' (relay/edge/cluster.py).
        self.elsewhere: TlsElsewhere | None = None
        #: On a node of a cluster: the region that holds a name no node of this one does.
        self.region_of: Callable[[str, HostEndpoint | None], str | None] | None = None

    def listen(self, host: str, port: int, *, reuse_port: bool = False) -> tuple[str, int]:
        self.loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:  # one listener per worker; the kernel spreads visitors
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(1024)
        except OSError:
            sock.close()  # the caller reports it (ListenError); no descriptor left behind
            raise
        self.sock = sock
        # At the descriptor limit AcceptLoop pauses (one log line) instead of spinning on
        # the connection that stays queued.
        self.acceptor = AcceptLoop(self.loop, sock, self._accepted, what="TLS port")
        name = sock.getsockname()
        return name[0], name[1]

    def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
            self.acceptor = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for pending in list(self.pending):
            pending.abandon()

    def _accepted(self, conn: socket.socket, address: Any) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # already reset by the peer
            conn.close()
            return
        self.pending.add(_PendingHello(self, conn))

    def adopt(self, conn: socket.socket, peer: Any = None) -> None:
        """A visitor another worker accepted and handed over (its ClientHello is still
        unread: that worker only peeked), or one another node forwarded (``peer``: the
        visitor's address there). Served here, whatever changed meanwhile."""
        self.pending.add(_PendingHello(self, conn, may_hand_off=False, peer=peer))

    # --- once the ClientHello is known ---------------------------------------------------

    def dispatch(
        self,
        conn: socket.socket,
        server_name: str | None,
        alpn: tuple[str, ...],
        hello_len: int,
        may_hand_off: bool = True,
        peer: Any = None,
    ) -> None:
        """``peer``: the visitor's address when ``conn`` is not its own socket."""
        loop = self.loop
        assert loop is not None
        name = server_name or ""
        if "acme-tls/1" in alpn and self.acme_context_for is not None:
            ctx = self.acme_context_for(name)
            if ctx is not None:
                self._start(conn, _Hangup, ctx)
                return
        endpoint, pinned = self.routes.find(name) if name else (None, None)
        if pinned is not None:
            # A wildcard here covers it, but its reservation pins it to another region:
            # refused as a name held there is, before any hand-over (data residency).
            self._refuse(conn, hello_len, "other_region")
            return
        if (
            may_hand_off
            and self.elsewhere is not None
            and name
            and self.elsewhere.sni_handed_off(conn, name, endpoint)
        ):
            conn.close()  # our descriptor; the socket is the other worker's now
            return
        if name and self.region_of is not None and self.region_of(name, endpoint):
            # Held in another region (pinned there): never carried across, refused cleanly.
            self._refuse(conn, hello_len, "other_region")
            return
        if endpoint is None:
            stand_in = self.fallback_for(name, None) if name and self.fallback_for else None
            if stand_in is None:
                self._refuse(conn, hello_len)
                return
            answers = stand_in[1]
            self._start(conn, lambda: HttpVisitor(answers, "https", peer=peer), stand_in[0])
            return
        if endpoint.kind == "tls":
            session = serving_session(endpoint)
            if session is None:
                conn.close()
                return
            header = StreamHeader(
                endpoint_id=endpoint.endpoint_id,
                visitor_addr="",
                protocol=StreamProtocol.TLS,
                server_name=name,
            )

            def header_factory(transport: Any) -> bytes:
                address = format_address(peer or transport.get_extra_info("peername"))
                return StreamHeader(
                    header.endpoint_id, address, header.protocol, header.server_name
                ).to_wire()

            slot = endpoint.metric_slot

            def again() -> Pump | None:
                # The session went away before the socket connected: another, or none.
                other = serving_session(endpoint)
                if other is None:
                    return None
                return self._passthrough(other, name, header_factory, slot, peer)

            def first() -> Pump:
                pump = self._passthrough(session, name, header_factory, slot, peer)
                pump.reroute = again
                return pump

            self._start(conn, first, None)
            return
        ctx = self.context_for(name)
        endpoint_id = endpoint.endpoint_id
        if ctx is None:  # e.g. an ACME certificate not issued yet
            stand_in = self.fallback_for(name, endpoint) if self.fallback_for else None
            if stand_in is None:
                self._refuse(conn, hello_len)
                return
            answers = stand_in[1]
            self._start(
                conn, lambda: HttpVisitor(answers, "https", endpoint_id, peer=peer), stand_in[0]
            )
            return
        # The visitor checked this endpoint's certificate: its requests may name no other.
        self._start(conn, lambda: HttpVisitor(self.https, "https", endpoint_id, peer=peer), ctx)

    def _refuse(self, conn: socket.socket, hello_len: int, why: str = "unknown_name") -> None:
        """A clean fatal ``unrecognized_name`` alert, written by hand: no TLS engine is
        needed to say no, and uvloop's would close without flushing its alert."""
        if self.metrics is not None:
            self.metrics.visitors_refused.labels("tls", why).inc()
        try:
            conn.recv(hello_len)  # consume the hello, so closing sends FIN, not RST
            conn.send(ALERT_UNRECOGNIZED_NAME)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        conn.close()

    def _start(
        self, conn: socket.socket, factory: Callable[[], Any], ctx: ssl.SSLContext | None
    ) -> None:
        loop = self.loop
        assert loop is not None
        if ctx is None:
            coro = loop.connect_accepted_socket(factory, conn)
        else:
            coro = loop.connect_accepted_socket(
                factory, conn, ssl=ctx, ssl_handshake_timeout=self.hello_timeout
            )
        task = loop.create_task(coro)
        task.add_done_callback(self._handshake_done if ctx is not None else _log_start_failure)

    def _handshake_done(self, task: asyncio.Task[Any]) -> None:
        """A terminated connection's handshake ended (its visitor is served from here)."""
        failed = task.cancelled() or task.exception() is not None
        if self.metrics is not None:
            self.metrics.tls_handshakes.labels("https", "failed" if failed else "ok").inc()
        _log_start_failure(task)

    def _passthrough(
        self, session: Any, name: str, header_factory: Any, slot: int, peer: Any = None
    ) -> Pump:
        """A ``tls`` endpoint's visitor: ciphertext both ways, counted as kind tls (and in
        the endpoint's own series ``slot``, if it has one)."""
        pump = Pump(session.link, header_factory=header_factory, kind=TLS_KIND)
        pump.log_visitor = peer
        if slot:
            pump.metric_slot = slot
        if self.log_access:
            pump.log_endpoint = f"tls://{name}"
        return pump


#: The traffic counters' index of ``tls`` (relay._fastpath.KINDS).
TLS_KIND = 3


def _log_start_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("TLS connection ended during setup: %s", task.exception())


class _Hangup(asyncio.Protocol):
    """For handshakes that must end with an alert (or an ACME check): close when done."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _PendingHello:
    """A connection whose ClientHello is still being read (peeked, not consumed)."""

    def __init__(
        self, front: TlsFront, conn: socket.socket, *, may_hand_off: bool = True, peer: Any = None
    ) -> None:
        self.front = front
        self.conn = conn
        self.may_hand_off = may_hand_off
        self.peer = peer
        loop = front.loop
        assert loop is not None
        self.loop = loop
        self.deadline = loop.time() + front.hello_timeout
        self.timer: asyncio.TimerHandle | None = None
        # The deadline holds for a visitor that never sends a byte too: without this
        # timer only a read checked it, and a silent connection kept its descriptor
        # for ever (enough of them and the port stops accepting).
        self.expiry = loop.call_at(self.deadline, self.abandon)
        loop.add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        self.loop.remove_reader(self.conn.fileno())
        try:
            data = self.conn.recv(MAX_HELLO, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            self._wait_more()
            return
        except OSError:
            self.abandon()
            return
        if not data:
            self.abandon()
            return
        try:
            hello = parse_client_hello(data)
        except ClientHelloError:
            self.abandon()
            return
        if hello is None:
            if len(data) >= MAX_HELLO or self.loop.time() > self.deadline:
                self.abandon()
            else:
                self._wait_more()
            return
        self.front.pending.discard(self)
        self.expiry.cancel()
        self.front.dispatch(
            self.conn,
            hello.server_name,
            tuple(hello.alpn),
            hello.consumed,
            self.may_hand_off,
            self.peer,
        )

    def _wait_more(self) -> None:
        # The peeked bytes keep the socket readable, so wait a little instead of spinning.
        self.timer = self.loop.call_later(PEEK_RETRY, self._again)

    def _again(self) -> None:
        self.timer = None
        if self.loop.time() > self.deadline:
            self.abandon()
            return
        self.loop.add_reader(self.conn.fileno(), self._readable)

    def abandon(self) -> None:
        self.front.pending.discard(self)
        self.expiry.cancel()
        if self.timer is not None:
            self.timer.cancel()
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.conn.fileno())
        self.conn.close()


__all__ = ["Refuse", "TlsFront"]
