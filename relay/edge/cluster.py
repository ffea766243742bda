"""This edge as one node of a cluster (docs/scaling.md).

What the node says about itself, through Redis (relay/cluster/presence.py): its region,
where other nodes link to it, and the names its agents hold live. What it does with what
the others say:

* A visitor for a name no endpoint here serves, held by a node of this region, is carried
  to that node (relay/cluster/nodelink.py): on the HTTP listener after its first head is
  read (the head goes with it), on the TLS port after its ClientHello is peeked (nothing
  was consumed). The better match wins, as on one edge: an exact name here is never
  shadowed by a wildcard there, and a wildcard here yields to an exact name there.
* A name held only by nodes of another region is refused: 421 RLY_631 over HTTP, a clean
  TLS alert on the TLS port. Its bytes never cross into another region (the bind side of
  pinning is in the edge: a pinned name is bound only in its region).
* A visitor another node carried here is served as if it had connected here, with the
  address that node saw.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from relay._httpfront import HttpVisitor
from relay.certs.local_ca import LocalCA, write_file_atomic
from relay.cluster.claims import kind_refused, rewrite_refused
from relay.cluster.event_seal import EventSeal, event_key
from relay.cluster.nodelink import NODE_NAME, NodeLinks, NodeTls
from relay.cluster.presence import Name, NodeInfo, Presence, RemoteName, may_share, share_of
from relay.config import parse_host_port
from relay.edge.cluster_asks import ClusterAsks
from relay.edge.cluster_ports import RemotePorts
from relay.edge.http import (
    HEAD_REQUEST,
    HttpFront,
    Refusal,
    agent_offline,
    no_tunnel,
    other_region,
)
from relay.edge.members import Pooled, hands_over, serving_session, takes_visitors
from relay.edge.refusal import unreachable_page
from relay.edge.routes import HostEndpoint
from relay.edge.tcp import TcpEndpoint, format_address
from relay.edge.workers_then_nodes import WorkersThenNodes
from relay.errors import EndpointAlreadyBound, RelayError
from relay.protocol import JOIN, StreamHeader, StreamProtocol

if TYPE_CHECKING:
    from relay.edge.server import Edge

log = logging.getLogger("relay.edge.cluster")


#: A node certificate is valid this long and issued again this often: weeks of margin
#: should issuing fail for a while (it is retried every NODE_CERT_RETRY).
NODE_CERT_DAYS = 30
NODE_CERT_RENEW_EVERY = 24 * 3600.0
NODE_CERT_RETRY = 3600.0


class ClusterNode:
    def __init__(self, edge: Edge) -> None:
        config = edge.config
        self.edge = edge
        self.region = config.region
        self.node_id = edge.pop_name
        #: Under --workers: this node's name without the worker (its siblings' prefix).
        self.base_id = self.node_id
        #: Under --workers each worker is a node of its own (its own key, names and link
        #: listener at cluster_listen's port + its index): a visitor another node carries
        #: here lands on the worker that holds its name, never handed on without the
        #: address the first node saw.
        self.port_offset = 0
        if edge.worker is not None:
            self.port_offset = edge.worker.index
            self.node_id = f"{self.node_id}.w{edge.worker.index}"
        self.links: NodeLinks | None = None
        self.presence: Presence | None = None
        #: TCP ports other nodes hold, listened on here too.
        self.ports: RemotePorts | None = None
        self._sync_due = False
        #: What this node asks the others, and answers them (the API's cluster view).
        self.asks = ClusterAsks(self.node_id, lambda: self.presence)
        #: Whether a bind went ahead on the table alone because Redis did not answer
        #: (logged once per outage).
        self._unclaimed_logged = False
        self._renewal: asyncio.TimerHandle | None = None

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        config = self.edge.config
        ca_dir = config.cluster_ca_dir or config.data_dir / "cluster"
        tls = node_certificate(ca_dir, self.node_id)
        self.links = NodeLinks(loop, tls, self._deliver, self._route_joined)
        self._renewal = loop.call_later(NODE_CERT_RENEW_EVERY, self.renew_certificate, ca_dir)
        host, port = parse_host_port(config.cluster_listen, what="cluster_listen")
        bound_host, bound_port = await self.links.listen(host, port + self.port_offset)
        advertise = _address(bound_host, bound_port)
        if config.cluster_advertise:
            host, port = parse_host_port(config.cluster_advertise, what="cluster_advertise")
            advertise = _address(host, port + self.port_offset)
        me = NodeInfo(self.node_id, self.region, advertise)
        self.ports = RemotePorts(
            self,
            config.tcp_ports,
            config.tcp_bind,
            reuse_port=self.edge.worker is not None,
            refused=lambda: self.edge.metrics.visitors_refused.labels("tcp", "other_region"),
        )
        self.presence = Presence(
            config.cluster_redis,
            me,
            self._names,
            on_event=self._event,
            owned=self._owned,
            on_table=self._sync_ports,
            seal=cluster_event_seal(ca_dir),
        )
        await self.presence.start()
        web = self.edge.web
        worker = self.edge.worker
        elsewhere: ClusterNode | WorkersThenNodes = self
        if worker is not None:
            elsewhere = WorkersThenNodes(worker, self)
        if web is not None:
            if web.http is not None:
                web.http.serve_elsewhere(elsewhere)
                web.http.region_of = self.region_of
                web.http.carrier = self._carrier
                if worker is not None:
                    web.http.sibling_holder = worker.http_holder
            if web.tls_front is not None:
                web.tls_front.elsewhere = elsewhere
                web.tls_front.region_of = self.region_of
        log.info("node %s of region %s: links at %s", self.node_id, self.region, advertise)

    def renew_certificate(self, ca_dir: Path) -> None:
        """Issue this node's certificate afresh and use it for new links: one issued at
        start would expire under a node that runs longer than it is valid, and no node
        could link to it, nor it to them, from then on."""
        loop = asyncio.get_running_loop()
        again = NODE_CERT_RENEW_EVERY
        try:
            tls = node_certificate(ca_dir, self.node_id)
            if self.links is not None:
                self.links.reload_tls(tls)
            log.info("node certificate issued again (valid %d days)", NODE_CERT_DAYS)
        except Exception:
            log.exception("cannot issue the node certificate again; retrying in an hour")
            again = NODE_CERT_RETRY
        self._renewal = loop.call_later(again, self.renew_certificate, ca_dir)

    async def stop(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
        if self.ports is not None:
            self.ports.close()
        if self.presence is not None:
            await self.presence.stop()
        if self.links is not None:
            await self.links.close()

    def announce(self, event: dict[str, str]) -> None:
        """Tell every other node (best effort: their poll is the net)."""
        if self.presence is None:
            return
        task = asyncio.get_running_loop().create_task(self.presence.publish_event(event))
        task.add_done_callback(_log_publish_failure)

    def _event(self, event: dict[str, str]) -> None:
        kind = event.get("event")
        if kind == "credentials":
            self.edge.credentials_ended(announce=False)
        elif kind == "reservations":
            self.edge.reservations.changed(announce=False)
        elif kind in ("ask", "answer"):
            self.asks.handle(event)

    def changed(self) -> None:
        """This node's live names changed (a bind, an unbind, a session's end)."""
        if self.presence is not None:
            self.presence.changed()
        if self.ports is not None and not self._sync_due:
            # After the change is done (a port released, an endpoint removed); once per
            # loop turn, however many binds a storm of agents makes in it.
            self._sync_due = True
            asyncio.get_running_loop().call_soon(self._sync_ports)

    def _sync_ports(self) -> None:
        self._sync_due = False
        if self.ports is None or self.presence is None:
            return
        # Another worker of this host: the workers share its port themselves.
        elsewhere = {
            int(port): remote
            for port, remote in self.presence.held("tcp").items()
            if not (
                self.edge.worker is not None and is_worker_of(self.base_id, remote.node.node_id)
            )
        }
        # Ports of endpoints here, and ports being bound here (a sync while a bind
        # waits must not listen on the port it is about to take).
        here = {p for p in elsewhere if self.edge.ports.taken(p)}
        here |= {e.port for e in self.edge.endpoints.values() if isinstance(e, TcpEndpoint)}
        self.ports.sync(elsewhere, here)

    def _names(self) -> list[Name]:
        """The names this node's endpoints serve now, each with its owner and how it may
        be shared (``_claim`` on the other nodes checks a bind against both). Only
        endpoints that take visitors: a name kept in grace for its agent (orphaned) is
        not published, so another agent of the token may take it from any node, as on
        one edge."""
        names: list[Name] = []
        for endpoint in list(self.edge.endpoints.values()):
            if not takes_visitors(endpoint):
                continue
            share = endpoint_share(endpoint)
            if isinstance(endpoint, TcpEndpoint):
                owner = owner_tag(endpoint.holder.token_id)
                names.append(("tcp", str(endpoint.port), "tcp", "", owner, share))
                continue
            host: HostEndpoint = endpoint
            rewrite = (host.host_rewrite or b"").decode("latin-1")
            owner = owner_tag(host.holder.token_id)
            names.append((host.family, host.hostname, host.kind, rewrite, owner, share))
        return names

    def _owned(self) -> dict[str, str]:
        return {
            e.hostname if isinstance(e, HostEndpoint) else f"tcp:{e.port}": owner_tag(
                e.holder.token_id
            )
            for e in list(self.edge.endpoints.values())
        }

    async def claim_name(
        self,
        hostname: str,
        token_id: str,
        family: str | None = None,
        agent_id: str | None = None,
        pooled: bool = False,
        rewrite: str = "",
        kind: str = "",
    ) -> bool:
        """A name has one owner across the cluster, as on one edge: another token's bind
        of a name a node holds is refused (links and pool members of the same token, on
        several nodes, share it). First the table, which names the node; then the claim
        in Redis, atomic, so of two binds on two nodes at the same instant one wins.
        While Redis does not answer, the table alone decides (binds go on; a clash made
        meanwhile is logged when Redis is back). True when a claim was made: the caller
        then calls :meth:`settle_name` once the bind has ended, held or not.

        With ``family`` (``http`` or ``sni``) and ``agent_id`` (the binding agent's,
        ``pooled``: whether it binds with pooling), the token's own agents are held to
        one edge's rule too: another agent may share a name another node holds live
        only when both pool (see :meth:`_check_shares`), and with the Host rewrite its
        other agents serve it with (``rewrite``: the bind's ``--host-header``, ``""``
        for none), and as the same ``kind`` (https or tls, on the TLS port). Without
        them only the owner is compared."""
        shares = (
            (family, agent_id, pooled, rewrite, kind) if family and agent_id is not None else None
        )
        return await self._claim(("http", "sni"), hostname, hostname, token_id, hostname, shares)

    def settle_name(self, hostname: str, token_id: str) -> None:
        if self.presence is not None:
            self.presence.settle(hostname, owner_tag(token_id))

    async def claim_port(
        self, port: int, token_id: str, agent_id: str | None = None, pooled: bool = False
    ) -> bool:
        """A TCP port has one owner across the cluster, as a name has (its visitors may
        reach any node of the region), and is shared as one edge shares it (with
        ``agent_id``, as for :meth:`claim_name`). True as for :meth:`claim_name`."""
        shares = ("tcp", agent_id, pooled, "", "tcp") if agent_id is not None else None
        return await self._claim(
            ("tcp",), str(port), f"tcp:{port}", token_id, f"tcp port {port}", shares
        )

    def settle_port(self, port: int, token_id: str) -> None:
        if self.presence is not None:
            self.presence.settle(f"tcp:{port}", owner_tag(token_id))

    async def _claim(
        self,
        families: tuple[str, ...],
        name: str,
        key: str,
        token_id: str,
        shown: str,
        shares: tuple[str, str, bool, str, str] | None = None,
    ) -> bool:
        presence = self.presence
        if presence is None:
            return False
        owner = owner_tag(token_id)
        for family in families:
            remote = presence.lookup(family, name)
            if remote is not None and remote.hostname == name and remote.owner != owner:
                raise EndpointAlreadyBound(
                    f"{shown} is bound by another token (on node {remote.node.node_id})"
                )
        if shares is not None:
            self._check_shares(presence, name, owner, shown, *shares)
        try:
            holder = await presence.claim(key, owner)
        except RelayError as err:
            if not self._unclaimed_logged:
                self._unclaimed_logged = True
                log.warning("binding names on this node's table alone: %s", err)
            return False
        self._unclaimed_logged = False
        if holder is not None:
            raise EndpointAlreadyBound(f"{shown} is bound by another token (in the cluster)")
        return True

    def _check_shares(
        self,
        presence: Presence,
        name: str,
        owner: str,
        shown: str,
        family: str,
        agent_id: str,
        pooled: bool,
        rewrite: str,
        kind: str,
    ) -> None:
        """Refuse a bind of ``name`` by an agent of ``owner``'s token that one edge would
        refuse (relay/edge/members.py ``admit``): another node holds it live for another
        agent, and not both pool (:func:`may_share`); or another agent's pool serves it
        there as the other kind (https or tls), or with another Host rewrite (one edge's
        ``_check_rewrite``: which node took a visitor must not decide the Host its
        upstream sees, nor whether its TLS is terminated). The agent's own links are
        not compared: they share its flags, so another rewrite under its id is a stale
        row. Only the same front counts, as on one edge (an http name and the TLS
        port's are two endpoints). A pool whose members all drain is not published
        (it takes no new visitor), so a member joining meanwhile is not compared with
        it, where one edge would still compare it with the draining members. Orphaned names are
        not published, so an agent of the token may still take one kept for an agent
        that is gone.

        This reads this node's table, which learns of another node's bind a publish
        round trip later (milliseconds): two such binds made on two nodes within that
        both pass, and both serve until one agent leaves. The Redis claim does not close
        that gap, because it knows the owner alone; it cannot tell a second instance
        from the agent's own link on another PoP, or from the agent restarted (a new
        agent id) taking back its orphaned name, without keeping members there too.

        Sibling workers of this host are left to the supervisor, which applies the
        same rule with what each worker holds now (a stale row here must not refuse a
        bind it would grant)."""
        own = share_of(False, agent_id)
        for remote in presence.holders(family, name):
            if remote.owner != owner:
                continue
            if self.edge.worker is not None and is_worker_of(self.base_id, remote.node.node_id):
                continue
            if not may_share(remote.share, agent_id, pooled):
                raise EndpointAlreadyBound(
                    f"{shown} is bound by another agent session (on node {remote.node.node_id})"
                )
            if kind and remote.kind and remote.kind != kind and remote.share != own:
                raise EndpointAlreadyBound(
                    kind_refused(shown, remote.kind) + f" (on node {remote.node.node_id})"
                )
            if remote.host_rewrite != rewrite and remote.share != own:
                raise EndpointAlreadyBound(
                    rewrite_refused(shown, remote.host_rewrite or None)
                    + f" (on node {remote.node.node_id})"
                )

    # --- which node ----------------------------------------------------------------

    def _holder(self, family: str, hostname: str, rotate: bool = False) -> RemoteName | None:
        """``rotate``: the holder a visitor is sent to (several holders take turns);
        called once per visitor, so that each visitor uses one turn."""
        if self.presence is None:
            return None
        links = self.links
        avoid = (lambda node: links.unreachable(node.link)) if links is not None else None
        return self.presence.lookup(family, hostname, avoid, rotate=rotate)

    def region_of(self, hostname: str, local: HostEndpoint | None = None) -> str | None:
        """The region that holds ``hostname`` when it is not this one (HTTP or TLS) and
        its name there is a better match than ``local`` (this node's endpoint for it, if
        any): a name pinned to another region is refused here even when a wildcard here
        covers it, as it would be were that wildcard on another node of this region."""
        for family in ("http", "sni"):
            remote = self._holder(family, hostname)
            if (
                remote is not None
                and remote.node.region != self.region
                and hands_over(local, remote)
            ):
                return remote.node.region
        return None

    # --- HttpFront's Elsewhere ---------------------------------------------------------

    def http_holder(self, hostname: str) -> RemoteName | None:
        remote = self._holder("http", hostname, rotate=True)
        if remote is None or remote.node.region != self.region:
            return None
        return remote

    def hand_off(self, transport: Any, carried: bytes, target: Any) -> bool:
        remote: RemoteName = target
        sock = _own_copy(transport.get_extra_info("socket"))
        if sock is None or self.links is None:
            return False
        peer = transport.get_extra_info("peername")
        header = StreamHeader(
            endpoint_id="",
            visitor_addr=format_address(peer),
            protocol=StreamProtocol.HTTP,
            server_name=remote.hostname,
        ).to_wire()
        self.links.forward(remote.node.link, header + carried, sock, unreachable_page)
        return True

    # --- TCP ports other nodes hold (relay/edge/cluster_ports.py) ----------------------

    def tcp_holder(self, port: int) -> RemoteName | None:
        return self._holder("tcp", str(port), rotate=True)

    def carry_tcp(self, transport: Any, remote: RemoteName, header: bytes) -> None:
        """A TCP visitor for ``remote``'s node while no link to it is up: its socket
        waits for the dial, then goes over (closed if that node cannot be reached)."""
        sock = _own_copy(transport.get_extra_info("socket"))
        transport.abort()  # our descriptor only: the copy is the visitor's now
        if sock is None or self.links is None:
            if sock is not None:
                sock.close()
            return
        self.links.forward(remote.node.link, header, sock, _close_only)

    # --- TlsFront's TlsElsewhere -------------------------------------------------------

    def sni_holder(self, server_name: str, rotate: bool = False) -> RemoteName | None:
        remote = self._holder("sni", server_name, rotate)
        if remote is None or remote.node.region != self.region:
            return None
        return remote

    def sni_handed_off(
        self,
        conn: socket.socket,
        server_name: str,
        local: HostEndpoint | None,
        remote: RemoteName | None = None,
    ) -> bool:
        """Send a TLS visitor to the node that holds ``server_name`` (``remote``: the
        holder the caller already chose for it)."""
        if remote is None:
            remote = self.sni_holder(server_name, rotate=True)
        if remote is None or self.links is None:
            return False
        if not hands_over(local, remote):
            return False
        sock = _own_copy(conn)
        if sock is None:
            return False
        header = StreamHeader(
            # A tls endpoint's bytes go to its agent as they are; an https one's are
            # served there as a visitor's (that node has its certificate).
            endpoint_id=JOIN if remote.kind == "tls" else "",
            visitor_addr=format_address(conn.getpeername()),
            protocol=StreamProtocol.TLS,
            server_name=server_name,
        ).to_wire()
        self.links.forward(remote.node.link, header, sock, _close_only)
        return True

    def _carrier(self, target: Any) -> Any | None:
        """HttpFront: the link to ``target``'s node when it is up (its visitors are then
        parsed here and their stream joined there); None: hand the socket over."""
        if self.links is None or not isinstance(target, RemoteName):
            return None  # another worker's: handed over within the host
        link = self.links.link_to(target.node.link)
        if link is not None:
            self.links.forwarded += 1
        return link

    # --- visitors other nodes carried here ---------------------------------------------

    def _route_joined(self, header: StreamHeader) -> tuple[Any, bytes] | bytes:
        """A stream to join to an agent's: the agent link serving its name here, and the
        header that agent gets (this node's endpoint id). Or, when nothing here serves
        it, what to answer on the stream before closing it: the page one edge gives an
        HTTP visitor (the node that carried it relays it), nothing for TLS and TCP."""
        endpoint: HostEndpoint | TcpEndpoint | None
        name = header.server_name
        if header.protocol == StreamProtocol.HTTP:
            endpoint, pinned = self.edge.http_routes.find(name)
            if pinned is not None:
                # A wildcard here covers it, but it is pinned to another region: the node
                # that carried it knew the wildcard, not the pin.
                return self._unserved(header, other_region(name, pinned))
            kinds: tuple[str, ...] = ("http",)
        elif header.protocol == StreamProtocol.TLS:
            endpoint = self.edge.sni_routes.lookup(name)
            kinds = ("tls",)
        elif header.protocol == StreamProtocol.TCP:
            endpoint = self.edge.by_key.get(f"tcp:{name}")
            kinds = ("tcp",)
        else:
            return b""
        if endpoint is None or endpoint.kind not in kinds:
            return self._unserved(header, no_tunnel(name))
        session = serving_session(endpoint)
        if session is None:
            return self._unserved(header, agent_offline(name))
        rebuilt = StreamHeader(
            endpoint.endpoint_id,
            header.visitor_addr,
            header.protocol,
            "" if header.protocol == StreamProtocol.TCP else header.server_name,
            {k: v for k, v in header.extra.items() if k != HEAD_REQUEST},
        )
        return session.link, rebuilt.to_wire()

    def _unserved(self, header: StreamHeader, refusal: Refusal) -> bytes:
        web = self.edge.web
        if header.protocol != StreamProtocol.HTTP or web is None or web.http is None:
            return b""
        http: HttpFront = web.http
        head = header.extra.get(HEAD_REQUEST) == "1"  # a HEAD's page has no body
        return http.error_page(*refusal, header.extra.get("accept"), head)

    def _deliver(self, header: StreamHeader, sock: socket.socket) -> None:
        web = self.edge.web
        peer = _peer_tuple(header.visitor_addr)
        if header.protocol == StreamProtocol.HTTP and web is not None and web.http is not None:
            http = web.http
            coro = http.loop.connect_accepted_socket(
                lambda: HttpVisitor(http, "http", peer=peer), sock
            )
            http.loop.create_task(coro)
        elif header.protocol == StreamProtocol.TLS and web is not None and web.tls_front:
            web.tls_front.adopt(sock, peer=peer)
        else:
            log.warning("a forwarded visitor of protocol %s has no listener here", header.protocol)
            sock.close()

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "presence": self.presence.status() if self.presence is not None else None,
            "links": self.links.status() if self.links is not None else None,
            "tcp_ports": self.ports.listening if self.ports is not None else [],
        }


def is_worker_of(base_id: str, node_id: str) -> bool:
    """Whether ``node_id`` is a worker of the node ``base_id`` (``BASE.wI``, exactly: a
    node of another host may be named ``BASE.west``)."""
    head, dot_w, index = node_id.rpartition(".w")
    return head == base_id and bool(dot_w) and index.isdigit() and index.isascii()


def endpoint_share(endpoint: Pooled) -> str:
    """How ``endpoint`` may be shared, as other nodes check a bind against it: pooled
    when every live member bound it with pooling, else held by the agent of its
    (live) primary. One edge admits no other agent beside a member that does not pool,
    so all such members are that one agent's links."""
    live = [m for m in endpoint.members if m.session is not None] or [endpoint.holder]
    return share_of(all(m.pooled for m in live), endpoint.holder.agent_id)


@functools.lru_cache(maxsize=4096)
def owner_tag(token_id: str) -> str:
    """What other nodes learn of a name's owner: enough to tell two tokens apart, and
    not the token's id (Redis is shared by every node, not by every operator tool).
    Cached: every heartbeat asks it for every endpoint, twice (names and claims)."""
    return hashlib.sha256(b"relay-owner:" + token_id.encode()).hexdigest()[:16]


def cluster_event_seal(ca_dir: Path) -> EventSeal:
    """The seal of the events nodes send each other through Redis: its key derived from
    the cluster CA's private key, which every node holds and Redis does not."""
    ca = LocalCA.load_or_create(ca_dir)
    der = ca.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return EventSeal(event_key(der))


def node_certificate(ca_dir: Path, node_id: str) -> NodeTls:
    """This node's certificate from the cluster CA, issued afresh at every start and
    every NODE_CERT_RENEW_EVERY (it proves membership of the cluster; the CA stays on the
    node to do so)."""
    ca = LocalCA.load_or_create(ca_dir)
    chain, key = ca.issue_server_cert([NODE_NAME], [], days=NODE_CERT_DAYS, client_auth=True)
    nodes = ca_dir / "nodes"
    nodes.mkdir(mode=0o700, parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", node_id)
    cert_path, key_path = nodes / f"{stem}.pem", nodes / f"{stem}.key"
    write_file_atomic(key_path, key, 0o600)
    write_file_atomic(cert_path, chain, 0o644)
    return NodeTls(cert_path, key_path, ca.ca_pem_path)


def _own_copy(sock: Any) -> socket.socket | None:
    """A socket object of our own on the visitor's connection: the transport that has it
    is aborted right after, which closes only its descriptor."""
    if sock is None:
        return None
    try:
        fd = os.dup(sock.fileno())
    except OSError:
        return None
    copy = socket.socket(fileno=fd)
    copy.setblocking(False)
    return copy


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer_tuple(address: str) -> tuple[str, int] | str:
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        return address
    return host.strip("[]"), int(port)


def _log_publish_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not tell the other nodes: %s", task.exception())


def _close_only(sock: socket.socket) -> None:
    pass
