"""`relay status` and the agent's admin listener: a person at a terminal sees an edge's
sessions, endpoints and traffic, and an agent's endpoints and recent visitors, redrawn in
place; the agent's /metrics and /readyz say whether it is connected."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import pytest

from tests.e2e.http_helpers import curl, host_of
from tests.e2e.origin import Origin
from tests.e2e.procs import RELAY, Agent, EchoServer, Edge, Proc, echo_roundtrip, free_port
from tests.e2e.test_admin_listener import sample


def status_once(admin: int) -> str:
    done = subprocess.run(
        [*RELAY, "status", "--once", "--admin", f"127.0.0.1:{admin}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def admin_get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.timeout(120)
def test_status_shows_the_edge_and_the_agent_and_the_agents_admin_listener_answers(
    edge: Edge, echo: EchoServer, origin: Origin, agents: list[Agent]
) -> None:
    _, token = edge.token()
    agent_admin = free_port()
    tcp = Agent(edge, token, echo.port)
    web = Agent(
        edge,
        token,
        str(origin.port),
        kind="http",
        extra=["--no-https", "--admin-listen", f"127.0.0.1:{agent_admin}"],
    )
    agents += [tcp, web]
    port = tcp.wait_bound()
    web.wait_bound()
    assert echo_roundtrip(port, b"x" * 50_000) == b"x" * 50_000
    got = curl(f"http://{host_of(web)}:{edge.http_port}/seen")
    assert got.stdout == b"origin ok /seen"

    edge_view = status_once(edge.admin_port)
    assert "relay edge 0.1.0 (region local)" in edge_view and "— ready" in edge_view
    assert "sessions 2/10000" in edge_view
    assert f"tcp://127.0.0.1:{port}" in edge_view and web.url in edge_view
    assert edge_view.count(" s_") >= 2  # both sessions listed

    agent_view = status_once(agent_admin)
    assert f"relay agent → edge {edge.address}" in agent_view and "— connected" in agent_view
    assert web.url in agent_view and f"127.0.0.1:{origin.port}" in agent_view
    assert " ok " in agent_view  # the visitor just served

    assert admin_get(agent_admin, "/readyz") == (200, "ready\n")
    _, text = admin_get(agent_admin, "/metrics")
    assert sample(text, "relay_agent_connected") == 1
    assert sample(text, "relay_build_info", version="0.1.0", role="agent", region="") == 1
    assert sample(text, "relay_visitor_bytes_total", kind="http", direction="in") > 0


@pytest.mark.timeout(60)
def test_status_redraws_in_place_until_interrupted(edge: Edge) -> None:
    proc = Proc([*RELAY, "status", "--admin", f"127.0.0.1:{edge.admin_port}", "--interval", "0.2"])
    try:
        time.sleep(2.0)
        assert proc.proc.poll() is None, proc.text()
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.stop()
    frames = proc.text().count("\x1b[H\x1b[2J")
    assert frames >= 3, proc.text()[:300]


@pytest.mark.timeout(30)
def test_status_of_an_address_where_nothing_listens_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [*RELAY, "status", "--once", "--admin", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "RLY_502" in done.stderr and "cannot read the admin listener" in done.stderr
    assert "Traceback" not in done.stderr
