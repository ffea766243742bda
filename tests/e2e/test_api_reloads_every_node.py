"""``POST /api/v1/reload`` on any node: every node of the cluster (and every worker of an
edge) reads its own configuration file again, as SIGHUP does, within 2 s, and says what it
did: the settings it applied, the ones that need a restart, or why it refused the file.
A node that does not answer in time is listed as such. Only an operator's admin key may
ask; each node audits its reload.

Nodes on loopback addresses of their own sharing one real Redis and one data directory
(one control plane), as in test_cluster_forwards_within_a_region.py.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.control.scopes import SCOPES
from tests.e2e.api_calls import Keys, call
from tests.e2e.cluster_nodes import cluster_args, known_nodes
from tests.e2e.procs import Edge, free_port, free_port_range
from tests.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.timeout(180)

NODES = (("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4"))
#: What the API's reload must take at most (the issue's bound for anything published to
#: every node), and what a silent node adds: the asks wait 1.5 s for answers.
WITHIN = 2.0


def silence_cut_after(host: str, port: int, limit: float) -> float | None:
    """Open a connection to an HTTP port and send nothing: after how many seconds the edge
    cut it (its header timeout), or None if it was still open after ``limit``."""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=limit) as sock:
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            return None
    return time.monotonic() - started


@pytest.fixture
def nodes(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> Iterator[dict[str, tuple[Edge, Path]]]:
    """Three nodes of one region, each with its own configuration file (a 60 s header
    timeout to start with)."""
    data_dir = tmp_path / "shared"
    tcp_ports = free_port_range(10)
    made: dict[str, tuple[Edge, Path]] = {}
    try:
        for name, host in NODES:
            config = tmp_path / f"{name}.yml"
            config.write_text(yaml.safe_dump({"http_header_timeout": 60}))
            edge = Edge(
                data_dir,
                host=host,
                ports=tcp_ports,
                extra=[
                    "--config",
                    str(config),
                    *cluster_args(name, redis_server.url, f"{host}:{free_port()}"),
                ],
            )
            made[name] = (edge, config)
            edge.start()  # one after the other: the first makes the shared data directory
        yield made
    finally:
        for edge, _ in made.values():
            edge.stop()


def by_node(answer: Any) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for n in answer.body["nodes"]}


def test_a_reload_through_one_node_reaches_every_node_within_2_s(
    nodes: dict[str, tuple[Edge, Path]],
) -> None:
    (a, _), (b, b_config), (c, c_config) = nodes["a"], nodes["b"], nodes["c"]
    deadline = time.monotonic() + 10
    while not all(known_nodes(e) == 2 for e, _ in nodes.values()):
        assert time.monotonic() < deadline, "the nodes never saw each other"
        time.sleep(0.05)
    keys = Keys(a)
    try:
        _, admin = keys.make(["admin"])
        _, not_admin = keys.make([s for s in SCOPES if s != "admin"])
    finally:
        keys.close()

    # b's file asks for a 1 s header timeout and for a restart-only change; c's no longer
    # loads; a's is as it was.
    b_config.write_text(yaml.safe_dump({"http_header_timeout": 1, "region": "moved"}))
    c_config.write_text("http_header_timeout: [60\n")

    # A key with every scope but admin (only an operator's key may hold admin): refused,
    # and nothing reloaded.
    refused = call(a, "POST", "/api/v1/reload", not_admin)
    assert refused.status == 403 and refused.body["code"] == "RLY_120", refused.body
    assert silence_cut_after(b.host, b.http_port, 2.5) is None  # b still waits 60 s

    asked = time.monotonic()
    answer = call(a, "POST", "/api/v1/reload", admin)
    took = time.monotonic() - asked
    assert answer.status == 200, answer.body
    assert took < WITHIN, f"the reload took {took:.2f} s"
    got = by_node(answer)
    assert got["a"] == {
        "node": "a",
        "answered": True,
        "applied": [],
        "kept": [],
        "refused": None,
    }
    assert got["b"]["answered"] and got["b"]["refused"] is None, got["b"]
    assert got["b"]["applied"] == ["http_header_timeout"] and got["b"]["kept"] == ["region"]
    assert got["c"]["answered"] and got["c"]["applied"] == [], got["c"]
    assert "http_header_timeout" in (got["c"]["refused"] or ""), got["c"]
    assert set(got) == {"a", "b", "c"}

    # What each said is what each does: b cuts a silent visitor after 1 s now, c (which
    # refused its file) and a (unchanged) still wait.
    cut = silence_cut_after(b.host, b.http_port, 5.0)
    assert cut is not None and 0.8 < cut < 3.0, cut
    assert silence_cut_after(c.host, c.http_port, 2.0) is None
    assert silence_cut_after(a.host, a.http_port, 2.0) is None
    assert b.proc is not None and c.proc is not None
    b.proc.wait_line("INFO relay.edge: reloaded", timeout=5)
    c.proc.wait_line("reload of", timeout=5)
    # Each node audited its own reload, with the key that asked as the actor.
    audited = a.audit_details("edge.reload")
    assert len(audited) == 3, audited
    assert sum(1 for d in audited if d.get("applied") == ["http_header_timeout"]) == 1

    # A node that does not answer (stopped, its key still alive) is listed as silent;
    # the call still returns within the bound.
    assert c.proc is not None
    os.kill(c.proc.pid, signal.SIGSTOP)
    try:
        asked = time.monotonic()
        answer = call(a, "POST", "/api/v1/reload", admin)
        took = time.monotonic() - asked
    finally:
        os.kill(c.proc.pid, signal.SIGCONT)
    assert answer.status == 200, answer.body
    assert took < WITHIN + 0.5, f"the reload took {took:.2f} s with a silent node"
    got = by_node(answer)
    assert got["c"] == {"node": "c", "answered": False, "applied": [], "kept": [], "refused": None}
    assert got["b"]["answered"] and got["b"]["applied"] == []  # nothing changed since


def test_a_reload_through_the_api_reaches_every_worker(tmp_path: Path) -> None:
    config = tmp_path / "edge.yml"
    config.write_text(yaml.safe_dump({"http_header_timeout": 60}))
    edge = Edge(tmp_path / "edge", workers=2, extra=["--config", str(config)]).start()
    try:
        keys = Keys(edge)
        try:
            _, admin = keys.make(["admin"])
        finally:
            keys.close()
        config.write_text(yaml.safe_dump({"http_header_timeout": 1}))
        answer = call(edge, "POST", "/api/v1/reload", admin)
        assert answer.status == 200, answer.body
        got = by_node(answer)
        assert set(got) == {"0", "1"}, got
        for worker in got.values():
            assert worker["answered"] and worker["applied"] == ["http_header_timeout"], got
        # Whichever worker the kernel gives a silent visitor to cuts it after 1 s.
        for _ in range(6):
            cut = silence_cut_after(edge.host, edge.http_port, 5.0)
            assert cut is not None and 0.8 < cut < 3.0, cut
    finally:
        edge.stop()
