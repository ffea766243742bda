"""A name held (pinned) in another region is refused here even when a wildcard endpoint
here covers it (relay/edge/cluster.py ``ClusterNode.region_of``, asked by the HTTP and TLS
fronts with their local match): otherwise the less specific local wildcard would serve,
and for https decrypt, the pinned name's traffic outside its region. It is what a node
answers when that wildcard is on another node of its region (421 RLY_631).

Real Presence on a real redis-server: node eu1 (region eu) holds the exact name; node
us1 (region us) reads it from Redis and its real HttpFront routes visitors with a local
wildcard endpoint.
"""

from __future__ import annotations

import asyncio
import types

import pytest

from relay.cluster.presence import NodeInfo, Presence
from relay.edge.cluster import ClusterNode
from relay.edge.http import HttpFront
from relay.edge.registry import Holder
from relay.edge.routes import HostEndpoint, HostRoutes
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.unit.test_cluster_presence import eventually, running

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

EU = NodeInfo("eu1", "eu", "10.0.0.1:7400")
US = NodeInfo("us1", "us", "10.0.0.2:7400")
PEER = ("198.51.100.9", 5555)


def wildcard_here(kind: str) -> tuple[HostRoutes[HostEndpoint], object]:
    """This node's routes: ``*.example.com`` served by a live agent; and its link."""
    link = object()
    session = types.SimpleNamespace(accepting_visitors=True, link=link)
    routes: HostRoutes[HostEndpoint] = HostRoutes()
    routes.add(HostEndpoint("ep_wild", kind, "*.example.com", Holder("tok_x", "a_1", session), "x"))
    return routes, link


def node_in(region: str, presence: Presence) -> ClusterNode:
    """A ClusterNode with what region_of reads: its region, presence and no links."""
    node = ClusterNode.__new__(ClusterNode)
    node.region, node.presence, node.links = region, presence, None
    return node


async def test_a_local_wildcard_does_not_serve_a_name_pinned_to_another_region(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    held_in_eu = [
        ("http", "app.example.com", "http", "", "owner-y"),
        ("sni", "app.example.com", "https", "", "owner-y"),
    ]
    eu = Presence(redis_server.url, EU, lambda: held_in_eu, heartbeat=0.2)
    us = Presence(redis_server.url, US, list, heartbeat=0.2)
    async with running(eu, us):
        await eventually(lambda: us.lookup("sni", "app.example.com") is not None, 3, "us sees")
        node = node_in("us", us)
        routes, link = wildcard_here("http")
        front = HttpFront(
            routes,
            loop=asyncio.get_running_loop(),
            max_head=8192,
            max_headers=100,
            max_body=0,
            header_timeout=5,
            idle_timeout=5,
        )
        front.region_of = node.region_of
        refused = front.route("app.example.com", b"/", "http", PEER, None, None, False)
        assert refused[:2] == (421, "RLY_631"), refused
        assert "region eu" in str(refused[2])
        # Any other name the wildcard covers is served here as before.
        served = front.route("www.example.com", b"/", "http", PEER, None, None, False)
        assert served[0] == 0 and served[1] is link, served
        # The TLS front asks the same with its local match (an https wildcard here).
        tls_routes, _ = wildcard_here("https")
        local = tls_routes.lookup("app.example.com")
        assert local is not None
        assert node.region_of("app.example.com", local) == "eu"
        assert node.region_of("www.example.com", tls_routes.lookup("www.example.com")) is None
        # An exact name here beats the other region's: served here (a pool across regions).
        exact_routes, _ = wildcard_here("http")
        session = types.SimpleNamespace(accepting_visitors=True, link=object())
        exact = HostEndpoint(
            "ep_exact", "http", "app.example.com", Holder("tok_y", "a_2", session), "y"
        )
        exact_routes.add(exact)
        assert node.region_of("app.example.com", exact) is None
