"""Agents of one token binding one name on two nodes of a cluster are held to the rules
of one edge (relay/edge/members.py ``admit``): a second agent without ``--pool`` on
either side is refused with RLY_204 wherever it connects, and the first keeps every
visitor; agents that all pool share the name across nodes, and so do the links of one
agent on two PoPs; a name kept in grace for an agent that is gone may be taken by
another agent of the token on another node.

Three real edge nodes of one region (127.0.0.2, .3 and .5) on one real Redis, from the
``nodes`` fixture of test_cluster_forwards_within_a_region.py. Every agent and node is
stopped by its PID afterwards, also when a test fails; every wait is bounded.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest

from tests.e2e.http_helpers import exchange, host_of
from tests.e2e.origin import NamedOrigin, Origin
from tests.e2e.procs import Agent, payload
from tests.e2e.test_cluster_forwards_within_a_region import (
    ONE_REGION,
    Node,
    nodes,  # noqa: F401
    post_sink,
    wait_known,
)
from tests.redis_server import redis_server  # noqa: F401

pytestmark = pytest.mark.timeout(180)

#: How long a refused agent may take to exit (it exits 4 on RLY_204).
REFUSED_WITHIN = 30.0


def holds(node: Node, host: str) -> bool:
    """Whether an endpoint of ``node`` has the name ``host``."""
    endpoints = node.edge.worker_status()["endpoints"]
    return any(urlsplit(e["url"]).hostname == host for e in endpoints)


def all_served_by_origin(node: Node, host: str, count: int, seed: int) -> None:
    """``count`` uploads at ``node``, each answered by the test's Origin with its size and
    digest: a visitor that reached an agent of a NamedOrigin would get no such answer."""
    for i in range(count):
        body = payload(seed + i, 20_000 + i)
        assert post_sink(node, node.edge.http_port, host, body, None) == {
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }, f"visitor {i} at {node.host}"


def visits(node: Node, host: str, count: int) -> Counter[bytes]:
    """Which origins ``count`` visitors at ``node`` reached (each answers its name)."""
    head = f"GET / HTTP/1.1\r\nhost: {host}\r\n".encode()
    return Counter(
        exchange(node.edge.http_port, host, head, address=node.host) for _ in range(count)
    )


def assert_refused(agent: Agent, node_id: str, said: str = "another agent session") -> None:
    code = agent.proc.wait(REFUSED_WITHIN)
    text = agent.proc.text()
    assert code == 4, text
    assert "RLY_204" in text, text
    assert said in text and f"node {node_id}" in text, text


def second_refused_and_first_keeps_every_visitor(
    nodes: dict[str, Node],  # noqa: F811
    agents: list[Agent],
    origin: Origin,
    named: list[NamedOrigin],
    first_flags: list[str],
    second_flags: list[str],
    subdomain: str,
    said: str = "another agent session",
) -> None:
    """An agent on b binds ``subdomain``; another agent of its token on d binds it too,
    and is refused (``said`` why); every visitor, at any node, reaches the first."""
    a, b, d = nodes["a"], nodes["b"], nodes["d"]
    _, token = b.edge.token()
    base = ["--no-https", "--subdomain", subdomain]
    first = Agent(b.edge, token, str(origin.port), kind="http", extra=[*base, *first_flags])
    agents.append(first)
    first.wait_bound()
    host = host_of(first)
    wait_known(d, 1)  # d has heard of b's bind (what the check reads)
    stray = NamedOrigin("second-agent")
    named.append(stray)
    second = Agent(d.edge, token, str(stray.port), kind="http", extra=[*base, *second_flags])
    agents.append(second)
    assert_refused(second, "b", said)
    assert not holds(d, host)
    for i, node in enumerate((a, b, d)):
        all_served_by_origin(node, host, 6, seed=100 * (i + 1))
    assert first.proc.proc.poll() is None, first.proc.text()


@pytest.mark.parametrize("nodes", [ONE_REGION], indirect=True)
def test_a_second_agent_without_pool_on_another_node_is_refused(
    nodes: dict[str, Node],  # noqa: F811
    agents: list[Agent],
    origin: Origin,
    named: list[NamedOrigin],
) -> None:
    second_refused_and_first_keeps_every_visitor(nodes, agents, origin, named, [], [], "solo")


@pytest.mark.parametrize("nodes", [ONE_REGION], indirect=True)
@pytest.mark.parametrize(
    ("first_flags", "second_flags", "subdomain", "said"),
    [
        (["--pool"], [], "halfpool", "another agent session"),
        ([], ["--pool"], "halfpool", "another agent session"),
        (
            ["--pool", "--host-header", "internal.local"],
            ["--pool"],
            "rewrites",
            "with --host-header internal.local;",
        ),
        (
            ["--pool"],
            ["--pool", "--host-header", "internal.local"],
            "rewrites",
            "with no --host-header;",
        ),
    ],
    ids=["pooled-then-not", "not-then-pooled", "rewrite-then-none", "none-then-rewrite"],
)
def test_a_second_agent_one_edge_would_refuse_is_refused_on_another_node(
    nodes: dict[str, Node],  # noqa: F811
    agents: list[Agent],
    origin: Origin,
    named: list[NamedOrigin],
    first_flags: list[str],
    second_flags: list[str],
    subdomain: str,
    said: str,
) -> None:
    """One pooled and one unpooled agent do not share a name; nor do pool members that
    would rewrite the Host otherwise than the live members do (which node took a visitor
    would decide the Host its upstream saw)."""
    second_refused_and_first_keeps_every_visitor(
        nodes, agents, origin, named, first_flags, second_flags, subdomain, said
    )


@pytest.mark.parametrize("nodes", [ONE_REGION], indirect=True)
def test_a_pool_member_of_the_other_tls_port_kind_on_another_node_is_refused(
    nodes: dict[str, Node],  # noqa: F811
    agents: list[Agent],
    origin: Origin,
) -> None:
    """An https name (the edge terminates TLS) is not joined by a pooled ``relay tls``
    agent (passed through) on another node: which node took a visitor would decide it."""
    b, d = nodes["b"], nodes["d"]
    _, token = b.edge.token()
    first = Agent(
        b.edge, token, str(origin.port), kind="http", extra=["--subdomain", "kinds", "--pool"]
    )
    agents.append(first)
    first.wait_bound()
    host = host_of(first)
    wait_known(d, 1)  # its https name (http only redirects there)
    second = Agent(d.edge, token, str(origin.port), kind="tls", extra=["--domain", host, "--pool"])
    agents.append(second)
    assert_refused(second, "b", f"{host} is served as a https endpoint")
    assert not holds(d, host)
    assert first.proc.proc.poll() is None, first.proc.text()


@pytest.mark.parametrize("nodes", [ONE_REGION], indirect=True)
def test_pooled_agents_on_two_nodes_both_serve(
    nodes: dict[str, Node],  # noqa: F811
    agents: list[Agent],
    named: list[NamedOrigin],
) -> None:
    a, b, d = nodes["a"], nodes["b"], nodes["d"]
    on_b, on_d = NamedOrigin("member-on-b"), NamedOrigin("member-on-d")
    named += [on_b, on_d]
    _, token = b.edge.token()
    flags = ["--no-https", "--subdomain", "pooled", "--pool"]
    members: list[Agent] = []
    for node, upstream in ((b, on_b), (d, on_d)):
        wait_known(node, len(members))  # the second binds knowing of the first
        member = Agent(node.edge, token, str(upstream.port), kind="http", extra=flags)
        agents.append(member)
        member.wait_bound()
        members.append(member)
    host = host_of(members[0])
    wait_known(a, 2)
    assert visits(a, host, 20) == Counter({b"member-on-b": 10, b"member-on-d": 10})
    # Each node serves its own member's visitors (no hop), and both agents still run.
    assert visits(b, host, 3) == Counter({b"member-on-b": 3})
    assert visits(d, host, 3) == Counter({b"member-on-d": 3})
    assert all(m.proc.proc.poll() is None for m in members)


@pytest.mark.parametrize("nodes", [ONE_REGION], indirect=True)
def test_the_links_of_one_agent_share_its_name_on_two_nodes(
    nodes: dict[str, Node],  # noqa: F811
    agents: list[Agent],
    origin: Origin,
) -> None:
    """``--links 2`` with two PoPs: each link prefers a PoP the other is not on, so the
    name is held on b and on d by one agent, without --pool; neither link is refused."""
    a, b, d = nodes["a"], nodes["b"], nodes["d"]
    _, token = b.edge.token()
    agent = Agent(
        b.edge,
        token,
        str(origin.port),
        kind="http",
        extra=[
            "--edge",
            f"{b.edge.address},{d.edge.address}",
            "--links",
            "2",
            "--no-https",
            "--subdomain",
            "linked",
        ],
    )
    agents.append(agent)
    agent.wait_bound()
    agent.proc.wait_all("link 1: session")
    host = host_of(agent)
    deadline = time.monotonic() + 15
    while not (holds(b, host) and holds(d, host)):
        assert time.monotonic() < deadline, "the two links do not hold both nodes\n" + (
            agent.proc.text()
        )
        assert agent.proc.proc.poll() is None, agent.proc.text()
        time.sleep(0.1)
    wait_known(a, 2)
    assert "RLY_204" not in agent.proc.text(), agent.proc.text()
    for i, node in enumerate((a, b, d)):
        all_served_by_origin(node, host, 4, seed=400 + 10 * i)
    assert agent.proc.proc.poll() is None, agent.proc.text()


@pytest.mark.parametrize("nodes", [ONE_REGION], indirect=True)
def test_another_agent_takes_an_orphaned_name_from_another_node(
    nodes: dict[str, Node],  # noqa: F811
    agents: list[Agent],
    named: list[NamedOrigin],
) -> None:
    """As on one edge: a name kept in grace for an agent that is gone (killed: its
    session ended, its name orphaned at b, which publishes it no more) is taken by
    another agent of the token, here on d, without --pool on either side."""
    a, b, d = nodes["a"], nodes["b"], nodes["d"]
    gone_origin, new_origin = NamedOrigin("gone"), NamedOrigin("restarted")
    named += [gone_origin, new_origin]
    _, token = b.edge.token()
    flags = ["--no-https", "--subdomain", "comeback"]
    gone = Agent(b.edge, token, str(gone_origin.port), kind="http", extra=flags)
    agents.append(gone)
    gone.wait_bound()
    host = host_of(gone)
    wait_known(d, 1)
    gone.proc.kill()
    deadline = time.monotonic() + 10
    while d.cluster()["presence"]["remote_names"] > 0:
        assert time.monotonic() < deadline, "d never heard that b's name is orphaned"
        time.sleep(0.05)
    assert holds(b, host)  # kept there, in grace
    restarted = Agent(d.edge, token, str(new_origin.port), kind="http", extra=flags)
    agents.append(restarted)
    restarted.wait_bound()
    assert host_of(restarted) == host
    wait_known(a, 1)
    assert visits(a, host, 4) == Counter({b"restarted": 4})
    assert visits(b, host, 2) == Counter({b"restarted": 2})  # b's orphan hands over
