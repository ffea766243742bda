"""Prometheus metrics of an edge or an agent: the names, one registry per process, and the
collectors that read compiled counters when Prometheus scrapes.

Conventions: the ``relay_`` prefix, base units (``_seconds``, ``_bytes``), ``_total`` on
counters, and bounded labels only (kind, direction, reason, code, outcome, listener):
never a host name, a token or an address. What happens per connection, per request head
or per session is counted by the Python that already runs there; what happens per byte
or per frame is counted in compiled code (``relay._fastpath.traffic()``, each native
session's ``stats()``) and only read here, at scrape time.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from relay import __version__, _fastpath

#: Endpoint kinds, the ``kind`` label's values.
KINDS: tuple[str, ...] = _fastpath.KINDS
#: Native session counters exported, with their metric name and direction label.
MUX_COUNTERS: dict[str, tuple[str, str]] = {
    "frames_in": ("relay_mux_frames", "in"),
    "frames_out": ("relay_mux_frames", "out"),
    "goaways_in": ("relay_mux_goaways", "in"),
    "goaways_out": ("relay_mux_goaways", "out"),
    "streams_refused": ("relay_mux_streams_refused", ""),
    "window_stalls": ("relay_mux_window_stalls", ""),
    "protocol_errors": ("relay_mux_protocol_errors", ""),
}
MUX_HELP = {
    "relay_mux_frames": "yamux frames, by direction",
    "relay_mux_goaways": "yamux GoAway frames, by direction",
    "relay_mux_streams_refused": "streams the peer opened that were refused with RST",
    "relay_mux_window_stalls": "times a stream had data to send and no send window",
    "relay_mux_protocol_errors": "sessions ended by a protocol violation of the peer",
}


class MuxTotals:
    """Native session counters of sessions that ended, so that totals never go down when
    a session (and its counters) goes away."""

    def __init__(self) -> None:
        self.retired: dict[str, int] = dict.fromkeys(MUX_COUNTERS, 0)

    def retire(self, stats: Mapping[str, int]) -> None:
        for key in self.retired:
            self.retired[key] += int(stats.get(key, 0))

    def totals(self, live: Iterable[Mapping[str, int]]) -> dict[str, int]:
        out = dict(self.retired)
        for stats in live:
            for key in out:
                out[key] += int(stats.get(key, 0))
        return out


class ByteTrafficCollector(Collector):
    """The byte path's counters (``relay._fastpath.traffic()``) as metrics. ``role``
    decides what "in" means: towards the upstream (from the visitor at the edge, to the
    upstream at the agent)."""

    def __init__(self, role: str) -> None:
        self.role = role

    def collect(self) -> Iterator[Metric]:
        counts = _fastpath.traffic()
        inbound, outbound = (
            (counts["from_socket"], counts["to_socket"])
            if self.role == "edge"
            else (counts["to_socket"], counts["from_socket"])
        )
        traffic = CounterMetricFamily(
            "relay_visitor_bytes",
            "visitor payload bytes, by endpoint kind and direction (in: visitor to upstream)",
            labels=["kind", "direction"],
        )
        for i, kind in enumerate(KINDS):
            traffic.add_metric([kind, "in"], inbound[i])
            traffic.add_metric([kind, "out"], outbound[i])
        yield traffic
        opened = CounterMetricFamily(
            "relay_visitor_connections",
            "visitor connections carried, by endpoint kind",
            labels=["kind"],
        )
        live = GaugeMetricFamily(
            "relay_visitor_connections_active",
            "visitor connections open now, by endpoint kind",
            labels=["kind"],
        )
        for i, kind in enumerate(KINDS):
            opened.add_metric([kind], counts["opened"][i])
            live.add_metric([kind], counts["live"][i])
        yield opened
        yield live
        if self.role == "edge":
            yield _open_latency(counts["open_buckets"], counts["open_sum"])


def _open_latency(buckets: list[int], total: float) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "relay_stream_open_seconds",
        "from a visitor's accept to the first byte back from the upstream",
    )
    family.add_metric([], cumulative_buckets(_fastpath.OPEN_BUCKETS, buckets), sum_value=total)
    return family


def cumulative_buckets(bounds: Iterable[float], counts: list[int]) -> list[tuple[str, int]]:
    """Prometheus histogram buckets (cumulative, ``le`` labels, +Inf last) from the
    per-bucket counts compiled code keeps (one more count than bounds: the +Inf one)."""
    out = []
    running = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return out


class SessionsCollector(Collector):
    """What the process's live sessions say at scrape time: how many, their streams, their
    native counters (plus those of ended sessions), and their links' round-trip times.
    ``sessions()`` returns the live native sessions; ``retired`` keeps the ended ones'."""

    def __init__(self, sessions: Callable[[], list[Any]], retired: MuxTotals) -> None:
        self.sessions = sessions
        self.retired = retired

    def collect(self) -> Iterator[Metric]:
        sessions = self.sessions()
        stats = [s.stats() for s in sessions]
        streams = GaugeMetricFamily(
            "relay_streams_open", "visitor streams open now (control streams not counted)"
        )
        streams.add_metric([], sum(max(0, int(s.stream_count) - 1) for s in sessions))
        yield streams
        totals = self.retired.totals(stats)
        families: dict[str, CounterMetricFamily] = {}
        for key, (name, direction) in MUX_COUNTERS.items():
            labels = ["direction"] if direction else []
            family = families.get(name)
            if family is None:
                family = families[name] = CounterMetricFamily(name, MUX_HELP[name], labels=labels)
            family.add_metric([direction] if direction else [], totals[key])
        yield from families.values()
        rtts = sorted(int(s.rtt_us) / 1e6 for s in sessions if int(s.rtt_us))
        rtt = GaugeMetricFamily(
            "relay_link_rtt_seconds",
            "smoothed round-trip time of the agent links now, over links: p50, p90, max "
            "(the label is not 'quantile': Prometheus keeps that for summaries)",
            labels=["stat"],
        )
        if rtts:
            rtt.add_metric(["p50"], statistics.median(rtts))
            rtt.add_metric(["p90"], rtts[min(len(rtts) - 1, int(len(rtts) * 0.9))])
            rtt.add_metric(["max"], rtts[-1])
        yield rtt


class Metrics:
    """The registry of one process and the counters its Python code increments."""

    def __init__(self, role: str, *, region: str = "") -> None:
        # ``*_created`` series double every counter for a start time Prometheus does not
        # need (it sees resets by itself).
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        self.role = role
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.mux = MuxTotals()
        self.registry.register(ByteTrafficCollector(role))
        self.registry.register(_InfoCollector(role, region))

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, documentation, labelnames=labels, registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _InfoCollector(Collector):
    def __init__(self, role: str, region: str) -> None:
        self.role = role
        self.region = region

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "relay_build_info",
            "1, labelled with the version, the role of the process and the region",
            labels=["version", "role", "region"],
        )
        info.add_metric([__version__, self.role, self.region], 1)
        yield info
