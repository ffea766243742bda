"""The API of an edge with workers speaks for every worker (relay/edge/worker_asks.py):
at the edge's admin listener (passed to worker 0) or at any worker's own, it lists every
worker's sessions and endpoints, stops a session held by another worker (its agent is
told not to come back) and restarts one (it comes back and carries bytes, hash-checked).
Another account's key sees none of them. A worker that does not answer is left out after
the ask's timeout, not waited for."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from types import SimpleNamespace

import pytest

from tests.e2e.api_calls import Answer, Keys, call
from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, payload
from tests.e2e.test_edge_workers import WORKERS, worker_pids

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def edge(edge_of_two_workers: Edge) -> Edge:
    return edge_of_two_workers


#: Agent starts allowed to get one session onto each worker.
PLACEMENT_TRIES = 20


def sessions_on(edge: Edge, worker: int) -> list[str]:
    return [s["id"] for s in edge.worker_status(worker)["sessions_list"]]


def at_worker(edge: Edge, worker: int, method: str, path: str, key: str) -> Answer:
    """An API call at worker ``worker``'s own admin listener."""
    own = SimpleNamespace(host=edge.host, admin_port=edge.admin_port + 1 + worker)
    return call(own, method, path, key)  # type: ignore[arg-type]


def one_agent_per_worker(edge: Edge, echo: EchoServer, agents: list[Agent]) -> list[Agent]:
    """Agents started until worker 0 and worker 1 each hold one's session: [on 0, on 1]."""
    placed: dict[int, Agent] = {}
    for _ in range(PLACEMENT_TRIES):
        agent = Agent(edge, edge.token()[1], echo.port)
        agents.append(agent)
        agent.wait_bound()
        found = re.search(r"session (s_\w+) established", agent.proc.text())
        assert found is not None, agent.proc.text()
        where = next(w for w in range(WORKERS) if found[1] in sessions_on(edge, w))
        if where in placed:
            agent.stop()
            continue
        placed[where] = agent
        if len(placed) == WORKERS:
            return [placed[w] for w in range(WORKERS)]
    raise AssertionError(f"agents stayed on worker(s) {sorted(placed)}")


def test_any_workers_api_lists_stops_and_restarts_every_workers_sessions(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    on_0, on_1 = one_agent_per_worker(edge, echo, agents)
    (session_0,), (session_1,) = sessions_on(edge, 0), sessions_on(edge, 1)
    keys = Keys(edge)
    try:
        _, key = keys.make(["sessions:read", "sessions:write", "endpoints:read"])
        stranger = keys.store.create_account("stranger")
        _, stranger_key = keys.make(["sessions:read", "sessions:write"], account=stranger)
    finally:
        keys.close()

    # The edge's listener (worker 0's API) and worker 1's own list both workers' sessions.
    for listed in (
        call(edge, "GET", "/api/v1/tunnel_sessions", key),
        at_worker(edge, 1, "GET", "/api/v1/tunnel_sessions", key),
    ):
        assert listed.status == 200, listed.body
        assert {s["id"] for s in listed.body["items"]} == {session_0, session_1}
    one = call(edge, "GET", f"/api/v1/tunnel_sessions/{session_1}", key)
    assert one.status == 200 and one.body["endpoints"] == [on_1.url], one.body
    urls = {e["url"] for e in call(edge, "GET", "/api/v1/endpoints", key).body["items"]}
    # (Placement's stopped agents' ports are kept for their return meanwhile: listed too.)
    assert {on_0.url, on_1.url} <= urls, urls

    # Another account's key reaches none of them, on any worker.
    assert call(edge, "GET", "/api/v1/tunnel_sessions", stranger_key).body["items"] == []
    refused = call(edge, "POST", f"/api/v1/tunnel_sessions/{session_1}/stop", stranger_key)
    assert refused.status == 404, refused.body
    assert on_1.proc.proc.poll() is None

    # Worker 0's API stops worker 1's session: its agent is told not to come back.
    stopped = call(edge, "POST", f"/api/v1/tunnel_sessions/{session_1}/stop", key)
    assert stopped.status == 200 and stopped.body["id"] == session_1, stopped.body
    started = time.monotonic()
    assert on_1.proc.wait(30) == 1 and "RLY_122" in on_1.proc.text(), on_1.proc.text()
    assert time.monotonic() - started < 2.0

    # Worker 1's API restarts worker 0's session: the agent comes back and carries bytes.
    restarted = at_worker(edge, 1, "POST", f"/api/v1/tunnel_sessions/{session_0}/restart", key)
    assert restarted.status == 200, restarted.body
    deadline = time.monotonic() + 20
    while True:
        now = {s["id"] for s in call(edge, "GET", "/api/v1/tunnel_sessions", key).body["items"]}
        if now and session_0 not in now:
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    data = payload(7, 64_000)
    back = echo_roundtrip(on_0.remote_port, data, timeout=10)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()


def test_a_worker_that_does_not_answer_is_left_out_after_the_timeout(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    on_0, _on_1 = one_agent_per_worker(edge, echo, agents)
    keys = Keys(edge)
    try:
        _, key = keys.make(["sessions:read"])
    finally:
        keys.close()
    pid = worker_pids(edge)[1]
    os.kill(pid, signal.SIGSTOP)
    try:
        asked = time.monotonic()
        listed = call(edge, "GET", "/api/v1/tunnel_sessions", key)
        took = time.monotonic() - asked
    finally:
        os.kill(pid, signal.SIGCONT)
    assert listed.status == 200, listed.body
    assert [s["endpoints"] for s in listed.body["items"]] == [[on_0.url]]
    assert 1.0 < took < 5.0, took  # the ask's 1.5 s, not forever
