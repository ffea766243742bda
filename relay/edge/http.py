"""The HTTP side of the edge: what HttpVisitor (Cython) asks Python, once per connection.

``route`` maps a Host to a live agent link and builds the StreamHeader; ``error_page``
renders the small pages sent before any stream exists; ``acme_http01`` answers ACME
HTTP-01 challenges for any Host before routing.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from relay._httpfront import PARSE_FIRST
from relay.edge.members import hands_over, serving_session, takes_visitors
from relay.edge.routes import HostEndpoint, HostRoutes
from relay.edge.tcp import format_address
from relay.error_pages import render
from relay.protocol import JOIN, StreamHeader, StreamProtocol

if TYPE_CHECKING:
    from relay.edge.metrics import EdgeMetrics

ACME_PREFIX = b"/.well-known/acme-challenge/"
ALLOWED_METHODS = b"GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH"

RouteResult = tuple[int, Any, Any, Any, int]
#: An error page's status, code and message.
Refusal = tuple[int, str, str]


def no_tunnel(hostname: str) -> Refusal:
    return (404, "RLY_610", f"no tunnel is serving {hostname or 'this host'}")


def agent_offline(hostname: str) -> Refusal:
    return (503, "RLY_611", f"the agent serving {hostname} is offline")


def other_region(hostname: str, region: str) -> Refusal:
    """A name pinned to (or held only in) another region: never served here."""
    return (421, "RLY_631", f"{hostname} is served in region {region}, not this one")


#: In the header of a stream carried to another node (``_carried``): the first request is
#: a HEAD, so a page that node answers instead of its agent has no body.
HEAD_REQUEST = "head"


class Elsewhere(Protocol):
    """Workers (relay/edge/worker.py): the endpoints other workers of this edge hold; or
    a node of a cluster (relay/edge/cluster.py): those other nodes of its region hold."""

    def http_holder(self, hostname: str) -> Any | None:
        """Where a visitor for ``hostname`` goes when no endpoint here serves it live
        (handed to :meth:`hand_off` as ``target``), or None."""

    def hand_off(self, transport: Any, carried: bytes, target: Any) -> bool:
        """Give the visitor's socket and the bytes read from it to ``target``'s worker;
        False if that worker cannot take it."""


class HttpFront:
    """Shared by every HttpVisitor of one listener (plain HTTP or terminated HTTPS)."""

    def __init__(
        self,
        routes: HostRoutes[HostEndpoint],
        *,
        loop: asyncio.AbstractEventLoop,
        max_head: int,
        max_headers: int,
        max_body: int,
        header_timeout: float,
        idle_timeout: float,
        acme_responder: Callable[[str], bytes | None] | None = None,
        redirect_to_https: Callable[[str, bytes], str | None] | None = None,
        metrics: EdgeMetrics | None = None,
    ) -> None:
        self.routes = routes
        self.loop = loop
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.acme_responder = acme_responder
        self.redirect_to_https = redirect_to_https
        self.metrics = metrics
        #: Set on a worker's plain-HTTP front: other workers' endpoints.
        self.elsewhere: Elsewhere | None = None
        #: HttpVisitor keeps what it reads before routing only when this is set.
        self.hand_off: Callable[[Any, bytes, Any], bool] | None = None
        #: On a node of a cluster: the region that holds a name no node of this one does.
        self.region_of: Callable[[str, HostEndpoint | None], str | None] | None = None
        #: On a node of a cluster: the link up now to the node holding an ``elsewhere``
        #: target (None: not up; the visitor is handed over instead, socket and all).
        self.carrier: Callable[[Any], Any | None] | None = None
        #: On a worker of a node of a cluster: the other worker of this host that holds a
        #: name (relay/edge/worker.py ``EdgeWorker.http_holder``), asked from a visitor's
        #: unparsed head by :meth:`handed_by_name`.
        self.sibling_holder: Callable[[str], Any | None] | None = None

    def serve_elsewhere(self, elsewhere: Elsewhere) -> None:
        self.elsewhere = elsewhere
        self.hand_off = elsewhere.hand_off

    def route(
        self,
        hostname: str,
        url: bytes,
        scheme: str,
        peer: Any,
        accept: str | None,
        tls_endpoint: str | None = None,
        may_hand_off: bool = False,
        head: bool = False,
    ) -> RouteResult:
        """(0, link, stream header, host rewrite, endpoint series slot) — or (status, code,
        message, None, 0) for an error page — or (-1, response bytes, None, None, 0) for a
        local answer (redirect) — or (-2, target, None, None, 0): hand the visitor to the
        worker that holds its endpoint (only if ``may_hand_off``: a visitor already
        handed over is served here, whatever happened meanwhile).

        ``tls_endpoint``: on the TLS port, the id of the endpoint the SNI selected (its
        certificate is the one the visitor checked). A Host of any other endpoint is
        misdirected (RFC 9110 §15.5.20): otherwise one tenant's certificate would front
        another tenant's site, and a ``tls`` endpoint, whose traffic the edge must never
        decrypt, could be sent plaintext the edge decrypted.
        """
        endpoint, pinned = self.routes.find(hostname)
        if pinned is not None:
            # A wildcard here covers it, but its reservation pins it to another region:
            # never served here, whoever holds it or whether anyone does (data residency).
            return self._error(*other_region(hostname, pinned))
        if tls_endpoint is not None and (
            endpoint is None or endpoint.endpoint_id != tls_endpoint or endpoint.kind != "https"
        ):
            return self._error(
                421,
                "RLY_630",
                f"{hostname or 'this host'} is not the name this TLS connection is for",
            )
        if may_hand_off:
            target = self._held_elsewhere(hostname, endpoint)
            if target is not None:
                link = self.carrier(target) if self.carrier is not None else None
                if link is not None:
                    return self._carried(link, target, hostname, scheme, peer, accept, head)
                return (-2, target, None, None, 0)
        if self.region_of is not None:
            region = self.region_of(hostname, endpoint)
            if region:
                return self._error(*other_region(hostname, region))
        if endpoint is None and self.redirect_to_https is not None:
            location = self.redirect_to_https(hostname, url)
            if location is not None:
                return (-1, _redirect(location), None, None, 0)
        if endpoint is None:
            return self._error(*no_tunnel(hostname))
        session = serving_session(endpoint)
        if session is None:
            return self._error(*agent_offline(hostname))
        protocol = StreamProtocol.HTTPS if scheme == "https" else StreamProtocol.HTTP
        extra = {"accept": accept} if accept else {}
        header = StreamHeader(
            endpoint_id=endpoint.endpoint_id,
            visitor_addr=format_address(peer),
            protocol=protocol,
            server_name=hostname,
            extra=extra,
        ).to_wire()
        return (0, session.link, header, endpoint.host_rewrite, endpoint.metric_slot)

    def decides_by_name(self) -> bool:
        """Whether :meth:`handed_by_name` may place a visitor from its unparsed head:
        under workers, and on a node of a cluster that runs workers (a node alone sends
        its visitors over node links, and those need their head parsed)."""
        return self.elsewhere is not None and (
            self.carrier is None or self.sibling_holder is not None
        )

    def handed_by_name(self, hostname: str) -> Any | None:
        """Where a visitor for ``hostname`` is handed, decided from its name alone (the
        worker that holds it), for a head whose Host is plain from its bytes: its
        sending worker then never parses it (the receiving one does, whole). None: it is
        served or refused here, and ``route`` need not look elsewhere again.
        ``PARSE_FIRST``: ``route`` decides it, once parsed.

        On a node of a cluster (``carrier``) only another worker of this host holding
        the exact name is decided here: no node can hold a better match, and of two
        holders as good the worker wins (relay/edge/workers_then_nodes.py). Any other
        name may be another node's, and node links carry visitors parsed, so the nodes
        are not looked up here (their lookup takes a pool's turn)."""
        endpoint, pinned = self.routes.find(hostname)
        if pinned is not None:
            return None  # refused here, as ``route`` does before any hand-over
        if self.carrier is None:
            return self._held_elsewhere(hostname, endpoint)
        if _served_here_exactly(hostname, endpoint):
            return None
        sibling = self.sibling_holder(hostname) if self.sibling_holder is not None else None
        # Only the sibling's http endpoint of the exact name: for its https one (a
        # redirect) a node's http endpoint would come first.
        if sibling is None or (sibling.family, sibling.hostname) != ("http", hostname):
            return PARSE_FIRST
        return sibling if hands_over(endpoint, sibling) else PARSE_FIRST

    def _held_elsewhere(self, hostname: str, endpoint: HostEndpoint | None) -> Any | None:
        """The other worker or node a visitor for ``hostname`` goes to, rather than to
        ``endpoint`` (this edge's match for it, if any); None: not elsewhere."""
        if self.elsewhere is None or _served_here_exactly(hostname, endpoint):
            return None
        target = self.elsewhere.http_holder(hostname)
        if target is None or not hands_over(endpoint, target):
            return None
        return target

    def _carried(
        self,
        link: Any,
        target: Any,
        hostname: str,
        scheme: str,
        peer: Any,
        accept: str | None,
        head: bool = False,
    ) -> RouteResult:
        """The visitor's requests go, parsed and rewritten here, on a stream of the link
        to the node holding ``target``, which joins it to its agent's stream (or answers
        it with the page one edge would give, when it finds nothing to serve it)."""
        extra = {"accept": accept} if accept else {}
        if head:
            extra[HEAD_REQUEST] = "1"
        header = StreamHeader(
            endpoint_id=JOIN,
            visitor_addr=format_address(peer),
            protocol=StreamProtocol.HTTPS if scheme == "https" else StreamProtocol.HTTP,
            server_name=hostname,
            extra=extra,
        ).to_wire()
        rewrite = target.host_rewrite.encode("latin-1") if target.host_rewrite else None
        return (0, link, header, rewrite, 0)

    def _error(self, status: int, code: str, message: str) -> RouteResult:
        return (status, code, message, None, 0)

    def error_page(
        self, status: int, code: str, message: str, accept: str | None, head: bool
    ) -> bytes:
        if self.metrics is not None:
            self.metrics.error_pages.labels(code).inc()
        page = render(
            status, code, message, accept=accept, request_id=secrets.token_hex(8), head=head
        )
        if status == 405:
            # RFC 9110 §15.5.6: a 405 names what is allowed. The edge forwards every
            # method but CONNECT; these are the ones HTTP itself defines.
            status_line, _, rest = page.partition(b"\r\n")
            page = b"%b\r\nallow: %b\r\n%b" % (status_line, ALLOWED_METHODS, rest)
        return page

    def acme_http01(self, url: bytes) -> bytes | None:
        if self.acme_responder is None or not url.startswith(ACME_PREFIX):
            return None
        token = url[len(ACME_PREFIX) :].decode("ascii", "replace")
        body = self.acme_responder(token)
        if body is None:
            return None
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body)
        )


def _redirect(location: str) -> bytes:
    target = location.encode("latin-1", "replace")
    return (
        b"HTTP/1.1 308 Permanent Redirect\r\nlocation: %b\r\ncontent-length: 0\r\n"
        b"connection: close\r\n\r\n" % target
    )


def _served_here_exactly(hostname: str, endpoint: HostEndpoint | None) -> bool:
    """``endpoint`` is ``hostname`` itself and takes visitors here: nothing elsewhere can
    be a better match (``hands_over``), so no other worker or node is looked up for it."""
    return endpoint is not None and endpoint.hostname == hostname and takes_visitors(endpoint)
