"""The edge's /status with workers (relay/cluster/status_sum.py): every worker's
sessions with their worker, each endpoint once with the workers holding it, sums of the
counts, and not ready while any worker is not, or does not answer."""

from __future__ import annotations

from typing import Any

from relay.cluster.status_sum import combine_status


def worker(index: int, sessions: list[str], urls: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "role": "edge",
        "version": "0.1.0",
        "region": "eu",
        "worker": index,
        "ready": True,
        "why": "",
        "sessions": len(sessions),
        "sessions_limit": 100,
        "endpoints_by_kind": {"http": len(urls)},
        "sessions_list": [{"id": s, "peer": "127.0.0.1:1", "token": "t"} for s in sessions],
        "workers": {"index": index, "count": 2, "elsewhere": {"http:x": [1 - index]},
                    "handed_off": {"http": index}, "handed_in": {}, "handoffs_failed": 0},
        "cluster": None,
        "endpoints": [{"url": u, "kind": "http", "session": sessions[0]} for u in urls],
        **extra,
    }  # fmt: skip


def test_sessions_and_endpoints_of_every_worker() -> None:
    both = "http://both.example.com"
    status = combine_status(
        [
            (0, 100, worker(0, ["s_b", "s_a"], [both, "http://zero.example.com"])),
            (1, 101, worker(1, ["s_c"], [both])),
        ]
    )
    assert status["worker"] is None and status["ready"] and status["why"] == ""
    assert (status["sessions"], status["sessions_limit"]) == (3, 200)
    assert [(s["id"], s["worker"]) for s in status["sessions_list"]] == [
        ("s_a", 0),
        ("s_b", 0),
        ("s_c", 1),
    ]
    assert [(e["url"], e["workers"], e["session"]) for e in status["endpoints"]] == [
        (both, [0, 1], "s_b"),
        ("http://zero.example.com", [0], "s_b"),
    ]
    assert status["endpoints_by_kind"] == {"http": 2}
    assert status["workers"]["each"] == [
        {"index": 0, "pid": 100, "answering": True, "sessions": 2,
         "handed_off": {"http": 0}, "handed_in": {}, "handoffs_failed": 0},
        {"index": 1, "pid": 101, "answering": True, "sessions": 1,
         "handed_off": {"http": 1}, "handed_in": {}, "handoffs_failed": 0},
    ]  # fmt: skip
    assert status["cluster"] is None


def test_a_worker_not_answering_or_not_ready_makes_the_edge_not_ready() -> None:
    status = combine_status(
        [
            (0, 100, worker(0, ["s_a"], [], ready=False, why="control plane unreachable")),
            (1, None, None),
        ]
    )
    assert not status["ready"]
    assert status["why"] == "worker 0: control plane unreachable; worker 1: not answering"
    assert status["sessions"] == 1 and [s["id"] for s in status["sessions_list"]] == ["s_a"]
    assert status["workers"]["answering"] == 1
    assert status["workers"]["each"][1] == {"index": 1, "pid": None, "answering": False}


def test_each_workers_cluster_block_under_its_index() -> None:
    status = combine_status(
        [
            (0, 100, worker(0, [], [], cluster={"node": "n-0"})),
            (1, 101, worker(1, [], [], cluster={"node": "n-1"})),
        ]
    )
    assert status["cluster"] == {"workers": {"0": {"node": "n-0"}, "1": {"node": "n-1"}}}


def test_no_worker_answering() -> None:
    status = combine_status([(0, None, None), (1, 7, None)])
    assert not status["ready"] and status["sessions"] == 0 and status["endpoints"] == []
