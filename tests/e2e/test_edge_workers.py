"""`relay edge --workers 2`: one edge on two processes.

Every listener is bound in both workers (SO_REUSEPORT): a visitor accepted by the worker
that does not hold its endpoint is handed to the one that does, with what was read of it,
and gets the same bytes back as if it had landed right (checked by SHA-256). A killed
worker is started again and its agents serve again; SIGHUP and SIGTERM reach every
worker; a name has one owner across the workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.http_helpers import exchange, get_body, host_of, one_request, web_agent
from tests.e2e.origin import NamedOrigin, Origin
from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, payload

pytestmark = pytest.mark.timeout(180)

WORKERS = 2


@pytest.fixture
def edge(edge_of_two_workers: Edge) -> Edge:
    return edge_of_two_workers


def status(edge: Edge, worker: int) -> dict[str, Any]:
    result = edge.worker_status(worker)
    assert result["worker"] == worker
    return result


def worker_pids(edge: Edge) -> dict[int, int]:
    """Worker index -> pid, from the supervisor's children and their environment."""
    assert edge.proc is not None
    children: list[int] = []
    for task in Path(f"/proc/{edge.proc.pid}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    found: dict[int, int] = {}
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for entry in environ:
            if entry.startswith(b"RELAY_EDGE_WORKER="):
                found[int(entry.split(b"=", 1)[1].split(b",")[0])] = pid
    return found


def holder_of(edge: Edge, url: str) -> int:
    """The worker whose endpoints include ``url`` (bounded wait for the bind to show)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for worker in range(WORKERS):
            if any(e["url"] == url for e in status(edge, worker)["endpoints"]):
                return worker
        time.sleep(0.05)
    raise AssertionError(f"no worker holds {url}")


def post_sink(port: int, host: str, body: bytes, *, tls: ssl.SSLContext | None = None) -> bytes:
    """One POST /sink on a new connection; the response body (the origin's hash of what
    it received)."""
    head = f"POST /sink HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n"
    return exchange(port, host, head.encode(), body, tls=tls)


def test_visitors_on_every_worker_reach_every_endpoint(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    plain = web_agent(edge, agents, str(origin.port), "--no-https", "--subdomain", "plain")
    secure = web_agent(edge, agents, str(origin.port), "--subdomain", "secure")
    tls = ssl.create_default_context(cafile=str(edge.ca_file))
    for agent, port, context, front in (
        (plain, edge.http_port, None, "http"),
        (secure, edge.https_port, tls, "tls"),
    ):
        holder = holder_of(edge, agent.url)
        other = 1 - holder
        before = status(edge, other)["workers"]["handed_off"][front]
        # Visitors land where the kernel puts them; keep coming until the worker that
        # does not hold the endpoint has handed over 3 (bounded: 200 connections).
        sent = 0
        for sent in range(1, 201):
            body = payload(sent, 70_000 + sent)  # the head and body span several reads
            answer = json.loads(post_sink(port, host_of(agent), body, tls=context))
            assert answer == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            handed = status(edge, other)["workers"]["handed_off"][front] - before
            if handed >= 3:
                break
        assert handed >= 3, f"{front}: {sent} visitors, {handed} handed over"
        assert status(edge, holder)["workers"]["handed_in"][front] >= handed
        assert status(edge, other)["workers"]["handoffs_failed"] == 0


def test_every_form_of_head_gets_what_one_edge_gives_whichever_worker_accepts_it(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    """A worker hands a visitor over by its head's bytes when they plainly say its Host,
    unparsed; any other head after a full parse. Either way the visitor gets the answer
    one edge gives: its body through (SHA-256), or the same refusal."""
    agent = web_agent(edge, agents, str(origin.port), "--no-https", "--subdomain", "forms")
    host = host_of(agent)
    other = 1 - holder_of(edge, agent.url)
    before = status(edge, other)["workers"]
    port = edge.http_port
    forms: list[tuple[str, str, bytes | None]] = [
        ("plain", f"POST /sink HTTP/1.1\r\nHost: {host}\r\n", None),
        ("upper case, a port", f"POST /sink HTTP/1.1\r\nHOST: {host.upper()}:{port}\r\n", None),
        ("absolute form", f"POST http://{host}:{port}/sink HTTP/1.1\r\nHost: {host}\r\n", None),
        ("HTTP/1.0", f"POST /sink HTTP/1.0\r\nHost: {host}\r\n", None),
        ("two hosts", f"POST /sink HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n", b"RLY_628"),
        (
            "framing named hop-by-hop",
            f"POST /sink HTTP/1.1\r\nHost: {host}\r\nConnection: content-length\r\n",
            b"RLY_627",
        ),
    ]
    for n, (what, head, refused) in enumerate(forms):
        # 12 connections each: all on one worker of two is 1 in 2,048.
        for i in range(12):
            body = b"" if refused else payload(n * 100 + i, 5_000 + i)
            length = b"" if refused else b"content-length: %d\r\n" % len(body)
            answer = one_request(port, host, head.encode() + length, body)
            if refused is not None:
                assert answer.startswith(b"HTTP/1.1 400"), (what, answer[:300])
                assert refused in answer, (what, answer[:300])
                continue
            assert answer.startswith(b"HTTP/1.1 200"), (what, answer[:300])
            got = json.loads(answer.partition(b"\r\n\r\n")[2])
            assert got == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}, what
    after = status(edge, other)["workers"]
    handed = after["handed_off"]["http"] - before["handed_off"]["http"]
    assert handed >= 12, f"{handed} of {12 * len(forms)} visitors handed over"
    assert after["handoffs_failed"] == 0


def test_a_visitor_whose_head_comes_late_is_still_handed_over(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    """A visitor accepted with nothing to read yet is read, routed and handed over when
    its head comes."""
    agent = web_agent(edge, agents, str(origin.port), "--no-https", "--subdomain", "late")
    host = host_of(agent)
    other = 1 - holder_of(edge, agent.url)
    before = status(edge, other)["workers"]
    # 12 at once: all on one worker of two is 1 in 2,048.
    socks = [socket.create_connection(("127.0.0.1", edge.http_port), timeout=20) for _ in range(12)]
    try:
        time.sleep(1.5)  # accepted, and read from, long before a byte comes
        bodies = [payload(i, 3_000 + i) for i in range(len(socks))]
        for sock, body in zip(socks, bodies, strict=True):
            head = f"POST /sink HTTP/1.1\r\nHost: {host}\r\ncontent-length: {len(body)}\r\n"
            sock.sendall(head.encode() + b"connection: close\r\n\r\n" + body)
        for sock, body in zip(socks, bodies, strict=True):
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
            got = json.loads(answer.partition(b"\r\n\r\n")[2])
            assert got == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    finally:
        for sock in socks:
            sock.close()
    after = status(edge, other)["workers"]
    assert after["handed_off"]["http"] - before["handed_off"]["http"] >= 1


def test_a_tcp_endpoint_is_served_by_the_worker_that_holds_it(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    _, token = edge.token()
    agent = Agent(edge, token, echo.port)
    agents.append(agent)
    port = agent.wait_bound()
    holder = holder_of(edge, agent.url)
    for i in range(20):
        data = payload(i, 300_000)
        back = echo_roundtrip(port, data)
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    other = status(edge, 1 - holder)
    assert all(e["url"] != agent.url for e in other["endpoints"]), "the other worker holds it"
    assert other["workers"]["handed_off"]["tcp"] == 0  # its visitors were all accepted there


def test_a_killed_worker_comes_back_and_its_agents_serve_again(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    agent = web_agent(edge, agents, str(origin.port), "--no-https", "--subdomain", "back")
    holder = holder_of(edge, agent.url)
    pids = worker_pids(edge)
    assert sorted(pids) == list(range(WORKERS))
    os.kill(pids[holder], signal.SIGKILL)
    killed = time.monotonic()
    body = payload(7, 50_000)
    expected = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    served = False
    while time.monotonic() - killed < 5 and not served:
        try:
            served = json.loads(post_sink(edge.http_port, host_of(agent), body)) == expected
        except (AssertionError, OSError, ValueError):
            time.sleep(0.1)
    assert served, "the endpoint was not served again within 5 s of its worker's death"
    assert edge.proc is not None
    edge.proc.wait_all(f"worker {holder} (pid", "serves again")
    assert worker_pids(edge)[holder] != pids[holder]
    # Both workers serve it again: visitors of either reach it.
    for i in range(10):
        assert json.loads(post_sink(edge.http_port, host_of(agent), body)) == expected, i


def test_reload_and_drain_reach_every_worker(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    """SIGHUP reloads every worker; SIGTERM drains them: a download in flight through
    the edge completes (hash-checked) while the workers drain, each exits by itself, and
    the supervisor exits 0."""
    assert edge.proc is not None
    pids = worker_pids(edge)
    os.kill(edge.proc.pid, signal.SIGHUP)
    edge.proc.wait_all(*(f"relay.edge[worker {w}]: reloaded" for w in range(WORKERS)))
    agent = web_agent(edge, agents, str(origin.port), "--no-https", "--subdomain", "drained")
    host, size = host_of(agent), 8_000_000
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=30) as visitor:
        visitor.sendall(f"GET /blob/{size} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
        got = visitor.recv(65536)  # the head and a first part; the rest waits for us
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        os.kill(edge.proc.pid, signal.SIGTERM)
        edge.proc.wait_all(*(f"relay.edge[worker {w}]: draining" for w in range(WORKERS)))
        while len(got) < size + got.index(b"\r\n\r\n") + 4:
            chunk = visitor.recv(1 << 20)
            assert chunk, "the download was cut by the drain"
            got += chunk
    body = got.partition(b"\r\n\r\n")[2]
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload(99, size)).digest()
    assert edge.proc.wait(30) == 0, edge.proc.text()
    assert "drained" in edge.proc.text() and "killing" not in edge.proc.text()
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the drain"


@pytest.mark.timeout(90)
def test_a_worker_that_does_not_drain_is_killed_and_the_exit_code_says_so(
    tmp_path: Path,
) -> None:
    """A worker that never exits (here: stopped) is killed after the drain's time and a
    grace, and the supervisor exits 1, not 0: the stop was not clean."""
    edge = Edge(tmp_path / "edge", workers=2, extra=["--drain-timeout", "1"]).start()
    stopped: int | None = None
    try:
        assert edge.proc is not None
        pids = worker_pids(edge)
        os.kill(pids[1], signal.SIGSTOP)
        stopped = pids[1]
        started = time.monotonic()
        code = edge.proc.stop(timeout=60)
        stopped = None  # the supervisor's SIGKILL ended it (asserted below)
        took = time.monotonic() - started
        assert code == 1, edge.proc.text()
        assert "did not exit after the drain; killing them" in edge.proc.text()
        assert "drain incomplete" in edge.proc.text()
        assert 1 + 15 - 1 < took < 1 + 15 + 10, took  # the drain, then the grace
        for pid in pids.values():
            assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the kill"
    finally:
        if stopped is not None:  # failed before the drain: let it run, and drain
            os.kill(stopped, signal.SIGCONT)
        edge.stop()


def test_a_name_has_one_owner_across_workers(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    first = web_agent(edge, agents, str(origin.port), "--no-https", "--subdomain", "mine")
    holder = holder_of(edge, first.url)
    _, other_token = edge.token()
    assert edge.proc is not None
    # The other token's agent is refused wherever its link lands; keep trying until it
    # has been refused by the worker that does not hold the name (bounded: 12 agents).
    for _ in range(12):
        intruder = Agent(
            edge, other_token, origin.port, kind="http", extra=["--no-https", "--subdomain", "mine"]
        )
        agents.append(intruder)
        assert intruder.proc.wait(timeout=30) != 0
        assert "bound by another" in intruder.proc.text(), intruder.proc.text()
        if f"[worker {1 - holder}]: session" in _refusals(edge.proc.text()):
            break
    # 12 links all landing on one worker of two: 1 in 4,096.
    assert f"[worker {1 - holder}]: session" in _refusals(edge.proc.text())
    # The owner still serves.
    body = payload(3, 1000)
    answer = json.loads(post_sink(edge.http_port, host_of(first), body))
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()


def _refusals(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if "refused" in line and "bind of" in line)


def test_blank_lines_before_a_request_cannot_grow_what_a_worker_keeps(edge: Edge) -> None:
    """llhttp skips CRLFs before a request line without a callback: a worker keeping
    what it read for a possible handoff refuses past its cap (431), and lives on."""
    pids = worker_pids(edge)
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=20) as sock:
        try:
            for _ in range(64):  # 64 blocks of 8 KiB: far past http_max_head + one read
                sock.sendall(b"\r\n" * 4096)
        except OSError:
            pass  # refused and closed while we were still sending
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"RLY_622" in answer
    assert worker_pids(edge) == pids, "a worker died"


def test_a_more_specific_name_on_another_worker_beats_a_local_wildcard(
    edge: Edge, agents: list[Agent], named: list[NamedOrigin]
) -> None:
    """As on one edge, an exact name wins over a wildcard covering it, whichever worker
    holds which: visitors of api.corp.<base> never reach the wildcard's agent."""
    wild, exact = NamedOrigin("wildcard"), NamedOrigin("exact")
    named += [wild, exact]
    edge.reserve_domain("*.corp.relay.localhost")
    _, token = edge.token()
    wildcard = Agent(
        edge,
        token,
        wild.port,
        kind="http",
        extra=["--no-https", "--domain", "*.corp.relay.localhost"],
    )
    agents.append(wildcard)
    wildcard.wait_bound()
    holder = holder_of(edge, "http://<any>.corp.relay.localhost:" + str(edge.http_port))
    # Until the exact name's agent lands on the other worker (bounded: 12 agents; all on
    # one worker of two: 1 in 4,096).
    for _ in range(12):
        api = Agent(
            edge,
            token,
            exact.port,
            kind="http",
            extra=["--no-https", "--domain", "api.corp.relay.localhost"],
        )
        agents.append(api)
        api.wait_bound()
        if holder_of(edge, api.url) != holder:
            break
        api.stop()
    assert holder_of(edge, api.url) != holder
    for _ in range(40):
        assert get_body(edge.http_port, "api.corp.relay.localhost") == b"exact"
        assert get_body(edge.http_port, "other.corp.relay.localhost") == b"wildcard"
