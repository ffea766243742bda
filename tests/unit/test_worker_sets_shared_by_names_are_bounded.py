"""The sets of workers a worker shares among the names other workers hold
(relay/edge/worker.py ``_worker_sets``) are at most MAX_WORKER_SETS: every distinct set
the supervisor ever named used to stay. Past the limit the cache starts again; names
already held keep their workers, and names held by one set still share one tuple."""

from __future__ import annotations

import itertools

from relay.config import MAX_WORKERS
from relay.edge.worker import MAX_WORKER_SETS, EdgeWorker
from tests.unit.test_worker_table_of_other_names import where
from tests.unit.test_worker_table_of_other_names import worker as worker_of


def worker() -> EdgeWorker:
    return worker_of(index=0, count=MAX_WORKERS)


def test_distinct_sets_of_workers_past_the_limit_are_not_all_kept() -> None:
    w = worker()
    pairs = itertools.combinations(range(1, MAX_WORKERS), 2)
    held: dict[str, tuple[int, ...]] = {}
    for i, pair in zip(range(3 * MAX_WORKER_SETS), pairs, strict=False):
        hostname = f"n{i}.relay.localhost"
        where(w, f"http:{hostname}", list(pair))
        held[hostname] = pair
        assert len(w._worker_sets) <= MAX_WORKER_SETS
    # Every name kept its own workers through the restarts of the cache.
    assert len(w.remote_http) == len(held)
    for hostname, workers in held.items():
        found = w.remote_http.lookup(hostname)
        assert found is not None and found.workers == workers


def test_names_held_by_one_set_share_its_tuple_after_the_cache_starts_again() -> None:
    w = worker()
    for i in range(MAX_WORKER_SETS + 1):
        where(w, f"tcp:{10000 + i}", [1, i + 2])
    assert len(w._worker_sets) == 1  # started again at the set past the limit
    where(w, "http:a.relay.localhost", [3, 4])
    where(w, "sni:b.relay.localhost", [3, 4])
    a = w.remote_http.lookup("a.relay.localhost")
    b = w.remote_sni.lookup("b.relay.localhost")
    assert a is not None and b is not None and a.workers is b.workers
    # A set already kept never starts the cache again, even at the limit.
    for i in range(MAX_WORKER_SETS - 2):  # with (1, 1026) and (3, 4): full
        where(w, f"tcp:{20000 + i}", [5, i + 6])
    assert len(w._worker_sets) == MAX_WORKER_SETS
    where(w, "http:c.relay.localhost", [3, 4])
    assert len(w._worker_sets) == MAX_WORKER_SETS
