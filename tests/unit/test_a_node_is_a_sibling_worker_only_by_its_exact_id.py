"""Under --workers each worker of node ``BASE`` is a node of its own, ``BASE.wI``; the
TCP ports a sibling holds are left to the workers to share (relay/edge/cluster.py
``is_worker_of``). Any other node's ports are listened on for it: a node of another host
whose id merely begins like a worker's must not be taken for one (its visitors would be
refused here)."""

from __future__ import annotations

import pytest

from relay.edge.cluster import is_worker_of


@pytest.mark.parametrize("node_id", ["eu1.w0", "eu1.w1", "eu1.w15"])
def test_the_workers_of_a_node_are_its_siblings(node_id: str) -> None:
    assert is_worker_of("eu1", node_id)


@pytest.mark.parametrize(
    "node_id",
    ["eu1.west", "eu1.w", "eu1.w1x", "eu1.w\u0661", "eu10.w1", "xeu1.w1", "eu1", "eu1.w1.w2"],
)
def test_other_nodes_are_not(node_id: str) -> None:
    assert not is_worker_of("eu1", node_id)


def test_a_base_id_with_dots_and_ws_is_matched_whole() -> None:
    assert is_worker_of("eu.west.w", "eu.west.w.w3")
    assert not is_worker_of("eu.west", "eu.west.w.w3")
