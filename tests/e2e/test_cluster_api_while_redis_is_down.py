"""While Redis does not answer, a node's API still speaks for the node itself
(docs/scaling.md, "One API for the cluster"): it lists its own sessions and endpoints,
stops and restarts its own sessions, and reloads itself; a session it does not hold is
answered 404 saying the other nodes cannot be asked now. The log says so once, not once
per call. When Redis is back, the lists are the whole cluster's again. A Redis that takes
connections but answers nothing (frozen, or cut off) does not hold a call longer than
the ask's bound.

Two nodes on loopback addresses of their own share one real Redis and one data directory
(one control plane), as in test_api_reloads_every_node.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from relay.cluster.presence import MAX_CONNECTIONS
from relay.edge.cluster_asks import ASK_TIMEOUT
from tests.e2e.api_calls import Answer, Keys, call
from tests.e2e.cluster_nodes import cluster_args, known_nodes
from tests.e2e.procs import Agent, EchoServer, Edge
from tests.e2e.test_credentials_end_live_sessions import SLACK, wait_exit
from tests.ports import free_port, free_port_range
from tests.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.timeout(180)

NODES = (("a", "127.0.0.2"), ("b", "127.0.0.3"))
#: What a's log says when an ask cannot be published (relay/edge/cluster_asks.py).
CUT_OFF = "cluster: the other nodes cannot be asked"
UNASKED = "the other nodes cannot be asked now"
#: Lists asked for at once while Redis is frozen (a dashboard's polls piling up): more
#: than presence's connections to Redis, so some publishes queue for one.
BURST = 2 * MAX_CONNECTIONS
#: What a call may take past ASK_TIMEOUT (an HTTP round trip on loopback). Less than a
#: second: with Redis frozen a publish fails after presence's one-second read timeout,
#: or two seconds for one that first waited for a connection, so a larger slack would
#: not tell an ask bounded by ASK_TIMEOUT from one bounded by presence's deadline.
BOUND_SLACK = 0.3


@pytest.fixture
def nodes(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> Iterator[dict[str, Edge]]:
    data_dir = tmp_path / "shared"
    # One TCP port range for both (each node on its own address).
    tcp_ports = free_port_range(10)
    made: dict[str, Edge] = {}
    try:
        for name, host in NODES:
            edge = Edge(
                data_dir,
                host=host,
                ports=tcp_ports,
                extra=cluster_args(name, redis_server.url, f"{host}:{free_port()}"),
            )
            made[name] = edge
            edge.start()  # one after the other: the first makes the shared data directory
        yield made
    finally:
        for edge in made.values():
            edge.stop()


def session_ids(edge: Edge) -> set[str]:
    """The sessions ``edge`` holds itself, from its /status."""
    return {s["id"] for s in edge.worker_status()["sessions_list"]}


def listed(edge: Edge, key: str) -> dict[str, list[str]]:
    """The sessions ``edge``'s API lists, each with its endpoints' URLs."""
    answer = call(edge, "GET", "/api/v1/tunnel_sessions", key)
    assert answer.status == 200, answer.body
    return {s["id"]: s["endpoints"] for s in answer.body["items"]}


def said_cut_off_once(edge: Edge) -> None:
    """However many calls could not ask the others, ``edge``'s log said so once."""
    assert edge.proc is not None
    edge.proc.wait_all(CUT_OFF, timeout=5)
    assert edge.proc.text().count(CUT_OFF) == 1, edge.proc.text()


def lists_again(edge: Edge, key: str, sessions: set[str]) -> None:
    """Redis answers again: ``edge``'s API lists the whole cluster's ``sessions`` within
    20 s, and its log says the others can be asked again."""
    deadline = time.monotonic() + 20
    while set(now := listed(edge, key)) != sessions:
        assert time.monotonic() < deadline, f"{edge.host} lists {now} after Redis answered"
        time.sleep(0.2)
    assert edge.proc is not None
    edge.proc.wait_all("cluster: the other nodes can be asked again", timeout=5)


def bound_agent(edge: Edge, echo: EchoServer, agents: list[Agent]) -> Agent:
    agent = Agent(edge, edge.token()[1], echo.port)
    agents.append(agent)
    agent.wait_bound()
    return agent


def test_a_node_s_api_speaks_for_itself_while_redis_is_down(
    nodes: dict[str, Edge],
    redis_server: RedisServer,  # noqa: F811
    echo: EchoServer,
    agents: list[Agent],
) -> None:
    a, b = nodes["a"], nodes["b"]
    deadline = time.monotonic() + 10
    while not (known_nodes(a) == 1 and known_nodes(b) == 1):
        assert time.monotonic() < deadline, "the nodes never saw each other"
        time.sleep(0.05)
    kept, doomed = bound_agent(a, echo, agents), bound_agent(a, echo, agents)
    on_b = bound_agent(b, echo, agents)
    keys = Keys(a)
    try:
        _, key = keys.make(["sessions:read", "sessions:write", "endpoints:read"])
        _, admin = keys.make(["admin"])
    finally:
        keys.close()
    before = listed(a, key)
    session_of = {urls[0]: session for session, urls in before.items()}
    kept_session, doomed_session = session_of[kept.url], session_of[doomed.url]
    b_session = session_of[on_b.url]
    assert session_ids(a) == {kept_session, doomed_session}
    assert session_ids(b) == {b_session}

    redis_server.stop()
    # a keeps its last table: it still knows of b, which cannot be asked now.
    assert known_nodes(a) == 1

    assert set(listed(a, key)) == {kept_session, doomed_session}
    endpoints = call(a, "GET", "/api/v1/endpoints", key)
    assert endpoints.status == 200, endpoints.body
    assert {e["url"] for e in endpoints.body["items"]} == {kept.url, doomed.url}
    own = call(a, "GET", f"/api/v1/tunnel_sessions/{kept_session}", key)
    assert own.status == 200 and own.body["endpoints"] == [kept.url], own.body

    for method, path in (
        ("GET", f"/api/v1/tunnel_sessions/{b_session}"),
        ("POST", f"/api/v1/tunnel_sessions/{b_session}/stop"),
        ("POST", f"/api/v1/tunnel_sessions/{b_session}/restart"),
    ):
        refused = call(a, method, path, key)
        assert refused.status == 404 and refused.code == "RLY_601", (path, refused.body)
        assert UNASKED in refused.body["message"], (path, refused.body)
    assert on_b.proc.proc.poll() is None

    stopped = call(a, "POST", f"/api/v1/tunnel_sessions/{doomed_session}/stop", key)
    assert stopped.status == 200 and stopped.body["id"] == doomed_session, stopped.body
    code, took = wait_exit(doomed, 2.0)
    assert code == 1 and "RLY_122" in doomed.proc.text(), doomed.proc.text()
    assert took < 2.0 + SLACK, took
    assert session_ids(a) == {kept_session}

    # A restart of its own: the agent comes back, to a new session of a's.
    restarted = call(a, "POST", f"/api/v1/tunnel_sessions/{kept_session}/restart", key)
    assert restarted.status == 200 and restarted.body["id"] == kept_session, restarted.body
    deadline = time.monotonic() + 10
    while session_ids(a) in (set(), {kept_session}):
        assert time.monotonic() < deadline, "the restarted agent never came back"
        time.sleep(0.05)
    (kept_again,) = session_ids(a)
    assert kept.proc.proc.poll() is None

    # A reload: a did its own and says what (nothing changed), and audited it; b is
    # listed as silent.
    reloaded = call(a, "POST", "/api/v1/reload", admin)
    assert reloaded.status == 200, reloaded.body
    by_node = {n["node"]: n for n in reloaded.body["nodes"]}
    assert set(by_node) == {"a", "b"}, by_node
    assert by_node["a"] == {
        "node": "a",
        "answered": True,
        "applied": [],
        "kept": [],
        "refused": None,
    }
    assert not by_node["b"]["answered"], by_node
    assert len(a.audit_details("edge.reload")) == 1

    # Nine calls could not ask b: the log said so once.
    said_cut_off_once(a)

    redis_server.start()
    lists_again(a, key, {kept_again, b_session})
    # Every node asked again: a session held nowhere gets the 404 it always got.
    gone = call(a, "POST", f"/api/v1/tunnel_sessions/{doomed_session}/stop", key)
    assert gone.status == 404, gone.body
    assert gone.body["message"] == f"no live session with id {doomed_session!r}", gone.body
    assert kept.proc.proc.poll() is None and on_b.proc.proc.poll() is None
    assert "Traceback" not in a.proc.text()


def timed(edge: Edge, method: str, path: str, key: str) -> tuple[Answer, float]:
    """One call to ``edge``'s API, and how long it took to answer (seconds)."""
    started = time.monotonic()
    answer = call(edge, method, path, key)
    return answer, time.monotonic() - started


def test_a_call_is_bounded_while_redis_is_frozen(
    nodes: dict[str, Edge],
    redis_server: RedisServer,  # noqa: F811
    echo: EchoServer,
    agents: list[Agent],
) -> None:
    """Redis stopped with SIGSTOP takes connections and answers nothing: an ask's publish
    does not complete, and every call still answers within ASK_TIMEOUT (the publish and
    the wait share it) with this node's own part, however many come at once."""
    a, b = nodes["a"], nodes["b"]
    deadline = time.monotonic() + 10
    while not (known_nodes(a) == 1 and known_nodes(b) == 1):
        assert time.monotonic() < deadline, "the nodes never saw each other"
        time.sleep(0.05)
    on_a, on_b = bound_agent(a, echo, agents), bound_agent(b, echo, agents)
    keys = Keys(a)
    try:
        _, key = keys.make(["sessions:read", "sessions:write"])
    finally:
        keys.close()
    session_of = {urls[0]: session for session, urls in listed(a, key).items()}
    a_session, b_session = session_of[on_a.url], session_of[on_b.url]

    bound = ASK_TIMEOUT + BOUND_SLACK
    redis_server.pause()
    try:
        with ThreadPoolExecutor(BURST) as pool:
            lists = list(
                pool.map(lambda _: timed(a, "GET", "/api/v1/tunnel_sessions", key), range(BURST))
            )
        for answer, _ in lists:
            assert answer.status == 200, answer.body
            assert {s["id"] for s in answer.body["items"]} == {a_session}, answer.body
        took = sorted(round(t, 2) for _, t in lists)
        assert took[-1] < bound, f"lists took {took} s while Redis was frozen"
        refused, took_stop = timed(a, "POST", f"/api/v1/tunnel_sessions/{b_session}/stop", key)
        assert refused.status == 404 and refused.code == "RLY_601", refused.body
        assert UNASKED in refused.body["message"], refused.body
        assert took_stop < bound, f"a stop took {took_stop:.2f} s while Redis was frozen"
        assert on_b.proc.proc.poll() is None
        said_cut_off_once(a)
    finally:
        # Always: a frozen server does not stop on the fixture's SIGTERM.
        redis_server.resume()

    # The publishes cut off left the client usable: the list is the cluster's again, and
    # a stop through a reaches b.
    lists_again(a, key, {a_session, b_session})
    stopped = call(a, "POST", f"/api/v1/tunnel_sessions/{b_session}/stop", key)
    assert stopped.status == 200 and stopped.body["id"] == b_session, stopped.body
    code, _ = wait_exit(on_b, 2.0)
    assert code == 1 and "RLY_122" in on_b.proc.text(), on_b.proc.text()
    assert on_a.proc.proc.poll() is None
    assert "Traceback" not in a.proc.text()
