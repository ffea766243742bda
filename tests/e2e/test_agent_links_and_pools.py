"""Several sessions serving one endpoint: an agent's ``--links K``, and ``--pool``.

Visitors are spread over the members (each answer names the member that served it), a
member that leaves gets no new visitor at once while the others serve on without one
failed request, and on an edge with workers an agent's links serve from both workers.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.api_calls import api_key, call
from tests.e2e.http_helpers import get_body
from tests.e2e.origin import NamedOrigin
from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, payload
from tests.e2e.test_agent_link_processes import start_linked
from tests.e2e.test_https_unknown_name_page import https_get

pytestmark = pytest.mark.timeout(180)


def web(edge: Edge, token: str, upstream: int, name: str, *flags: str) -> Agent:
    return Agent(
        edge, token, upstream, kind="http", extra=["--no-https", "--subdomain", name, *flags]
    )


def sessions_of(edge: Edge, key: str) -> list[dict[str, Any]]:
    answer = call(edge, "GET", "/api/v1/tunnel_sessions", key)
    assert answer.status == 200, answer.body
    items: list[dict[str, Any]] = answer.body["items"]
    return items


def test_an_agents_links_share_its_visitors_and_survive_losing_one(
    edge: Edge, agents: list[Agent]
) -> None:
    admin = api_key(edge, ["sessions:read", "sessions:write"])
    echo = EchoServer()
    try:
        _, token = edge.token()
        agent, port = start_linked(edge, agents, token, echo.port, 3)
        deadline = time.monotonic() + 10
        while len(sessions_of(edge, admin)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        live = sessions_of(edge, admin)
        assert len(live) == 3, live
        # Lose one link (the edge restarts its session): visitors keep being served, by
        # the other links at once, none refused, every byte back (SHA-256).
        failures: list[BaseException] = []
        served = [0]
        stop = threading.Event()

        def visit() -> None:
            i = 0
            while not stop.is_set() and i < 2000:
                i += 1
                data = payload(i, 20_000)
                try:
                    back = echo_roundtrip(port, data, timeout=10)
                    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
                    served[0] += 1
                except BaseException as exc:
                    failures.append(exc)

        visitor = threading.Thread(target=visit, daemon=True)
        visitor.start()
        time.sleep(0.5)
        victim = live[1]["id"]
        answer = call(edge, "POST", f"/api/v1/tunnel_sessions/{victim}/restart", admin)
        assert answer.status in (200, 202, 204), answer.body
        agent.proc.wait_all("reconnected")
        time.sleep(0.5)
        stop.set()
        visitor.join(30)
        assert failures == [], failures[:3]
        assert served[0] > 20
        assert len(sessions_of(edge, admin)) == 3
    finally:
        echo.close()


def test_pooled_agents_share_a_name_and_a_leaving_one_gets_no_new_visitor(
    edge: Edge, agents: list[Agent], named: list[NamedOrigin]
) -> None:
    a, b = NamedOrigin("member-a"), NamedOrigin("member-b")
    named += [a, b]
    _, token = edge.token()
    first = web(edge, token, a.port, "pool", "--pool")
    agents.append(first)
    first.wait_bound()
    second = web(edge, token, b.port, "pool", "--pool")
    agents.append(second)
    second.wait_bound()
    host = "pool.relay.localhost"
    seen = Counter(get_body(edge.http_port, host) for _ in range(20))
    assert seen == Counter({b"member-a": 10, b"member-b": 10}), seen  # round robin

    # Without --pool the name stays the pool's.
    _, other = edge.token()
    outsider = web(edge, other, a.port, "pool", "--pool")
    try:
        assert outsider.proc.wait(30) == 4
    finally:
        outsider.stop()
    loner = web(edge, token, a.port, "pool")
    try:
        assert loner.proc.wait(30) == 4
    finally:
        loner.stop()
    assert "bound by another agent session" in loner.proc.text()

    first.stop()  # leaves: from now on every visitor is b's, and none fails
    seen = Counter(get_body(edge.http_port, host) for _ in range(20))
    assert seen == Counter({b"member-b": 20}), seen


def test_links_on_an_edge_with_workers_serve_from_every_worker(
    tmp_path: Path, agents: list[Agent], named: list[NamedOrigin]
) -> None:
    edge = Edge(tmp_path / "edge", workers=2).start()
    try:
        origin = NamedOrigin("origin")
        named.append(origin)
        _, token = edge.token()
        holders: set[int] = set()
        # The kernel places each link on a worker; 4 links miss one of 2 workers with
        # probability 1/8. Start the agent again until both hold (bounded: 6 agents).
        for _ in range(6):
            agent = web(edge, token, origin.port, "wide", "--links", "4")
            agents.append(agent)
            agent.wait_bound()
            agent.proc.wait_all("link 1: session", "link 2: session", "link 3: session")
            holders = _holding_workers(edge, "http://wide.relay.localhost")
            if holders == {0, 1}:
                break
            agent.stop()
            time.sleep(0.5)
        assert holders == {0, 1}, holders
        before = [_status(edge, w)["workers"]["handed_off"]["http"] for w in (0, 1)]
        for _ in range(40):
            assert get_body(edge.http_port, "wide.relay.localhost") == b"origin"
        after = [_status(edge, w)["workers"]["handed_off"]["http"] for w in (0, 1)]
        assert after == before, "a visitor was handed over though both workers hold it"
        served = [_status(edge, w)["endpoints"] for w in (0, 1)]
        assert all(any(e["url"].startswith("http://wide.") for e in s) for s in served)
    finally:
        edge.stop()


def _status(edge: Edge, worker: int) -> dict[str, Any]:
    return edge.worker_status(worker)


def _holding_workers(edge: Edge, url_prefix: str) -> set[int]:
    deadline = time.monotonic() + 5
    found: set[int] = set()
    while time.monotonic() < deadline:
        found = {
            w
            for w in (0, 1)
            if any(
                e["url"].startswith(url_prefix) and e["session"]
                for e in _status(edge, w)["endpoints"]
            )
        }
        if len(found) == 2:
            break
        time.sleep(0.1)
    return found


def test_a_pooled_port_keeps_serving_on_every_worker_when_a_member_dies(
    tmp_path: Path, agents: list[Agent]
) -> None:
    """Two pooled agents of one TCP port, on different workers; one is killed. Its worker
    still listens on the port (the endpoint waits for it), and hands each visitor to the
    other worker: none is refused."""
    edge = Edge(tmp_path / "edge", workers=2).start()
    echo = EchoServer()
    try:
        _, token = edge.token()
        first = Agent(edge, token, echo.port, extra=["--pool"])
        agents.append(first)
        port = first.wait_bound()
        url = f"tcp://127.0.0.1:{port}"
        first_worker = _tcp_holders(edge, url)
        second: Agent | None = None
        for _ in range(12):  # until it lands on the other worker: all miss, 1 in 4,096
            second = Agent(edge, token, echo.port, remote_port=port, extra=["--pool"])
            agents.append(second)
            second.wait_bound()
            if len(_tcp_holders(edge, url)) == 2:
                break
            second.stop()
        assert len(_tcp_holders(edge, url)) == 2, "the pool never spanned both workers"
        assert first_worker
        first.proc.kill()  # its session ends with no goodbye: its worker's copy is orphaned
        time.sleep(1.0)
        for i in range(60):
            data = payload(i, 50_000)
            back = echo_roundtrip(port, data, timeout=10)
            assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest(), i
        handed = sum(_status(edge, w)["workers"]["handed_off"]["tcp"] for w in (0, 1))
        assert handed > 0, "no visitor landed on the orphaned worker in 60: 1 in 2^60"
    finally:
        echo.close()
        edge.stop()


def _tcp_holders(edge: Edge, url: str) -> set[int]:
    return {
        w
        for w in (0, 1)
        if any(e["url"] == url and e["session"] for e in _status(edge, w)["endpoints"])
    }


def refused_for_its_rewrite(
    edge: Edge, token: str, upstream: int, flags: list[str], theirs: str
) -> None:
    """A member of the pool ``rewritten`` with ``flags`` is refused (RLY_204, exit 4):
    the live members rewrite the Host to ``theirs``."""
    other = web(edge, token, upstream, "rewritten", "--pool", *flags)
    try:
        assert other.proc.wait(30) == 4, other.proc.text()
    finally:
        other.stop()
    assert (
        f"error RLY_204: rewritten.relay.localhost is served by members with --host-header "
        f"{theirs}; a member joins with the same Host rewrite as theirs"
    ) in other.proc.text()


def test_a_pool_member_with_another_host_header_is_refused(
    edge: Edge, agents: list[Agent], named: list[NamedOrigin]
) -> None:
    """The Host rewrite is the endpoint's: a member joining with another ``--host-header``
    would have its visitors reach its upstream with the first member's Host. It is
    refused (RLY_204, exit 4) and the pool serves on, every visitor with its rewrite."""
    a, b = NamedOrigin("member-a"), NamedOrigin("member-b")
    named += [a, b]
    _, token = edge.token()
    first = web(edge, token, a.port, "rewritten", "--pool", "--host-header", "one.internal")
    agents.append(first)
    first.wait_bound()
    for flags in (["--host-header", "two.internal"], []):
        refused_for_its_rewrite(edge, token, b.port, flags, "one.internal")
    same = web(edge, token, b.port, "rewritten", "--pool", "--host-header", "one.internal")
    agents.append(same)
    same.wait_bound()
    host = "rewritten.relay.localhost"
    seen = Counter(get_body(edge.http_port, host) for _ in range(10))
    assert seen == Counter({b"member-a": 5, b"member-b": 5}), seen


def test_a_pool_member_with_another_host_header_is_refused_on_every_worker(
    tmp_path: Path, agents: list[Agent], named: list[NamedOrigin]
) -> None:
    """With workers the Host rewrite is checked across them (the supervisor's claim), not
    only by the worker a member lands on. Six members with another rewrite (or none) are
    each refused, RLY_204; the kernel lands all six on the first member's worker (where
    that worker's own check would refuse them anyway) once in 64 runs."""
    edge = Edge(tmp_path / "edge", workers=2).start()
    try:
        origin = NamedOrigin("member-a")
        named.append(origin)
        _, token = edge.token()
        first = web(edge, token, origin.port, "rewritten", "--pool", "--host-header", "one")
        agents.append(first)
        first.wait_bound()
        for attempt in range(6):
            flags = ["--host-header", "two"] if attempt % 2 == 0 else []
            refused_for_its_rewrite(edge, token, origin.port, flags, "one")
        seen = Counter(get_body(edge.http_port, "rewritten.relay.localhost") for _ in range(8))
        assert seen == Counter({b"member-a": 8}), seen
    finally:
        edge.stop()


def test_a_pool_member_of_the_other_tls_port_kind_is_refused_on_every_worker(
    tmp_path: Path, agents: list[Agent], named: list[NamedOrigin]
) -> None:
    """A name on the TLS port is https (the edge terminates TLS) or tls (passed through)
    for all its members: which worker took a visitor must not decide that. Four pooled
    ``relay tls`` agents for the name of a pooled ``relay http`` (https) agent are each
    refused, RLY_204 (the supervisor's claim, or the worker's own check when the kernel
    lands one beside the first), and the name's https visitors reach the first one."""
    edge = Edge(tmp_path / "edge", workers=2).start()
    try:
        origin = NamedOrigin("member-a")
        named.append(origin)
        _, token = edge.token()
        first = Agent(
            edge, token, origin.port, kind="http", extra=["--subdomain", "kinds", "--pool"]
        )
        agents.append(first)
        first.wait_bound()
        host = "kinds.relay.localhost"
        for _ in range(4):
            other = Agent(edge, token, origin.port, kind="tls", extra=["--domain", host, "--pool"])
            try:
                assert other.proc.wait(30) == 4, other.proc.text()
            finally:
                other.stop()
            assert (
                f"error RLY_204: {host} is served as a https endpoint; a member joins as the "
                "same kind"
            ) in other.proc.text(), other.proc.text()
        for _ in range(4):
            response, _ = https_get(edge.https_port, host, edge.ca_file)
            assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"member-a")
    finally:
        edge.stop()
