"""The edge's /metrics with workers (relay/metrics_sum.py): counters and histograms
summed and never going down across a worker's restart or a missed scrape; gauges summed,
or the largest or the smallest where a sum means nothing.

Each worker's exposition is made by prometheus_client itself, as a worker's is."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.metrics_sum import MetricsSum, Scrape

BUCKETS = (0.01, 0.1, 1.0)


def exposition(
    visitors: int, sessions: int, ready: int, limit: int, latencies: list[float]
) -> Scrape:
    """What a worker's /metrics would say."""
    registry = CollectorRegistry()
    Counter("relay_visitor_connections", "carried", ["kind"], registry=registry).labels("http").inc(
        visitors
    )
    Gauge("relay_agent_sessions", "now", registry=registry).set(sessions)
    Gauge("relay_ready", "ready", registry=registry).set(ready)
    Gauge("relay_agent_sessions_limit", "setting", registry=registry).set(limit)
    histogram = Histogram("relay_open_seconds", "open", buckets=BUCKETS, registry=registry)
    for latency in latencies:
        histogram.observe(latency)
    return Scrape.parse(generate_latest(registry).decode())


def values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def render(families: list) -> bytes:  # type: ignore[type-arg]
    from prometheus_client.registry import Collector

    class Fixed(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return iter(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return generate_latest(registry)


VISITORS = ("relay_visitor_connections_total", (("kind", "http"),))
SESSIONS = ("relay_agent_sessions", ())
READY = ("relay_ready", ())
LIMIT = ("relay_agent_sessions_limit", ())
COUNT = ("relay_open_seconds_count", ())

worker_state = st.tuples(
    st.integers(0, 10**9),
    st.integers(0, 10_000),
    st.integers(0, 1),
    st.sampled_from([1000, 10_000]),
    st.lists(st.floats(0, 2), max_size=20),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(worker_state, min_size=1, max_size=8))
def test_counters_and_gauges_combine_by_their_rule(workers: list[tuple]) -> None:  # type: ignore[type-arg]
    scrapes = {i: (100 + i, exposition(*w)) for i, w in enumerate(workers)}
    got = values(render(MetricsSum().combine(scrapes)))  # type: ignore[arg-type]
    assert got[VISITORS] == sum(w[0] for w in workers)
    assert got[SESSIONS] == sum(w[1] for w in workers)
    assert got[READY] == min(w[2] for w in workers)  # ready only while every worker is
    assert got[LIMIT] == max(w[3] for w in workers)  # a setting, not an amount
    assert got[COUNT] == sum(len(w[4]) for w in workers)
    for le in ("0.01", "0.1", "1.0", "+Inf"):
        bucket = ("relay_open_seconds_bucket", (("le", le),))
        assert got[bucket] == sum(
            sum(1 for x in w[4] if le == "+Inf" or x <= float(le)) for w in workers
        )


def test_one_worker_combined_alone_is_itself() -> None:
    scrape = exposition(7, 3, 1, 10_000, [0.005, 0.5, 1.5])
    alone = render(MetricsSum().combine({0: (1, scrape)}))
    original = {
        (name, labels): value
        for family in scrape.families.values()
        for (name, labels), value in family.samples.items()
    }
    assert values(alone) == original


# One round: per worker, None (missed the scrape), or (restarted?, visitors counted since
# the last round).
rounds = st.lists(
    st.lists(st.none() | st.tuples(st.booleans(), st.integers(0, 1000)), min_size=2, max_size=2),
    min_size=1,
    max_size=25,
)


@settings(max_examples=100, deadline=None)
@given(rounds)
def test_the_edges_counters_never_go_down_across_restarts_and_missed_scrapes(
    history: list[list[tuple[bool, int] | None]],
) -> None:
    summing = MetricsSum()
    generation = [1, 1]
    counted = [0, 0]  # what each worker's current process has counted
    before_restarts = 0  # what processes that are gone had counted at their last scrape
    seen_by_scrape = [0, 0]
    previous = 0.0
    for step in history:
        answers = {}
        for index, event in enumerate(step):
            if event is None:
                answers[index] = None
                continue
            restarted, more = event
            if restarted:
                # Counts since its last scrape are lost with it: a kill loses them too.
                before_restarts += seen_by_scrape[index]
                generation[index] += 1
                counted[index] = 0
            counted[index] += more
            seen_by_scrape[index] = counted[index]
            answers[index] = (generation[index], exposition(counted[index], 0, 1, 1, []))
        combined = values(render(summing.combine(answers)))  # type: ignore[arg-type]
        total = combined.get(VISITORS, 0.0)
        assert total >= previous  # Prometheus must never see a reset
        assert total == before_restarts + sum(seen_by_scrape)
        previous = total


def test_a_worker_that_misses_a_scrape_keeps_its_counters_not_its_gauges() -> None:
    summing = MetricsSum()
    summing.combine({0: (1, exposition(5, 2, 1, 10, [])), 1: (2, exposition(7, 3, 1, 10, []))})
    got = values(render(summing.combine({0: (1, exposition(6, 2, 1, 10, [])), 1: None})))
    assert got[VISITORS] == 13
    assert got[SESSIONS] == 2


def test_the_callers_own_process_metrics_are_added_in() -> None:
    own = exposition(0, 0, 1, 10, [])
    got = values(render(MetricsSum().combine({0: (1, exposition(4, 1, 1, 10, []))}, own=own)))
    assert got[VISITORS] == 4
    assert got[SESSIONS] == 1


@pytest.mark.parametrize("text", ["relay_x{ 1", '# TYPE x counter\nx_total{a="1" 2\n', "x y z"])
def test_an_exposition_that_does_not_parse_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Scrape.parse(text)
