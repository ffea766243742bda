"""What the cluster e2e tests give each node, and ask of it."""

from __future__ import annotations

from typing import Any

from tests.e2e.procs import Edge


def cluster_args(node_id: str, redis_url: str, listen: str) -> list[str]:
    """``relay edge`` options of node ``node_id`` of the cluster on ``redis_url``, its
    links listened for at ``listen`` (``host:port``)."""
    return ["--node-id", node_id, "--cluster-redis", redis_url, "--cluster-listen", listen]


def known_nodes(edge: Edge) -> int:
    """How many other nodes ``edge`` knows of (its presence table)."""
    status: dict[str, Any] = edge.worker_status()["cluster"]
    return int(status["presence"]["nodes"])
