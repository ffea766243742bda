"""TCP ports another node of the cluster holds, listened on here too.

DNS may send a TCP address's visitors to any PoP of its region, as it does a name's. So a
node listens on every port of its range that another node holds (and no endpoint here
does), and carries each visitor to that node over the link between them
(relay/cluster/nodelink.py), where its stream is joined to the agent's. A port held only
by a node of another region is listened on too, but only to close each visitor cleanly
(a FIN, no byte read or sent): its bytes never cross into another region.

A bind here of a port a listener of this module holds (a pool member or a link of the
same token) takes the port over: :meth:`RemotePorts.give_up` closes the listener first.
The listeners follow the presence table: :meth:`RemotePorts.sync` opens and closes them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relay._fastpath import Pump
from relay.cluster.nodelink import CLUSTER_KIND
from relay.edge.ports import PortRange
from relay.edge.tcp import format_address
from relay.protocol import JOIN, StreamHeader, StreamProtocol

if TYPE_CHECKING:
    from relay.cluster.presence import RemoteName
    from relay.edge.cluster import ClusterNode

log = logging.getLogger("relay.edge.cluster")


class _Listener:
    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.AbstractServer | None = None
        self.opening: asyncio.Task[None] | None = None


class RemotePorts:
    def __init__(
        self,
        node: ClusterNode,
        ports: PortRange,
        bind: str,
        *,
        reuse_port: bool,
        refused: Callable[[], Any],
    ) -> None:
        """``refused()``: the counter of visitors closed because another region holds
        their port."""
        self.node = node
        self.range = ports
        self.bind = bind
        self.reuse_port = reuse_port
        self.refused = refused
        self._open: dict[int, _Listener] = {}
        self._closed = False

    def sync(self, held_elsewhere: dict[int, RemoteName], held_here: set[int]) -> None:
        """Listen on each port of ``held_elsewhere`` in this node's range and not in
        ``held_here``; stop listening on the others."""
        if self._closed:
            return
        wanted = {p for p in held_elsewhere if self.range.first <= p <= self.range.last} - held_here
        for port in list(self._open):
            if port not in wanted:
                self.give_up(port)
        for port in wanted - set(self._open):
            listener = self._open[port] = _Listener(port)
            listener.opening = asyncio.get_running_loop().create_task(self._listen(listener))

    def give_up(self, port: int) -> None:
        """Stop listening on ``port`` (an endpoint here is about to bind it)."""
        listener = self._open.pop(port, None)
        if listener is None:
            return
        if listener.opening is not None and not listener.opening.done():
            listener.opening.cancel()
        if listener.server is not None:
            listener.server.close()  # live visitors' streams go on

    def close(self) -> None:
        self._closed = True
        for port in list(self._open):
            self.give_up(port)

    @property
    def listening(self) -> list[int]:
        return sorted(p for p, listener in self._open.items() if listener.server is not None)

    async def _listen(self, listener: _Listener) -> None:
        loop = asyncio.get_running_loop()
        try:
            listener.server = await loop.create_server(
                lambda: self._visitor(listener.port),
                self.bind,
                listener.port,
                reuse_address=True,
                reuse_port=self.reuse_port or None,
                backlog=1024,
            )
        except OSError as exc:
            # In use by something else on this host: its visitors cannot reach the other
            # node through this one (said once per port; tried again on the next change).
            level = logging.DEBUG if exc.errno == errno.EADDRINUSE else logging.WARNING
            log.log(level, "cannot listen on tcp port %d for another node: %s", listener.port, exc)
            if self._open.get(listener.port) is listener:
                del self._open[listener.port]
        finally:
            listener.opening = None

    def _visitor(self, port: int) -> asyncio.BaseProtocol:
        remote = self.node.tcp_holder(port)
        if remote is None or remote.node.region != self.node.region:
            self.refused().inc()
            return _CloseCleanly()
        links = self.node.links
        assert links is not None
        header = _Header(port)
        link = links.link_to(remote.node.link)
        if link is not None:
            links.forwarded += 1
            return Pump(link, header_factory=header, kind=CLUSTER_KIND)
        return _DialFirst(self.node, remote, header)


class _Header:
    def __init__(self, port: int) -> None:
        self.port = port

    def __call__(self, transport: asyncio.BaseTransport) -> bytes:
        return StreamHeader(
            endpoint_id=JOIN,
            visitor_addr=format_address(transport.get_extra_info("peername")),
            protocol=StreamProtocol.TCP,
            server_name=str(self.port),
        ).to_wire()


class _CloseCleanly(asyncio.Protocol):
    """Another region holds the port: the visitor gets a FIN, and nothing crosses."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _DialFirst(asyncio.Protocol):
    """The link to the holding node is not up: the visitor's socket waits for the dial
    (relay/cluster/nodelink.py ``forward``), its bytes unread."""

    def __init__(self, node: ClusterNode, remote: RemoteName, header: _Header) -> None:
        self.node = node
        self.remote = remote
        self.header = header

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.node.carry_tcp(transport, self.remote, self.header(transport))
