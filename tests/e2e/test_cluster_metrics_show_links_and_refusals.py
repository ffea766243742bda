"""What an SRE watching a cluster in Prometheus sees of it (docs/metrics.md, the
dashboard's "Workers and cluster" row and the RelayCluster* alerts): each node says it
is one (relay_cluster_member), the links between nodes are counted at both ends while
up (relay_cluster_links), and a connection to the node-link port that fails its TLS
handshake (no certificate of the cluster's CA) is counted where it was refused
(relay_cluster_link_refusals_total), from each node's /metrics.

Real edge nodes on their own loopback addresses sharing one real Redis, from the
``nodes`` fixture of test_cluster_forwards_within_a_region.py; every process is stopped
by its PID afterwards.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
import urllib.request

import pytest

from tests.e2e.http_helpers import host_of, web_agent
from tests.e2e.origin import Origin
from tests.e2e.procs import Agent, payload
from tests.e2e.test_admin_listener import sample
from tests.e2e.test_cluster_forwards_within_a_region import (
    Node,
    nodes,  # noqa: F401
    post_sink,
    wait_known,
)
from tests.redis_server import redis_server  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def metric(node: Node, name: str, **labels: str) -> float:
    url = f"http://{node.host}:{node.edge.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return sample(answer.read().decode(), name, **labels)


def eventually(node: Node, name: str, want: float, **labels: str) -> None:
    """Until ``node``'s sample reads ``want`` (bounded: 10 s, 200 scrapes)."""
    deadline = time.monotonic() + 10
    for _ in range(200):
        if metric(node, name, **labels) == want or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert metric(node, name, **labels) == want, (name, labels)


def test_a_node_counts_its_links_and_the_strangers_its_link_port_refused(
    nodes: dict[str, Node],  # noqa: F811
    origin: Origin,
    agents: list[Agent],
) -> None:
    a, b = nodes["a"], nodes["b"]
    for node in (a, b):
        assert metric(node, "relay_cluster_member") == 1
        assert metric(node, "relay_cluster_links", direction="out") == 0
        assert metric(node, "relay_cluster_links", direction="in") == 0
    agent = web_agent(b.edge, agents, str(origin.port), "--no-https", "--subdomain", "seen")
    wait_known(a, 1)
    body = payload(21, 60_000)
    served = post_sink(a, a.edge.http_port, host_of(agent), body, None)
    assert served == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    # a dialled b for that visitor: one link, out at a and in at b.
    eventually(a, "relay_cluster_links", 1, direction="out")
    eventually(b, "relay_cluster_links", 1, direction="in")
    assert metric(a, "relay_cluster_links", direction="in") == 0
    assert metric(a, "relay_cluster_visitors_total", direction="out") == 1
    assert metric(b, "relay_cluster_link_refusals_total") == 0
    # A client with no certificate of the cluster's CA, straight to b's link port.
    stranger = ssl.create_default_context()
    stranger.check_hostname = False
    stranger.verify_mode = ssl.CERT_NONE
    for _ in range(2):
        with socket.create_connection(b.tap.target, timeout=10) as raw:
            try:
                with stranger.wrap_socket(raw) as tls:
                    tls.recv(1)  # TLS 1.3: the refusal comes after the client's handshake
            except (ssl.SSLError, ConnectionError):
                pass
    eventually(b, "relay_cluster_link_refusals_total", 2)
    assert metric(a, "relay_cluster_link_refusals_total") == 0
    # The link itself is untouched: the next visitor goes over it, hash-checked.
    assert post_sink(a, a.edge.http_port, host_of(agent), body, None) == served
    assert metric(a, "relay_cluster_links", direction="out") == 1
