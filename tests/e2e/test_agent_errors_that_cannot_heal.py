"""An agent that cannot succeed by trying again says why at once and exits; one that can
(the edge is down or restarting) retries with one line per attempt; and Ctrl-C ends it
within a second whatever it is doing."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.e2e.http_helpers import curl
from tests.e2e.origin import Origin
from tests.e2e.procs import RELAY, Agent, EchoServer, Edge, Proc, free_port, unanswered_port


def agent_proc(edge_address: str, token: str, upstream: int, *trust: str) -> Proc:
    return Proc([*RELAY, "tcp", str(upstream), "--edge", edge_address, "--token", token, *trust])


def exits(proc: Proc, within: float = 20.0) -> int:
    try:
        return proc.wait(within)
    finally:
        proc.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("trust", "code", "hint"),
    [
        ([], "RLY_501", "pass --ca-file DATA_DIR/ca/ca.pem or --pin sha256:"),
        (["--server-name", "wrong.example"], "RLY_501", "is not trusted"),
        (["--pin", "sha256:" + "00" * 32], "RLY_501", "does not match the pin"),
    ],
    ids=["no-ca-file", "wrong-name", "wrong-pin"],
)
def test_an_edge_the_agent_cannot_trust_ends_it_at_once_with_a_hint(
    edge: Edge, echo: EchoServer, trust: list[str], code: str, hint: str
) -> None:
    _, token = edge.token()
    if trust[:1] == ["--server-name"]:
        trust = ["--ca-file", str(edge.ca_file), *trust]
    proc = agent_proc(edge.address, token, echo.port, *trust)
    assert exits(proc) == 1, proc.text()
    out = proc.text()
    assert code in out and hint in out, out
    assert "reconnecting" not in out and "session lost" not in out, out
    assert "Traceback" not in out


@pytest.mark.timeout(60)
def test_a_ca_file_that_is_not_a_certificate_is_a_usage_error(
    edge: Edge, echo: EchoServer, tmp_path: Path
) -> None:
    _, token = edge.token()
    bogus = tmp_path / "ca.pem"
    bogus.write_text("this is not a certificate\n")
    proc = agent_proc(edge.address, token, echo.port, "--ca-file", str(bogus))
    assert exits(proc) == 2, proc.text()
    assert "RLY_401" in proc.text() and "is not a PEM CA certificate" in proc.text()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("port", ["http", "https"])
def test_an_address_that_is_not_the_agent_port_ends_the_agent_with_a_hint(
    edge: Edge, echo: EchoServer, port: str
) -> None:
    _, token = edge.token()
    address = f"127.0.0.1:{edge.http_port if port == 'http' else edge.https_port}"
    proc = agent_proc(address, token, echo.port, "--ca-file", str(edge.ca_file))
    assert exits(proc) == 1, proc.text()
    out = proc.text()
    assert "RLY_503" in out and "agent port" in out, out
    assert "reconnecting" not in out


@pytest.mark.timeout(60)
def test_an_edge_that_is_down_is_retried_with_one_line_per_attempt(echo: EchoServer) -> None:
    proc = agent_proc(f"127.0.0.1:{free_port()}", "rly_x", echo.port)
    try:
        for _ in range(3):
            proc.wait_line("cannot reach the edge at 127.0.0.1:", timeout=20)
        lines = [line for line in proc.output if "127.0.0.1" in line]
        assert all("; reconnecting in " in line for line in lines), lines
        assert "session lost" not in proc.text()  # there never was a session
    finally:
        proc.stop()


def interrupt_takes(proc: Proc) -> float:
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGINT)
    proc.wait(10)
    return time.monotonic() - started


@pytest.mark.timeout(90)
def test_ctrl_c_ends_an_agent_waiting_to_reconnect_within_a_second(echo: EchoServer) -> None:
    proc = agent_proc(f"127.0.0.1:{free_port()}", "rly_x", echo.port)
    try:
        # After a few attempts the backoff is seconds long (jittered: wait for one).
        for _ in range(12):
            line = proc.wait_line("; reconnecting in ", timeout=60)
            if float(line.rsplit(" ", 1)[1].rstrip("s")) > 2.0:
                break
        else:
            pytest.fail(f"no backoff over 2 s in 12 attempts:\n{proc.text()}")
        assert interrupt_takes(proc) < 1.0
        assert proc.proc.returncode == 0
    finally:
        proc.stop()


@pytest.mark.timeout(60)
def test_ctrl_c_ends_an_agent_that_is_still_connecting_within_a_second(echo: EchoServer) -> None:
    with unanswered_port() as port:
        proc = agent_proc(f"127.0.0.1:{port}", "rly_x", echo.port)
        try:
            time.sleep(2.0)  # python is up, the agent is stuck in its connect
            assert proc.proc.poll() is None, proc.text()
            assert interrupt_takes(proc) < 1.0
        finally:
            proc.stop()


@pytest.mark.timeout(120)
def test_a_random_name_comes_back_after_an_edge_restart(
    tmp_path: Path, origin: Origin, agents: list[Agent]
) -> None:
    edge = Edge(tmp_path / "edge").start()
    try:
        _, token = edge.token()
        agent = Agent(edge, token, str(origin.port), kind="http")
        agents.append(agent)
        agent.wait_bound()
        url = agent.url
        assert url.startswith("https://") and url.endswith(f".relay.localhost:{edge.https_port}")
        assert curl(url + "/before", edge=edge).stdout == b"origin ok /before"
        assert edge.stop() == 0
        edge.start()
        agent.proc.wait_line("reconnected; 1 endpoint(s) serving again", timeout=60)
        assert agent.proc.text().count("Forwarding") == 1, agent.proc.text()
        assert curl(url + "/after", edge=edge).stdout == b"origin ok /after"
    finally:
        edge.stop()
