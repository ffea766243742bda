"""Nodes of a cluster that run several workers each (`--workers 2` with `--cluster-redis`).

Each worker is a node of its own: its own key in Redis and its own link listener (the
node's `--cluster-listen` port + its index). A visitor that reaches either worker of one
node is carried to the worker of the other node that holds its name, with its own
address; a name another worker of the same node holds is handed over within the host,
never sent over a link; a killed worker's names are served again once the supervisor has
started it again and its agent is back.

Two nodes on their own loopback addresses (127.0.0.2, .3), sharing one data directory
(one control plane and one cluster CA) and one real Redis.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster_nodes import cluster_args
from tests.e2e.http_helpers import exchange, first_served, host_of, one_request, web_agent
from tests.e2e.origin import Origin
from tests.e2e.procs import Agent, Edge, free_port_range, payload
from tests.e2e.test_edge_workers import worker_pids
from tests.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.timeout(240)

WORKERS = 2
NODES = (("a", "127.0.0.2"), ("b", "127.0.0.3"))


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, Edge]]:  # noqa: F811
    data_dir = tmp_path / "shared"
    made: dict[str, Edge] = {}
    try:
        for name, host in NODES:
            first_link_port, _ = free_port_range(WORKERS)
            edge = Edge(
                data_dir,
                host=host,
                ports=free_port_range(10),
                workers=WORKERS,
                extra=[
                    "--region",
                    "eu",
                    *cluster_args(name, redis_server.url, f"{host}:{first_link_port}"),
                ],
            )
            made[name] = edge
            edge.start()  # one after the other: the first makes the shared data directory
        yield made
    finally:
        for edge in made.values():
            edge.stop()


def cluster(edge: Edge, worker: int) -> dict[str, Any]:
    status: dict[str, Any] = edge.worker_status(worker)["cluster"]
    return status


def links(edge: Edge, worker: int) -> dict[str, int]:
    found: dict[str, int] = cluster(edge, worker)["links"]
    return found


def holder(edge: Edge, url: str) -> int:
    """The worker of ``edge`` whose endpoints include ``url`` (bounded: 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for worker in range(WORKERS):
            if any(e["url"] == url for e in edge.worker_status(worker)["endpoints"]):
                return worker
        time.sleep(0.05)
    raise AssertionError(f"no worker of {edge.host} holds {url}")


def wait_known(edge: Edge, hostname: str, workers: range = range(WORKERS)) -> None:
    """Until each of ``workers`` of ``edge`` has a name (``hostname``) in its table of
    other nodes' (bounded: 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(cluster(edge, w)["presence"]["remote_names"] >= 1 for w in workers):
            return
        time.sleep(0.05)
    raise AssertionError(f"the workers of {edge.host} never learned of {hostname}")


def post_sink(edge: Edge, host: str, body: bytes) -> Any:
    head = f"POST /sink HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n"
    return json.loads(exchange(edge.http_port, host, head.encode(), body, address=edge.host))


def test_every_worker_of_a_node_carries_visitors_to_the_worker_holding_the_name(
    nodes: dict[str, Edge], origin: Origin, agents: list[Agent]
) -> None:
    a, b = nodes["a"], nodes["b"]
    agent = web_agent(b, agents, str(origin.port), "--no-https", "--subdomain", "spread")
    host = host_of(agent)
    at_b = holder(b, agent.url)
    wait_known(a, host)
    # The kernel spreads new connections over a's two workers (SO_REUSEPORT): 24 of them
    # all land on one worker once in 8 million runs.
    for i in range(24):
        body = payload(i, 50_000 + i)
        assert post_sink(a, host, body) == {
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
    for _ in range(4):
        seen = json.loads(
            exchange(
                a.http_port,
                host,
                f"GET /headers HTTP/1.1\r\nhost: {host}\r\n".encode(),
                address=a.host,
            )
        )
        forwarded_for = [v for k, v in seen["headers"] if k == "x-forwarded-for"]
        assert forwarded_for == ["127.0.0.1"], seen
    forwarded = [links(a, w)["forwarded"] for w in range(WORKERS)]
    assert sum(forwarded) == 28 and min(forwarded) > 0, forwarded
    assert all(links(a, w)["failed"] == 0 for w in range(WORKERS))
    # Every one of them reached the worker of b that holds the name, over its own link.
    received = [links(b, w)["received"] for w in range(WORKERS)]
    assert received[at_b] == 28 and received[1 - at_b] == 0, received
    assert cluster(b, at_b)["node"] == f"b.w{at_b}"


def test_a_name_another_worker_of_the_node_holds_is_handed_over_not_linked(
    nodes: dict[str, Edge], origin: Origin, agents: list[Agent]
) -> None:
    a = nodes["a"]
    agent = web_agent(a, agents, str(origin.port), "--no-https", "--subdomain", "sibling")
    host = host_of(agent)
    at = holder(a, agent.url)
    wait_known(a, host, range(1 - at, 2 - at))  # the other worker knows it as a node's too
    for i in range(16):
        body = payload(40 + i, 30_000)
        assert post_sink(a, host, body)["sha256"] == hashlib.sha256(body).hexdigest()
    # Visitors the other worker accepted went to the holder over the host, not a link.
    assert all(links(a, w)["forwarded"] == 0 for w in range(WORKERS))
    handed = a.worker_status(1 - at)["workers"]["handed_off"]["http"]
    assert handed > 0, a.worker_status(1 - at)["workers"]


def test_a_sibling_worker_s_exact_name_is_handed_over_before_any_parse(
    nodes: dict[str, Edge], origin: Origin, agents: list[Agent]
) -> None:
    """As under workers alone: the worker that accepts a visitor for an exact name another
    worker of its host holds hands it over from its head's bytes, unparsed (no node can
    hold a better match). So a head that is malformed after its Host line is answered
    400 by the worker serving the name, and the one that accepted it only handed it
    over; a worker that parsed first would have answered it itself."""
    a = nodes["a"]
    agent = web_agent(a, agents, str(origin.port), "--no-https", "--subdomain", "unparsed")
    host = host_of(agent)
    at = holder(a, agent.url)
    other = 1 - at
    wait_known(a, host, range(other, other + 1))
    # Valid visitors until one was handed over: the other worker knows the name by then.
    deadline = time.monotonic() + 10
    for _ in range(500):
        if handed(a, other) > 0 or time.monotonic() > deadline:
            break
        assert post_sink(a, host, b"x")["size"] == 1
    before = handed(a, other)
    assert before > 0
    malformed = f"GET / HTTP/1.1\r\nhost: {host}\r\nno colon on this line\r\n".encode()
    for _ in range(24):  # all 24 on the holder: once in 16 million runs
        answer = one_request(a.http_port, host, malformed, address=a.host)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
        assert b"RLY_620" in answer, answer[:600]
    assert handed(a, other) > before
    assert all(links(a, w)["forwarded"] == 0 for w in range(WORKERS))


def handed(edge: Edge, worker: int) -> int:
    """HTTP visitors ``worker`` of ``edge`` handed to another worker."""
    count: int = edge.worker_status(worker)["workers"]["handed_off"]["http"]
    return count


def test_a_killed_worker_s_name_is_served_again_through_the_other_node(
    nodes: dict[str, Edge], origin: Origin, agents: list[Agent]
) -> None:
    a, b = nodes["a"], nodes["b"]
    agent = web_agent(b, agents, str(origin.port), "--no-https", "--subdomain", "phoenix")
    host = host_of(agent)
    at_b = holder(b, agent.url)
    wait_known(a, host)
    body = payload(60, 40_000)
    assert post_sink(a, host, body)["size"] == len(body)
    os.kill(worker_pids(b)[at_b], signal.SIGKILL)
    killed = time.monotonic()
    took, answer = first_served(a.http_port, host, body, killed, address=a.host, within=20)
    assert took is not None, answer[:300]
    _, _, rest = answer.partition(b"\r\n\r\n")
    assert json.loads(rest)["sha256"] == hashlib.sha256(body).hexdigest()
    print(f"served again {took:.2f} s after the kill")
