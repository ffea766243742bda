"""Whatever ends a visitor's connection, both sides let go at once: the agent's upstream
connection, the edge's descriptor, and a drain that has nothing left to wait for. A
visitor cut because the upstream never answered is told so (504 RLY_614)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.http_helpers import host_of, web_agent
from tests.e2e.procs import Agent, Edge, ThreadedServer, free_port


class SilentUpstream(ThreadedServer):
    """Accepts, reads the request, never answers; records when each connection ends."""

    def __init__(self) -> None:
        self.ended: list[float] = []
        self._lock = threading.Lock()
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn:
            for _ in range(3000):  # at most 10 minutes
                if self.stopping.is_set():
                    return
                try:
                    if conn.recv(65536) == b"":
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            with self._lock:
                self.ended.append(time.monotonic())


@pytest.fixture
def silent() -> Iterator[SilentUpstream]:
    server = SilentUpstream()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def quick_idle_edge(tmp_path: Path) -> Iterator[Edge]:
    server = Edge(tmp_path / "edge", extra=["--http-idle-timeout", "1"]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(120)
def test_an_idle_cut_visitor_closes_the_agents_upstream_and_leaves_nothing_to_drain(
    quick_idle_edge: Edge, silent: SilentUpstream, agents: list[Agent]
) -> None:
    edge = quick_idle_edge
    agent = web_agent(edge, agents, str(silent.port), "--no-https")
    request = b"GET /slow HTTP/1.1\r\nHost: %b\r\n\r\n" % host_of(agent).encode()
    visitors = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", edge.http_port), timeout=10)
        sock.sendall(request)
        visitors.append(sock)
    try:
        deadline = time.monotonic() + 10
        while silent.connections < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert silent.connections == 20
        answers = []
        for sock in visitors:  # the edge cuts each one at its idle timeout (1 s)
            sock.settimeout(10)
            got = b""
            try:
                while chunk := sock.recv(65536):
                    got += chunk
            except ConnectionResetError:
                pass
            answers.append(got)
        cut_at = time.monotonic()
        # Each visitor is told why, with the code of a silent upstream, not a bare EOF.
        assert all(a.startswith(b"HTTP/1.1 504 ") and b"RLY_614" in a for a in answers), [
            a[:80] for a in answers
        ]
        deadline = cut_at + 10
        while len(silent.ended) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        # The agent heard of each cut (a reset stream) and closed its upstream at once.
        assert len(silent.ended) == 20, silent.ended
        assert max(silent.ended) - cut_at < 2.0
    finally:
        for sock in visitors:
            sock.close()
    # Nothing is left for a drain to wait for: SIGTERM ends the edge long before the
    # 30 s drain timeout.
    assert edge.proc is not None
    started = time.monotonic()
    edge.proc.stop(timeout=20)
    assert time.monotonic() - started < 5.0


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.timeout(120)
def test_visitors_answered_with_an_agent_error_page_release_their_descriptors(
    edge: Edge, agents: list[Agent]
) -> None:
    """The agent writes the 502 page (its upstream refuses) and ends the stream; each
    visitor reads it and closes. The edge's descriptor for each goes at once, not with
    the link's next keepalive ping (7-15 s at 32581c6)."""
    agent = web_agent(edge, agents, str(free_port()), "--no-https")  # nothing listens
    # Past the link's first second, when its RTT probes keep it busy: from now on only a
    # keepalive ping (every 15 s) makes the link read anything by itself.
    time.sleep(2.0)
    assert edge.proc is not None
    baseline = open_descriptors(edge.proc.pid)
    request = b"GET / HTTP/1.1\r\nHost: %b\r\n\r\n" % host_of(agent).encode()
    pages: list[bytes] = []

    def visit() -> None:
        with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
            sock.sendall(request)
            got = b""
            while chunk := sock.recv(65536):  # the page, then the edge's half-close
                got += chunk
            pages.append(got)

    threads = [threading.Thread(target=visit) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(pages) == 50 and all(b" 502 " in p and b"RLY_613" in p for p in pages)
    closed_at = time.monotonic()
    deadline = closed_at + 5
    while open_descriptors(edge.proc.pid) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_descriptors(edge.proc.pid) <= baseline
    assert time.monotonic() - closed_at < 2.0
