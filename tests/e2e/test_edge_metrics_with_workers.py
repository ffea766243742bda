"""`relay edge --workers 2` seen as one edge at its admin listener: the supervisor's
/metrics is the sum of its workers' (and its own process), /readyz speaks for every
worker, /status lists every worker's sessions, the API is passed through to a worker,
and a killed worker's counts
are kept, so the edge's counters never go down. A real Prometheus scrapes it through a
worker's SIGKILL and sees no counter reset.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.api_calls import Keys, call
from tests.e2e.http_helpers import exchange, host_of, web_agent
from tests.e2e.origin import Origin
from tests.e2e.procs import Agent, EchoServer, Edge, payload
from tests.e2e.prometheus import Prometheus, needs_prometheus, promtool
from tests.e2e.test_admin_listener import sample
from tests.e2e.test_edge_workers import WORKERS, worker_pids
from tests.e2e.test_per_endpoint_metrics import SUPERVISOR_FAMILIES
from tests.e2e.test_relay_status import status_once

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def edge(edge_of_two_workers: Edge) -> Edge:
    return edge_of_two_workers


VISITORS = 40


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def edge_metrics(edge: Edge) -> str:
    status, text = get(edge.admin_port, "/metrics")
    assert status == 200, text
    return text


def worker_metrics(edge: Edge, worker: int) -> str:
    status, text = get(edge.admin_port + 1 + worker, "/metrics")
    assert status == 200, text
    return text


def visit(edge: Edge, agents: list[Agent], count: int, first: int = 0) -> None:
    """``count`` visitors on new connections, spread over the agents; each body's hash
    checked by the origin."""
    for i in range(first, first + count):
        agent = agents[i % len(agents)]
        body = payload(i, 5_000 + i)
        head = f"POST /sink HTTP/1.1\r\nhost: {host_of(agent)}\r\ncontent-length: {len(body)}\r\n"
        answer = json.loads(exchange(edge.http_port, host_of(agent), head.encode(), body))
        assert answer == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def carried(text: str) -> float:
    return sample(text, "relay_visitor_connections_total", kind="http")


def test_the_edges_admin_listener_is_its_workers_summed(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    bound = [
        web_agent(edge, agents, str(origin.port), "--no-https", "--subdomain", name)
        for name in ("sum-a", "sum-b")
    ]
    visit(edge, bound, VISITORS)

    per_worker = [worker_metrics(edge, w) for w in range(WORKERS)]
    text = edge_metrics(edge)
    # Every visitor counts once, in the worker that accepted it; both workers took some.
    assert [carried(t) > 0 for t in per_worker] == [True, True], [carried(t) for t in per_worker]
    assert carried(text) == sum(carried(t) for t in per_worker) == VISITORS
    assert sample(text, "relay_agent_sessions") == 2
    assert sample(text, "relay_ready") == 1
    assert sample(text, "relay_agent_sessions_limit") == sample(
        per_worker[0], "relay_agent_sessions_limit"
    )
    assert sample(text, "relay_edge_workers") == WORKERS
    assert sample(text, "relay_edge_workers_answering") == WORKERS
    for family in SUPERVISOR_FAMILIES:  # each one the metrics page says it exports
        assert f"\n{family}" in text, family
    # The edge's memory is its workers' and the supervisor's.
    workers_rss = sum(sample(t, "process_resident_memory_bytes") for t in per_worker)
    assert sample(text, "process_resident_memory_bytes") > workers_rss

    assert get(edge.admin_port, "/healthz") == (200, "ok\n")
    assert get(edge.admin_port, "/readyz") == (200, "ready\n")
    # /status speaks for the whole edge; the API answers there too, from a worker.
    status, body = get(edge.admin_port, "/status")
    assert status == 200, body
    assert (json.loads(body)["worker"], json.loads(body)["sessions"]) == (None, 2)
    keys = Keys(edge)
    try:
        _, key = keys.make(["sessions:read"])
    finally:
        keys.close()
    answer = call(edge, "GET", "/api/v1/tunnel_sessions", key)
    assert answer.status == 200, answer.body
    assert call(edge, "GET", "/api/v1/tunnel_sessions", "rk_wrong").status == 401

    # SIGKILL a worker: the supervisor starts it again, and what it had counted stays in
    # the edge's counters (they never go down, even while it is away).
    os.kill(worker_pids(edge)[1], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        text = edge_metrics(edge)
        assert carried(text) == VISITORS, text
        restarted = sample(text, "relay_edge_worker_restarts_total", worker="1") == 1
        if restarted and sample(text, "relay_edge_workers_answering") == WORKERS:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
    # The killed worker's agent comes back (to either worker).
    while sample(edge_metrics(edge), "relay_agent_sessions") < len(bound):
        assert time.monotonic() < deadline, "the killed worker's agent did not come back"
        time.sleep(0.1)
    visit(edge, bound, 10, first=VISITORS)
    assert carried(edge_metrics(edge)) == VISITORS + 10


def test_readiness_names_a_worker_that_does_not_answer(edge: Edge) -> None:
    pid = worker_pids(edge)[1]
    os.kill(pid, signal.SIGSTOP)  # alive, but answering nothing
    try:
        status, body = get(edge.admin_port, "/readyz")
        assert status == 503, body
        assert body == "not ready: worker 1: not answering\n"
        text = edge_metrics(edge)  # the scrape still answers, without worker 1's gauges
        assert sample(text, "relay_edge_workers_answering") == 1
        assert sample(text, "relay_edge_worker_scrape_failures_total", worker="1") >= 1
    finally:
        os.kill(pid, signal.SIGCONT)
    assert get(edge.admin_port, "/readyz") == (200, "ready\n")


def wait_for_scrape(prometheus: Prometheus, after: float) -> None:
    deadline = time.monotonic() + 30
    while True:
        up = prometheus.query('timestamp(up{job="relay-edge"} == 1)')
        if up and float(up[0]["value"][1]) > after:
            return
        assert time.monotonic() < deadline, f"no scrape of the edge after {after}"
        time.sleep(0.2)


@needs_prometheus
@pytest.mark.timeout(240)
def test_prometheus_sees_one_edge_and_no_reset_across_a_worker_kill(
    tmp_path: Path, edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": "relay-edge",
                "static_configs": [{"targets": [f"127.0.0.1:{edge.admin_port}"]}],
            }
        ],
    }
    prometheus = Prometheus(tmp_path / "prometheus", config).start()
    try:
        bound = [web_agent(edge, agents, str(origin.port), "--no-https", "--subdomain", "prom")]
        visit(edge, bound, VISITORS)
        # Scraped with the first visitors (what a worker counted after the edge's last
        # scrape before its kill is lost with it).
        wait_for_scrape(prometheus, after=time.time())
        os.kill(worker_pids(edge)[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while sample(edge_metrics(edge), "relay_edge_worker_restarts_total", worker="0") < 1:
            assert time.monotonic() < deadline, "worker 0 was not started again"
            time.sleep(0.1)
        while sample(edge_metrics(edge), "relay_agent_sessions") < 1:
            assert time.monotonic() < deadline, "the agent did not come back"
            time.sleep(0.1)
        visit(edge, bound, VISITORS, first=VISITORS)
        deadline = time.monotonic() + 30
        while True:
            got = prometheus.query('relay_visitor_connections_total{kind="http"}')
            if got and float(got[0]["value"][1]) == 2 * VISITORS:
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.5)
        [series] = got
        assert "worker" not in series["metric"]  # one edge, one series
        [resets] = prometheus.query('resets(relay_visitor_connections_total{kind="http"}[5m])')
        assert float(resets["value"][1]) == 0
        [workers] = prometheus.query("relay_edge_workers")
        assert float(workers["value"][1]) == WORKERS

        # The combined exposition passes Prometheus' lint as well as a worker's own does.
        lint = [
            promtool("check", "metrics", stdin=t.encode())[1]
            for t in (edge_metrics(edge), worker_metrics(edge, 1))
        ]
        assert set(lint[0].splitlines()) <= set(lint[1].splitlines()) | {
            line for line in lint[0].splitlines() if line.startswith("relay_edge_")
        }, lint
    finally:
        prometheus.stop()


def test_the_edges_status_lists_every_workers_sessions(edge: Edge, agents: list[Agent]) -> None:
    """An agent with a link on each worker (the links take a worker each): the edge's
    /status lists both sessions with their workers and its endpoint once, held by both;
    a worker that does not answer makes it not ready, naming that worker."""
    echo = EchoServer()
    try:
        _, token = edge.token()
        agent = Agent(edge, token, echo.port, extra=["--links", "2"])
        agents.append(agent)
        agent.wait_bound()
        agent.proc.wait_line("link 1: session", 20)
        deadline = time.monotonic() + 15
        while [int(edge.worker_status(w)["sessions"]) for w in range(WORKERS)] != [1, 1]:
            assert time.monotonic() < deadline, "the links on a worker each"
            time.sleep(0.1)
        ids = {w: edge.worker_status(w)["sessions_list"][0]["id"] for w in range(WORKERS)}

        code, body = get(edge.admin_port, "/status")
        status = json.loads(body)
        assert code == 200 and status["ready"] and status["worker"] is None, body
        assert status["sessions"] == 2
        assert {s["id"]: s["worker"] for s in status["sessions_list"]} == {
            ids[w]: w for w in range(WORKERS)
        }
        assert [(e["url"], e["workers"]) for e in status["endpoints"]] == [(agent.url, [0, 1])]
        assert status["endpoints_by_kind"] == {"tcp": 1}
        assert [w["sessions"] for w in status["workers"]["each"]] == [1, 1]
        assert status["workers"]["each"][1]["pid"] == worker_pids(edge)[1]
        shown = status_once(edge.admin_port)  # `relay status` reads the same page
        assert "workers 2/2" in shown and all(i in shown for i in ids.values()), shown
        # Each session's row ends in its worker; the endpoint's in the workers holding it.
        rows = {line.split()[0]: line.split() for line in shown.splitlines() if line.strip()}
        assert [rows[ids[w]][-1] for w in range(WORKERS)] == ["0", "1"], shown
        assert rows[agent.url][-1] == "0,1", shown

        os.kill(worker_pids(edge)[1], signal.SIGSTOP)
        try:
            code, body = get(edge.admin_port, "/status")
        finally:
            os.kill(worker_pids(edge)[1], signal.SIGCONT)
        status = json.loads(body)
        assert code == 200, body
        assert (status["ready"], status["why"]) == (False, "worker 1: not answering")
        assert [s["id"] for s in status["sessions_list"]] == [ids[0]]
    finally:
        echo.close()
