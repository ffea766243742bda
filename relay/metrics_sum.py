"""One exposition for several processes: what each one's ``/metrics`` says, combined
(sans-IO). relay/cluster/supervisor_admin.py combines an edge's workers; for an agent's
link processes, relay/agent/link_metrics.py.

So a Prometheus job and a dashboard see one edge whatever ``--workers`` is:

* **Counters, histograms, summaries** are summed. A restarted worker counts from zero
  again: what its previous process had counted (its last scrape) is kept and added from
  then on, so an edge's counter never goes down (Prometheus would take that for a reset,
  and ``rate()`` would jump). A worker that misses a scrape counts with its last answer.
* **Gauges** are summed (sessions, endpoints, open connections, memory, descriptors),
  except the ones that are a setting shared by every worker or are not amounts:
  :data:`MAX_GAUGES` take the largest value, :data:`MIN_GAUGES` the smallest (``relay_ready``
  is 1 only while every worker is ready; the soonest certificate expiry is the soonest of
  all). A worker that misses a scrape adds no gauge.

Series are matched by name and labels; one that only some workers have is summed over
those that have it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["CUMULATIVE", "MAX_GAUGES", "MIN_GAUGES", "MetricsSum", "Scrape", "render"]

#: Families whose samples only grow while a process lives.
CUMULATIVE = frozenset({"counter", "histogram", "summary"})
#: Gauges that every worker reports alike, or whose sum means nothing: the largest.
MAX_GAUGES = frozenset(
    {
        "relay_build_info",
        "python_info",
        "relay_agent_sessions_limit",
        "relay_endpoint_series_limit",
        "relay_cluster_nodes",
        "relay_cluster_member",
        "relay_auth_sources_blocked",  # each worker blocks an abusive source itself
        "relay_link_rtt_seconds",  # p50/p90/max over links: the worst worker's
        "process_max_fds",
    }
)
#: Gauges where the edge is only as good as its worst worker: the smallest.
MIN_GAUGES = frozenset(
    {
        "relay_ready",
        "relay_cluster_redis_up",
        "relay_certificate_expiry_soonest_timestamp_seconds",
        "process_start_time_seconds",
    }
)

_SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


@dataclass
class _Family:
    name: str
    typ: str
    documentation: str
    #: Insertion-ordered: a histogram's buckets stay in ``le`` order.
    samples: dict[_SeriesKey, float] = field(default_factory=dict)


@dataclass
class Scrape:
    """One process's exposition, parsed."""

    families: dict[str, _Family]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        """Raises ValueError when ``text`` is not the Prometheus text format."""
        families: dict[str, _Family] = {}
        for metric in text_string_to_metric_families(text):
            family = families.get(metric.name)
            if family is None:
                family = families[metric.name] = _Family(
                    metric.name, metric.type, metric.documentation
                )
            for sample in metric.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                family.samples[key] = float(sample.value)
        return cls(families)


@dataclass
class _Worker:
    generation: int
    last: Scrape


class MetricsSum:
    """Combines the workers' scrapes, remembering what restarted workers had counted."""

    def __init__(
        self, *, largest: frozenset[str] = MAX_GAUGES, smallest: frozenset[str] = MIN_GAUGES
    ) -> None:
        """``largest`` and ``smallest``: the gauges that take the largest or smallest
        value instead of the sum (the edge's by default)."""
        self._workers: dict[int, _Worker] = {}
        #: Cumulative samples of worker processes that are gone, summed.
        self._retired: dict[str, _Family] = {}
        self._largest = largest
        self._smallest = smallest

    def combine(
        self, answers: dict[int, tuple[int, Scrape] | None], *, own: Scrape | None = None
    ) -> list[Metric]:
        """The edge's families from this round's ``answers``: worker index -> (its process
        id, or any number that changes when it restarts; its scrape), or None when it did
        not answer. ``own``: the caller's own process metrics, added like a worker's."""
        live: list[Scrape] = [] if own is None else [own]
        for index, answer in answers.items():
            if answer is None:
                continue
            generation, scrape = answer
            known = self._workers.get(index)
            if known is not None and known.generation != generation:
                self._retire(known.last)
            self._workers[index] = _Worker(generation, scrape)
            live.append(scrape)
        # Workers that did not answer: their counters as last seen, no gauges.
        stale = [w.last for i, w in self._workers.items() if i in answers and answers[i] is None]
        return list(self._merge(live, stale))

    def _retire(self, scrape: Scrape) -> None:
        for family in scrape.families.values():
            if family.typ not in CUMULATIVE:
                continue
            kept = self._retired.get(family.name)
            if kept is None:
                kept = self._retired[family.name] = _Family(
                    family.name, family.typ, family.documentation
                )
            for key, value in family.samples.items():
                kept.samples[key] = kept.samples.get(key, 0.0) + value

    def _merge(self, live: list[Scrape], stale: list[Scrape]) -> Iterator[Metric]:
        merged: dict[str, _Family] = {}
        for scrape in live:
            for family in scrape.families.values():
                self._add(merged, family)
        for scrape in stale:
            for family in scrape.families.values():
                if family.typ in CUMULATIVE:
                    self._add(merged, family)
        for family in self._retired.values():
            self._add(merged, family)
        for family in merged.values():
            metric = Metric(family.name, family.documentation, family.typ)
            for (sample_name, labels), value in family.samples.items():
                metric.add_sample(sample_name, dict(labels), value)
            yield metric

    def _add(self, merged: dict[str, _Family], family: _Family) -> None:
        into = merged.get(family.name)
        if into is None:
            into = merged[family.name] = _Family(family.name, family.typ, family.documentation)
        if family.typ in CUMULATIVE or (
            family.name not in self._largest and family.name not in self._smallest
        ):
            for key, value in family.samples.items():
                into.samples[key] = into.samples.get(key, 0.0) + value
            return
        pick = max if family.name in self._largest else min
        for key, value in family.samples.items():
            now = into.samples.get(key)
            into.samples[key] = value if now is None else pick(now, value)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def render(families: Iterable[Metric]) -> bytes:
    """The Prometheus text exposition of ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families)))
    return generate_latest(registry)
