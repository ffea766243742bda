"""What a worker keeps of the names other workers hold (relay/edge/worker.py): one small
entry per name, found by the routes, changed in place, gone when the name is. Every
worker keeps one per name each other worker holds, so its size is what an agent session
costs again per extra worker (bench: sessions at 8 workers against one)."""

from __future__ import annotations

import gc
import json
import tracemalloc
from types import SimpleNamespace
from typing import Any

from relay.edge.routes import HostRoutes
from relay.edge.worker import EdgeWorker

#: Bytes per name a worker may keep for another worker's name (measured: 160 with
#: CPython 3.11; a key string, a copy of "http" or a tuple per name would each add 50+).
MAX_BYTES_PER_NAME = 200


def worker(index: int = 1, count: int = 8) -> EdgeWorker:
    """A worker's table alone: not started, no supervisor."""
    place = SimpleNamespace(index=index, count=count, channel_fd=-1, run_dir=None)
    edge = SimpleNamespace(http_routes=HostRoutes())
    return EdgeWorker(edge, place)  # type: ignore[arg-type]


def where(w: EdgeWorker, key: str, workers: list[int]) -> None:
    # As the channel gives it: decoded from JSON, every string new.
    message: dict[str, Any] = json.loads(
        json.dumps({"op": "where", "key": key, "workers": workers})
    )
    w._message(message)


def test_a_name_held_elsewhere_costs_a_worker_at_most_its_budget() -> None:
    w = worker()
    count = 20_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            where(w, f"http:session{i:06d}.relay.localhost", [i % 7 + 2 if i % 3 else 0])
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(w.remote_http) == count
    assert grown / count <= MAX_BYTES_PER_NAME, grown / count


def test_a_name_moves_between_workers_in_place_and_leaves_when_gone() -> None:
    w = worker()
    where(w, "http:app.relay.localhost", [0])
    where(w, "sni:*.wild.relay.localhost", [2, 3])
    first = w.remote_http.lookup("app.relay.localhost")
    assert first is not None and first.workers == (0,) and first.key == "http:app.relay.localhost"
    assert w.remote_sni.lookup("x.wild.relay.localhost").workers == (2, 3)  # type: ignore[union-attr]
    where(w, "http:app.relay.localhost", [2, 3])
    assert w.remote_http.lookup("app.relay.localhost") is first and first.workers == (2, 3)
    # Every name held by the same workers shares one tuple.
    assert first.workers is w.remote_sni.get("*.wild.relay.localhost").workers  # type: ignore[union-attr]
    assert w.status()["elsewhere"] == {
        "http:app.relay.localhost": [2, 3],
        "sni:*.wild.relay.localhost": [2, 3],
    }
    where(w, "http:app.relay.localhost", [])
    where(w, "sni:*.wild.relay.localhost", [])
    assert len(w.remote_http) == len(w.remote_sni) == 0
    assert w.status()["elsewhere"] == {}
    where(w, "http:app.relay.localhost", [])  # a name that was never here: nothing
    assert len(w.remote_http) == 0
