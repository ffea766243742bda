"""Two PoPs given one node id (cloned hosts, containers started with one ``--hostname``)
overwrite each other's presence key, and other nodes carry visitors to the wrong one.
Each says so (relay/cluster/own_key.py): one ERROR line naming the id and the other's
link address, and ``/status`` counts it. A node restarted under its own id is not taken
for another.

Real edge nodes on their own loopback addresses sharing one real Redis (7.0, Debian's);
every process is stopped by its PID.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.e2e.cluster_nodes import cluster_args
from tests.e2e.procs import Edge, free_port, free_port_range
from tests.e2e.test_admin_listener import sample
from tests.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.timeout(120)

ERROR = "ERROR relay.cluster.presence: cluster presence: another live process writes"


def node(data_dir: Path, host: str, redis: RedisServer, ports: tuple[int, int]) -> Edge:
    link = f"{host}:{free_port()}"
    return Edge(data_dir, host=host, ports=ports, extra=cluster_args("same", redis.url, link))


def metrics_text(edge: Edge) -> str:
    url = f"http://{edge.host}:{edge.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def conflicts(edge: Edge) -> int:
    return int(edge.worker_status()["cluster"]["presence"]["node_id_conflicts"])


def test_two_pops_with_one_node_id_each_say_so(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    ports = free_port_range(10)
    first = node(tmp_path / "shared", "127.0.0.2", redis_server, ports).start()
    try:
        second = node(tmp_path / "shared", "127.0.0.3", redis_server, ports).start()
        try:
            assert first.proc is not None and second.proc is not None
            line = first.proc.wait_line(ERROR, timeout=20)
            assert "(relay:node:same)" in line and "127.0.0.3" in line, line
            assert "give each PoP its own node_id" in line
            line = second.proc.wait_line(ERROR, timeout=20)
            assert "127.0.0.2" in line, line
            assert conflicts(first) >= 1 and conflicts(second) >= 1
            text = metrics_text(first)
            assert sample(text, "relay_cluster_node_id_conflicts_total") >= 1
            shared = first.worker_status()["cluster"]["presence"]["node_id_shared_with"]
            assert shared["link"].startswith("127.0.0.3:"), shared
        finally:
            second.stop()
    finally:
        first.stop()


def test_a_node_restarted_under_its_own_id_is_not_taken_for_another(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Killed (its key stays in Redis until its ttl) and started again at once: its first
    write finds its own old value, which is not another writer."""
    ports = free_port_range(10)
    client = redis.Redis.from_url(redis_server.url)
    edge = node(tmp_path / "shared", "127.0.0.2", redis_server, ports).start()
    try:
        assert edge.proc is not None
        deadline = time.monotonic() + 10
        while not client.exists("relay:node:same"):  # written once at least
            assert time.monotonic() < deadline, "the node never wrote its key"
            time.sleep(0.05)
        edge.proc.kill()
        edge.proc.proc.wait(10)
    finally:
        edge.stop()
    before = json.loads(client.get("relay:node:same") or b"{}")["instance"]  # still there
    again = node(tmp_path / "shared", "127.0.0.2", redis_server, ports).start()
    try:
        # Its own key, now of its new instance, written again and again (each write
        # after the first is judged): within a few heartbeats of 1 s.
        deadline = time.monotonic() + 10
        while json.loads(client.get("relay:node:same") or b"{}").get("instance") == before:
            assert time.monotonic() < deadline, "the restarted node never wrote its key"
            time.sleep(0.1)
        time.sleep(3.0)  # three more writes, each judged
        presence = again.worker_status()["cluster"]["presence"]
        assert presence["redis"] == "connected" and presence["node_id_conflicts"] == 0
        assert again.proc is not None and ERROR not in again.proc.text()
    finally:
        again.stop()
        client.close()
