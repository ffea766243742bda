"""A reservation made through the API of one node of a cluster (real Redis), or of one
worker of an edge with ``--workers 2``, acts within 2 s on the live endpoints another node
or worker holds: the sealed ``reservations`` event between nodes, the supervisor between
workers (relay/edge/live_reservations.py). Every edge here polls credentials (and so
reservations) only every 30 s: what acts sooner was told.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.e2e.api_calls import Answer, Keys, call
from tests.e2e.cluster_nodes import cluster_args
from tests.e2e.http_helpers import error_code, one_request
from tests.e2e.origin import Origin
from tests.e2e.procs import Agent, Edge, payload
from tests.e2e.test_a_pin_made_after_a_bind_acts_at_once import SLACK
from tests.ports import free_port, free_port_range
from tests.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.timeout(240)

BASE = "relay.localhost"
#: Sessions' credentials and reservations polled twice a minute only.
SLOW_POLL = ["--credential-check-interval", "30"]


@dataclass
class Node:
    edge: Edge
    region: str


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, Node]]:  # noqa: F811
    """us1 (region us) and eu1 (region eu), one data directory (one control plane)."""
    made: dict[str, Node] = {}
    tcp_ports = free_port_range(6)
    try:
        for name, host, region in (("us1", "127.0.0.2", "us"), ("eu1", "127.0.0.3", "eu")):
            edge = Edge(
                tmp_path / "shared",
                host=host,
                ports=tcp_ports,
                extra=[
                    "--region",
                    region,
                    *cluster_args(name, redis_server.url, f"{host}:{free_port()}"),
                    *SLOW_POLL,
                ],
            )
            made[name] = Node(edge, region)
            edge.start()  # one after the other: the first makes the shared data directory
        yield made
    finally:
        for node in made.values():
            node.edge.stop()


def admin_key(edge: Edge) -> str:
    keys = Keys(edge)
    try:
        return keys.make(["admin"])[1]
    finally:
        keys.close()


def post_sink(edge: Edge, host: str, body: bytes) -> bytes:
    head = f"POST /sink HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n".encode()
    return one_request(edge.http_port, host, head, body, address=edge.host)


def get(edge: Edge, host: str) -> bytes:
    """A GET (a refusal of a POST whose body is left unread can be lost to a reset)."""
    head = f"GET /hello HTTP/1.1\r\nhost: {host}\r\n".encode()
    return one_request(edge.http_port, host, head, address=edge.host)


def sink_ok(answer: bytes, body: bytes) -> bool:
    head, _, rest = answer.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 200") and json.loads(rest) == {
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


def until(check: Callable[[], bool], within: float, what: str, since: float | None = None) -> float:
    """Seconds from ``since`` (default: now) until ``check()`` is true, polled every
    50 ms, bounded by ``within``."""
    started = time.monotonic() if since is None else since
    while not check():
        assert time.monotonic() - started < within, f"{what}: not within {within} s"
        time.sleep(0.05)
    return time.monotonic() - started


def unserved(edge: Edge, host: str) -> bool:
    """Whether ``host`` gets what an unserved name gets (404 RLY_610); never its origin's
    answer once it has stopped being served."""
    answer = get(edge, host)
    assert b"origin ok" not in answer, answer[:300]
    return answer.startswith(b"HTTP/1.1 404") and error_code(answer) == "RLY_610"


def test_a_pin_made_through_another_node_ends_the_endpoint_here_at_once(
    nodes: dict[str, Node], origin: Origin, agents: list[Agent]
) -> None:
    us1, eu1 = nodes["us1"].edge, nodes["eu1"].edge
    host = f"moved.{BASE}"
    _, token = us1.token()
    agent = Agent(
        us1, token, str(origin.port), kind="http", extra=["--no-https", "--subdomain", "moved"]
    )
    agents.append(agent)
    agent.wait_bound()
    body = payload(41, 100_000)
    assert sink_ok(post_sink(us1, host, body), body)

    key = admin_key(eu1)  # opens the store: not part of the 2 s
    asked = time.monotonic()
    made = call(eu1, "POST", "/api/v1/reserved_domains", key, {"domain": host, "region": "eu"})
    assert made.status == 201, made.body
    answered = time.monotonic()
    took = until(lambda: not get(us1, host).startswith(b"HTTP/1.1 200"), 2.0, "us1", asked)
    # The name given up in the cluster (Redis) may lag its removal here a moment.
    until(lambda: unserved(us1, host), 2.0, "404 RLY_610 at us1")
    assert agent.proc.wait(2.0 + SLACK) == 4, agent.proc.text()
    assert f"{host} is pinned to region eu; this edge is in region us" in agent.proc.text()
    print(f"through another node: API call {(answered - asked) * 1000:.0f} ms, then refused")
    print(f"after {took * 1000:.0f} ms")

    # Served in its region now; the other region refuses it without carrying a byte.
    _, token = eu1.token()
    home = Agent(
        eu1, token, str(origin.port), kind="http", extra=["--no-https", "--subdomain", "moved"]
    )
    agents.append(home)
    home.wait_bound()
    assert sink_ok(post_sink(eu1, host, body), body)
    until(lambda: get(us1, host).startswith(b"HTTP/1.1 421"), 10, "421 at us1")
    answer = get(us1, host)
    assert error_code(answer) == "RLY_631" and b"served in region eu" in answer, answer[:600]


def at_worker(edge: Edge, worker: int, method: str, path: str, key: str, body: object) -> Answer:
    own = SimpleNamespace(host=edge.host, admin_port=edge.admin_port + 1 + worker)
    return call(own, method, path, key, body)


def test_a_pin_made_through_another_worker_ends_the_endpoint_there_at_once(
    tmp_path: Path, origin: Origin, agents: list[Agent]
) -> None:
    edge = Edge(tmp_path / "edge", workers=2, extra=["--region", "us", *SLOW_POLL]).start()
    try:
        host = f"wk.{BASE}"
        _, token = edge.token()
        agent = Agent(
            edge, token, str(origin.port), kind="http", extra=["--no-https", "--subdomain", "wk"]
        )
        agents.append(agent)
        agent.wait_bound()
        holding = next(w for w in (0, 1) if edge.worker_status(w)["endpoints"])
        other = 1 - holding
        body = payload(43, 100_000)
        assert sink_ok(post_sink(edge, host, body), body)

        key = admin_key(edge)  # opens the store: not part of the 2 s
        asked = time.monotonic()
        made = at_worker(
            edge, other, "POST", "/api/v1/reserved_domains", key, {"domain": host, "region": "eu"}
        )
        assert made.status == 201, made.body
        answered = time.monotonic()
        took = until(
            lambda: not edge.worker_status(holding)["endpoints"], 2.0, "holding worker", asked
        )
        for _ in range(4):  # whichever worker a visitor lands on (the other's view of
            # where the name is may lag a moment: bounded, and never the origin's answer)
            until(lambda: unserved(edge, host), 2.0, "404 RLY_610 on either worker")
        assert agent.proc.wait(2.0 + SLACK) == 4, agent.proc.text()
        assert "RLY_208" in agent.proc.text()
        print(f"through another worker: API call {(answered - asked) * 1000:.0f} ms, then")
        print(f"removed after {took * 1000:.0f} ms")
    finally:
        edge.stop()
