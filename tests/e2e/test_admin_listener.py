"""The admin listener: health, readiness through a drain, and metrics that count what
really happened (bytes to the byte, connections, sessions, failures)."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, payload


def get(edge: Edge, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{edge.admin_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition text (labels in any order)."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', metric))
        if metric.split("{")[0] == name and found == labels:
            return float(value)
    raise AssertionError(f"no sample {name}{labels}")


@pytest.mark.timeout(90)
def test_metrics_count_the_bytes_connections_and_sessions_that_passed(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    _, token = edge.token()
    agent = Agent(edge, token, echo.port)
    agents.append(agent)
    port = agent.wait_bound()
    sizes = [1_000_000, 300_000, 7]
    for seed, size in enumerate(sizes):
        data = payload(seed, size)
        assert echo_roundtrip(port, data) == data
    # A wrong token, for the failure counter.
    wrong = Agent(edge, "rly_aaaaaaaaaaaa_" + "A" * 43, echo.port)
    agents.append(wrong)
    assert wrong.proc.wait(30) == 3
    time.sleep(0.2)
    status, text = get(edge, "/metrics")
    assert status == 200
    assert sample(text, "relay_visitor_bytes_total", kind="tcp", direction="in") == sum(sizes)
    assert sample(text, "relay_visitor_bytes_total", kind="tcp", direction="out") == sum(sizes)
    assert sample(text, "relay_visitor_connections_total", kind="tcp") == len(sizes)
    assert sample(text, "relay_visitor_connections_active", kind="tcp") == 0
    assert sample(text, "relay_stream_open_seconds_count") == len(sizes)
    assert sample(text, "relay_agent_sessions") == 1
    assert sample(text, "relay_agent_sessions_opened_total") == 1
    assert sample(text, "relay_endpoints", kind="tcp") == 1
    assert sample(text, "relay_auth_failures_total", reason="invalid_token") == 1
    assert sample(text, "relay_tls_handshakes_total", listener="agent", outcome="ok") == 2
    assert sample(text, "relay_mux_frames_total", direction="in") > 0
    assert sample(text, "relay_ready") == 1
    assert sample(text, "relay_build_info", version="0.1.0", role="edge", region="local") == 1
    assert "_created" not in text
    assert sample(text, "process_resident_memory_bytes") > 0


@pytest.mark.timeout(90)
def test_healthz_and_readyz_and_readyz_says_draining_during_a_drain(
    tmp_path: Path, echo: EchoServer, agents: list[Agent]
) -> None:
    edge = Edge(tmp_path / "edge", extra=["--drain-timeout", "10"]).start()
    try:
        assert get(edge, "/healthz") == (200, "ok\n")
        assert get(edge, "/readyz") == (200, "ready\n")
        assert get(edge, "/nope")[0] == 404
        _, token = edge.token()
        agent = Agent(edge, token, echo.port)
        agents.append(agent)
        port = agent.wait_bound()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as live:
            live.sendall(b"held")
            assert live.recv(4) == b"held"
            assert edge.proc is not None
            stopper = threading.Thread(target=edge.proc.stop, kwargs={"timeout": 30})
            stopper.start()
            edge.proc.wait_line("draining", timeout=10)
            status, text = get(edge, "/readyz")
            assert (status, text) == (503, "not ready: draining\n")
            assert get(edge, "/healthz")[0] == 200  # alive, just not taking new work
        stopper.join(30)
    finally:
        edge.stop()
