"""The agent outlives edges and edges outlive agents: reconnects, re-binds, takes back."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, payload


def assert_echo(port: int, seed: int = 3) -> None:
    data = payload(seed, 200_000)
    assert hashlib.sha256(echo_roundtrip(port, data)).digest() == hashlib.sha256(data).digest()


def visitor_is_refused(port: int, timeout: float = 5.0) -> bool:
    """True when a visitor is turned away: refused, reset, or closed without a byte."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"hello?")
            return sock.recv(100) == b""
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
        return True


@pytest.mark.timeout(90)
def test_agent_started_before_the_edge_connects_once_it_is_up(
    tmp_path: Path, echo: EchoServer, agents: list[Agent]
) -> None:
    edge = Edge(tmp_path / "edge")
    _, token = edge.token()  # the store exists before the edge runs
    # The CA appears only when the edge first starts; start it once to create it.
    edge.start()
    edge.stop()
    agent = Agent(edge, token, echo.port)
    agents.append(agent)
    time.sleep(2.0)  # the agent is retrying against a closed port now
    assert agent.proc.proc.poll() is None, agent.proc.text()
    edge.start()
    try:
        assert_echo(agent.wait_bound(timeout=45))
    finally:
        edge.stop()


@pytest.mark.timeout(120)
def test_edge_restart_agent_rebinds_the_same_port(
    tmp_path: Path, echo: EchoServer, agents: list[Agent]
) -> None:
    edge = Edge(tmp_path / "edge").start()
    try:
        _, token = edge.token()
        agent = Agent(edge, token, echo.port)
        agents.append(agent)
        port = agent.wait_bound()
        assert_echo(port)
        assert edge.stop() == 0  # graceful drain exits 0
        edge.start()
        # Same port again: no new Forwarding line, one line saying it is back.
        agent.proc.wait_line("reconnected; 1 endpoint(s) serving again", timeout=60)
        assert agent.proc.text().count("Forwarding") == 1, agent.proc.text()
        assert_echo(port, seed=4)
    finally:
        edge.stop()


@pytest.mark.timeout(120)
def test_killed_agent_visitors_refused_then_restart_recovers(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    _, token = edge.token()
    first = Agent(edge, token, echo.port)
    agents.append(first)
    port = first.wait_bound()
    assert_echo(port)
    first.proc.kill()
    deadline = time.monotonic() + 10
    while not visitor_is_refused(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert visitor_is_refused(port)
    second = Agent(edge, token, echo.port, remote_port=port)
    agents.append(second)
    assert second.wait_bound() == port
    assert_echo(port, seed=5)


@pytest.mark.timeout(60)
def test_wrong_token_is_refused_with_a_code_and_binds_nothing(edge: Edge, echo: EchoServer) -> None:
    wanted = edge.ports[0]
    bogus = "rly_aaaaaaaaaaaa_" + "A" * 43
    agent = Agent(edge, bogus, echo.port, remote_port=wanted)
    try:
        code = agent.proc.wait(30)
    finally:
        agent.stop()
    assert code == 3, agent.proc.text()
    assert "RLY_101" in agent.proc.text()
    assert visitor_is_refused(wanted)


@pytest.mark.timeout(60)
def test_revoked_token_is_refused_with_its_own_code(edge: Edge, echo: EchoServer) -> None:
    import subprocess

    from tests.e2e.procs import RELAY

    token_id, token = edge.token()
    subprocess.run(
        [*RELAY, "token", "revoke", "--data-dir", str(edge.data_dir), token_id],
        check=True,
        capture_output=True,
        timeout=60,
    )
    agent = Agent(edge, token, echo.port, remote_port=edge.ports[0])
    try:
        code = agent.proc.wait(30)
    finally:
        agent.stop()
    assert code == 3, agent.proc.text()
    assert "RLY_102" in agent.proc.text()
    assert visitor_is_refused(edge.ports[0])


@pytest.mark.timeout(60)
def test_agent_with_wrong_pin_never_authenticates(
    tmp_path: Path, edge: Edge, echo: EchoServer
) -> None:
    _, token = edge.token()
    agent = Agent(edge, token, echo.port, extra=["--pin", "sha256:" + "00" * 32])
    # --pin replaces --ca-file's role; the fingerprint does not match the edge's.
    try:
        time.sleep(3)
        assert "Forwarding" not in agent.proc.text()
        assert "RLY_501" in agent.proc.text() or "does not match the pin" in agent.proc.text()
    finally:
        agent.stop()


@pytest.mark.timeout(60)
def test_agent_with_the_right_pin_connects(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    [line] = [line for line in edge.proc.output if "--pin" in line]
    fingerprint = line.split("--pin", 1)[1].strip()
    _, token = edge.token()
    agent = Agent(edge, token, echo.port, extra=["--pin", fingerprint])
    agents.append(agent)
    assert_echo(agent.wait_bound())


@pytest.mark.timeout(120)
def test_sigterm_drains_a_live_stream_before_the_edge_exits(
    tmp_path: Path, echo: EchoServer, agents: list[Agent]
) -> None:
    import threading

    edge = Edge(tmp_path / "edge", extra=["--drain-timeout", "20"]).start()
    try:
        _, token = edge.token()
        agent = Agent(edge, token, echo.port)
        agents.append(agent)
        port = agent.wait_bound()
        data = payload(21, 4 * 1024 * 1024)
        received = bytearray()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            # A slow conversation: 64 KiB every 50 ms, about 3 s in all.
            def talk() -> None:
                for i in range(0, len(data), 65536):
                    sock.sendall(data[i : i + 65536])
                    time.sleep(0.05)
                sock.shutdown(socket.SHUT_WR)

            writer = threading.Thread(target=talk, daemon=True)
            writer.start()
            while len(received) < 512 * 1024:
                received += sock.recv(65536)
            assert edge.proc is not None
            edge.proc.proc.send_signal(15)  # SIGTERM while the stream is mid-flight
            time.sleep(0.3)
            assert visitor_is_refused(port), "a draining edge must not take new visitors"
            while chunk := sock.recv(65536):
                received += chunk
            writer.join(30)
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        assert edge.proc.proc.wait(30) == 0
    finally:
        edge.stop()
