"""A worker of a node of a cluster: where a visitor goes when no endpoint of this worker
serves its name — to another worker of this host (its socket passed over, nothing
relayed), else to another node of the region (relay/edge/cluster.py).

Both places are asked; the more specific name wins (an exact name before a wildcard, as
on one edge), and of two holders of the same name the other worker wins: handing a socket
over within the host costs less than a link between hosts. One exception, also as on one
edge: a plain-HTTP visitor whose name another worker holds only as an https endpoint
(which redirects it) goes to a node's http endpoint for it, when one matches. The other
workers of this host are nodes in the presence table too (each worker is a node of its
own); finding them first as workers keeps their visitors off the links.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from relay.edge.members import better_match, hands_over
from relay.edge.worker import RemoteEndpoint

if TYPE_CHECKING:
    from relay.edge.cluster import ClusterNode
    from relay.edge.routes import HostEndpoint
    from relay.edge.worker import EdgeWorker


class WorkersThenNodes:
    """The HTTP front's ``Elsewhere`` and the TLS front's ``TlsElsewhere``."""

    def __init__(self, workers: EdgeWorker, nodes: ClusterNode) -> None:
        self.workers = workers
        self.nodes = nodes

    def http_holder(self, hostname: str) -> Any | None:
        worker = self.workers.http_holder(hostname)
        node = self.nodes.http_holder(hostname)
        if worker is not None and worker.family == "sni" and node is not None:
            # The other worker holds only the name's https endpoint (it would redirect
            # the visitor); an http endpoint of a node serves it, as on one edge any
            # http endpoint that matches comes before the redirect.
            return node
        return better_match(worker, node)

    def hand_off(self, transport: Any, carried: bytes, target: Any) -> bool:
        if isinstance(target, RemoteEndpoint):
            return self.workers.hand_off(transport, carried, target)
        return self.nodes.hand_off(transport, carried, target)

    def sni_handed_off(
        self, conn: socket.socket, server_name: str, local: HostEndpoint | None
    ) -> bool:
        worker = self.workers.remote_sni.lookup(server_name)
        node = self.nodes.sni_holder(server_name, rotate=True)
        best = better_match(worker, node)
        if best is None or not hands_over(local, best):
            return False
        if best is worker:
            return self.workers.sni_handed_off(conn, server_name, local)
        return self.nodes.sni_handed_off(conn, server_name, local, node)
