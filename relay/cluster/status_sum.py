"""The edge's ``/status`` with workers: every worker's ``/status``, seen as one edge.

Sans-IO: the supervisor's admin listener (relay/cluster/supervisor_admin.py) reads each
worker's ``/status`` and hands the answers here. The result has the keys of one
process's ``/status`` (so ``relay status`` and scripts read it the same way), with the
workers' figures combined:

* ``ready`` only while every worker answers and is ready; ``why`` names the others;
* ``sessions`` and ``sessions_limit`` summed (each worker admits up to its limit);
* ``sessions_list``: every worker's sessions, each with its ``worker``;
* ``endpoints``: each URL once, with the ``workers`` that hold it (an agent's links on
  several workers bind the same names), and ``endpoints_by_kind`` counted from those;
* ``worker`` is None; ``workers``: ``count``, ``answering``, and per worker its pid,
  sessions and handoff counters (a worker's own table of the others' names stays on
  its own listener, admin port + 1 + index);
* ``cluster``: each worker is a node of the cluster of its own, so ``{"workers":
  {index: that worker's block}}``, or None without a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Per worker in ``workers.each``: what its own ``workers`` block says of it.
_PER_WORKER = ("handed_off", "handed_in", "handoffs_failed")

#: One worker: its index, its pid (None: not running) and its /status (None: no answer).
Answer = tuple[int, int | None, dict[str, Any] | None]


def combine_status(answers: Sequence[Answer]) -> dict[str, Any]:
    """``answers``: (index, pid or None when not running, its /status or None when it
    did not answer) for every worker, in index order."""
    live = [(index, status) for index, _, status in answers if status is not None]
    first = live[0][1] if live else {}
    why: list[str] = []
    sessions: list[dict[str, Any]] = []
    endpoints: dict[str, dict[str, Any]] = {}
    each: list[dict[str, Any]] = []
    clusters: dict[str, Any] = {}
    for index, pid, status in answers:
        row: dict[str, Any] = {"index": index, "pid": pid, "answering": status is not None}
        each.append(row)
        if status is None:
            why.append(f"worker {index}: not answering")
            continue
        if not status.get("ready"):
            why.append(f"worker {index}: {status.get('why') or 'not ready'}")
        row["sessions"] = int(status.get("sessions", 0))
        own = status.get("workers") or {}
        row.update({key: own[key] for key in _PER_WORKER if key in own})
        sessions += [{**s, "worker": index} for s in status.get("sessions_list", [])]
        for endpoint in status.get("endpoints", []):
            url = str(endpoint.get("url"))
            seen = endpoints.setdefault(url, {**endpoint, "workers": []})
            seen["workers"].append(index)
            if seen.get("session") is None:
                seen["session"] = endpoint.get("session")
        if status.get("cluster") is not None:
            clusters[str(index)] = status["cluster"]
    by_kind: dict[str, int] = {}
    for endpoint in endpoints.values():
        kind = str(endpoint.get("kind"))
        by_kind[kind] = by_kind.get(kind, 0) + 1
    return {
        "role": "edge",
        "version": first.get("version"),
        "region": first.get("region"),
        "worker": None,
        "ready": not why,
        "why": "; ".join(why),
        "sessions": sum(int(s.get("sessions", 0)) for _, s in live),
        "sessions_limit": sum(int(s.get("sessions_limit", 0)) for _, s in live),
        "endpoints_by_kind": by_kind,
        "sessions_list": sorted(sessions, key=lambda s: str(s.get("id"))),
        "workers": {"count": len(answers), "answering": len(live), "each": each},
        "cluster": {"workers": clusters} if clusters else None,
        "endpoints": [endpoints[url] for url in sorted(endpoints)],
    }
