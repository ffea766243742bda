"""The edge's metrics: the counters its Python increments per session, per connection and
per request head, and a collector for what is read off the edge's state at scrape time.
Names and conventions: relay/metrics.py; what each is for: docs/metrics.md."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from relay import _exchanges, _fastpath
from relay.edge.session import AUTH_FAILURE_REASONS
from relay.metrics import KINDS, Metrics, SessionsCollector, cumulative_buckets

#: Kinds an endpoint can be (the traffic counters' KINDS end with the inter-node "cluster").
ENDPOINT_KINDS = ("tcp", "http", "https", "tls")

#: The label values each counter starts with (others appear when they happen).
SESSION_END_REASONS = (
    "closed",
    "drained",
    "protocol_error",
    "keepalive_timeout",
    "link_error",
    "revoked",
    "expired",
    "superseded",
)
AUTH_REASONS = (*AUTH_FAILURE_REASONS.values(), "timeout", "protocol")
BIND_CODES = (
    "RLY_201",
    "RLY_202",
    "RLY_203",
    "RLY_204",
    "RLY_205",
    "RLY_206",
    "RLY_207",
    "RLY_208",
    "RLY_806",
)
PAGE_CODES = (
    "RLY_610",
    "RLY_611",
    "RLY_612",
    "RLY_613",
    "RLY_614",
    "RLY_615",
    "RLY_616",
    "RLY_620",
    "RLY_622",
    "RLY_623",
    "RLY_624",
    "RLY_625",
    "RLY_626",
    "RLY_627",
    "RLY_628",
    "RLY_629",
    "RLY_630",
    "RLY_631",
)

#: relay_http_requests_total's code_class label, by the index of _exchanges' counts.
CODE_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")

if TYPE_CHECKING:
    from relay.edge.endpoint_series import EndpointSeries
    from relay.edge.server import Edge


class EdgeMetrics(Metrics):
    def __init__(self, edge: Edge) -> None:
        super().__init__("edge", region=edge.config.region)
        self.sessions_opened = self.counter(
            "relay_agent_sessions_opened", "agent sessions that authenticated"
        )
        self.sessions_closed = self.counter(
            "relay_agent_sessions_closed",
            "authenticated agent sessions that ended, by reason",
            ("reason",),
        )
        self.links_refused = self.counter(
            "relay_agent_links_refused",
            "agent links closed at once, by reason (full: max_sessions; account_full: "
            "max_sessions_per_account, after its auth; draining; "
            "source_blocked: too many failed authentications from its source)",
            ("reason",),
        )
        self.auth_failures = self.counter(
            "relay_auth_failures", "failed agent authentications, by reason", ("reason",)
        )
        self.auth_blocks = self.counter(
            "relay_auth_source_blocks",
            "sources refused for auth_block_time after auth_failure_limit failed "
            "authentications within auth_failure_window",
        )
        self.binds_refused = self.counter(
            "relay_binds_refused", "binds refused, by RLY code", ("code",)
        )
        self.bind_refusals_unaudited = self.counter(
            "relay_bind_refusals_unaudited",
            "refused binds past their token's budget (60 at once, then 1 a second): "
            "answered, neither logged nor audited",
        )
        self.control_paced = self.counter(
            "relay_control_messages_paced",
            "agent binds and unbinds that waited for their session's pace (128 at once, "
            "then 20 a second) or their account's (2 x max_endpoints_per_account at once, "
            "then 200 a second)",
        )
        self.visitors_refused = self.counter(
            "relay_visitor_connections_refused",
            "visitor connections turned away before reaching an agent, by kind and reason",
            ("kind", "reason"),
        )
        self.error_pages = self.counter(
            "relay_error_pages", "error pages the edge sent visitors, by RLY code", ("code",)
        )
        self.tls_handshakes = self.counter(
            "relay_tls_handshakes",
            "TLS handshakes the edge ran, by listener and outcome",
            ("listener", "outcome"),
        )
        self.certificates = self.counter(
            "relay_certificates",
            "certificate issuance and renewal attempts, by issuer and outcome",
            ("issuer", "outcome"),
        )
        # Every known label value appears from the first scrape, at 0: a series born with
        # its first event would hide that event from rate().
        for reason in SESSION_END_REASONS:
            self.sessions_closed.labels(reason)
        for reason in ("full", "account_full", "draining", "source_blocked"):
            self.links_refused.labels(reason)
        for reason in AUTH_REASONS:
            self.auth_failures.labels(reason)
        for code in BIND_CODES:
            self.binds_refused.labels(code)
        for kind, reason in (("tcp", "no_agent"), ("tls", "unknown_name"), ("tls", "other_region")):
            self.visitors_refused.labels(kind, reason)
        for code in PAGE_CODES:
            self.error_pages.labels(code)
        for listener in ("agent", "https"):
            for outcome in ("ok", "failed"):
                self.tls_handshakes.labels(listener, outcome)
        for outcome in ("issued", "failed", "deferred"):
            self.certificates.labels(edge.config.cert_issuer, outcome)
        self.register(SessionsCollector(lambda: _live_native_sessions(edge), self.mux))
        self.register(_EdgeStateCollector(edge))
        self.register(_HttpExchangesCollector())
        self.register(_EndpointSeriesCollector(edge.endpoint_series))


def _live_native_sessions(edge: Edge) -> list[object]:
    return [s.link.session for s in edge.sessions if s.link is not None and not s.link.closed]


class _EdgeStateCollector(Collector):
    """Sessions, endpoints, limits and readiness, read off the edge when scraped."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    def collect(self) -> Iterator[Metric]:
        edge = self.edge
        sessions = GaugeMetricFamily("relay_agent_sessions", "authenticated agent sessions now")
        sessions.add_metric([], sum(1 for s in edge.sessions if s.authenticated))
        yield sessions
        limit = GaugeMetricFamily("relay_agent_sessions_limit", "max_sessions of this edge")
        limit.add_metric([], edge.config.max_sessions)
        yield limit
        by_kind = Tally(getattr(e, "kind", "tcp") for e in edge.endpoints.values())
        endpoints = GaugeMetricFamily(
            "relay_endpoints", "endpoints bound now, by kind", labels=["kind"]
        )
        for kind in ENDPOINT_KINDS:
            endpoints.add_metric([kind], by_kind.get(kind, 0))
        yield endpoints
        blocked = GaugeMetricFamily(
            "relay_auth_sources_blocked", "sources whose agent links are refused now"
        )
        blocked.add_metric([], edge.auth_guard.blocked_sources())
        yield blocked
        yield from _handoffs(edge)
        yield from _cluster(edge)
        ready = GaugeMetricFamily(
            "relay_ready", "1 while the edge serves (listeners bound, store reachable, no drain)"
        )
        ready.add_metric([], 1 if edge.ready() else 0)
        yield ready
        expiry = edge.certificate_expiry()
        if expiry is not None:  # no series while the edge holds no certificate
            soonest = GaugeMetricFamily(
                "relay_certificate_expiry_soonest_timestamp_seconds",
                "when the first of the edge's https certificates expires (Unix time)",
            )
            soonest.add_metric([], expiry)
            yield soonest
        certs = edge.web.certs if edge.web is not None else None
        held = GaugeMetricFamily(
            "relay_certificates_held",
            "certificates the edge holds in memory: of names bound or stored (named), made "
            "for names visitors picked under wildcard endpoints (on_demand)",
            labels=["held"],
        )
        named, on_demand = certs.held() if certs is not None else (0, 0)
        held.add_metric(["named"], named)
        held.add_metric(["on_demand"], on_demand)
        yield held


def _handoffs(edge: Edge) -> Iterator[Metric]:
    """Visitors handed between the workers of one edge (0 without workers)."""
    worker = edge.worker
    handoffs = CounterMetricFamily(
        "relay_worker_handoffs",
        "visitors handed to (out) or from (in) another worker of this edge, by front",
        labels=["front", "direction"],
    )
    for front in ("http", "tls", "tcp"):
        handoffs.add_metric([front, "out"], worker.handed_off[front] if worker else 0)
        handoffs.add_metric([front, "in"], worker.handed_in[front] if worker else 0)
    yield handoffs
    failed = CounterMetricFamily(
        "relay_worker_handoffs_failed",
        "visitors that could not be handed to the worker holding their endpoint",
    )
    failed.add_metric([], worker.handoffs_failed if worker else 0)
    yield failed


def _cluster(edge: Edge) -> Iterator[Metric]:
    """This node's part in a cluster (relay/edge/cluster.py; 0 on an edge of its own)."""
    links = edge.cluster.links if edge.cluster is not None else None
    presence = edge.cluster.presence if edge.cluster is not None else None
    carried = CounterMetricFamily(
        "relay_cluster_visitors",
        "visitors carried to (out) or from (in) another node of the cluster",
        labels=["direction"],
    )
    carried.add_metric(["out"], links.forwarded if links else 0)
    carried.add_metric(["in"], links.received if links else 0)
    yield carried
    yield _one(
        CounterMetricFamily,
        "relay_cluster_forward_failures",
        "visitors that could not be carried to the node holding their name",
        links.failures if links else 0,
    )
    yield _one(
        GaugeMetricFamily,
        "relay_cluster_nodes",
        "other live nodes this node knows of",
        len(presence.nodes()) if presence else 0,
    )
    yield _one(
        GaugeMetricFamily,
        "relay_cluster_redis_up",
        "1 while the cluster's Redis answers (0: no cluster, or down)",
        1 if presence is not None and presence.connected else 0,
    )
    yield _one(
        CounterMetricFamily,
        "relay_cluster_node_id_conflicts",
        "writes of this node's presence key that found another live process had written it "
        "since: two PoPs given one node id",
        presence.node_id_conflicts if presence else 0,
    )
    yield _one(
        GaugeMetricFamily,
        "relay_cluster_member",
        "1 when this edge is a node of a cluster (--cluster-redis)",
        1 if edge.cluster is not None else 0,
    )
    up = links.status() if links is not None else None
    node_links = GaugeMetricFamily(
        "relay_cluster_links",
        "links between nodes up now: dialled by this node (out) or by another (in)",
        labels=["direction"],
    )
    node_links.add_metric(["out"], len(up["links_out"]) if up else 0)
    node_links.add_metric(["in"], up["links_in"] if up else 0)
    yield node_links
    yield _one(
        CounterMetricFamily,
        "relay_cluster_link_refusals",
        "connections to the node-link port whose TLS handshake failed (no certificate of "
        "this cluster's CA, an expired one, not TLS)",
        links.refused if links else 0,
    )


def _one(
    family: type[CounterMetricFamily | GaugeMetricFamily], name: str, doc: str, value: float
) -> Metric:
    """A family of one sample without labels."""
    metric = family(name, doc)
    metric.add_metric([], value)
    return metric


class _HttpExchangesCollector(Collector):
    """HTTP requests by status class and their durations, counted in C by
    relay/_exchanges.pyx as responses pass, read here at scrape time."""

    def collect(self) -> Iterator[Metric]:
        counts = _exchanges.http_counts()
        requests = CounterMetricFamily(
            "relay_http_requests",
            "HTTP requests answered through a tunnel, by kind and the status class of the "
            "answer ('none': the connection ended before a status)",
            labels=["kind", "code_class"],
        )
        durations = HistogramMetricFamily(
            "relay_http_request_duration_seconds",
            "from a request head forwarded to the last byte of its answer",
            labels=["kind"],
        )
        for k, kind in enumerate(KINDS):
            if kind not in ("http", "https"):
                continue
            for c, code_class in enumerate(CODE_CLASSES):
                requests.add_metric([kind, code_class], counts["classes"][k][c])
            durations.add_metric(
                [kind],
                cumulative_buckets(_exchanges.DURATION_BUCKETS, counts["buckets"][k]),
                sum_value=counts["sum"][k],
            )
        yield requests
        yield durations
        dropped = CounterMetricFamily(
            "relay_access_log_dropped",
            "access log records dropped because the log could not keep up",
        )
        dropped.add_metric([], counts["dropped"])
        yield dropped


class _EndpointSeriesCollector(Collector):
    """The opt-in per-endpoint series (relay/edge/endpoint_series.py): the byte path's
    slot counters, labelled with the endpoint's URL, read at scrape time."""

    def __init__(self, series: EndpointSeries) -> None:
        self.series = series

    def collect(self) -> Iterator[Metric]:
        series = self.series
        limit = GaugeMetricFamily(
            "relay_endpoint_series_limit",
            "endpoints that may have series of their own (metrics_endpoint_labels)",
        )
        limit.add_metric([], series.limit)
        yield limit
        refused = CounterMetricFamily(
            "relay_endpoint_series_refused",
            "binds of an endpoint that got no series of its own: the limit was reached",
        )
        refused.add_metric([], series.refused)
        yield refused
        names, kinds = list(series.names), list(series.kinds)
        if not names:
            return
        traffic = _fastpath.endpoint_traffic(len(names))
        classes = _exchanges.endpoint_http_counts(len(names))
        data = CounterMetricFamily(
            "relay_endpoint_visitor_bytes",
            "visitor payload bytes of one endpoint, by direction (in: visitor to upstream)",
            labels=["endpoint", "kind", "direction"],
        )
        opened = CounterMetricFamily(
            "relay_endpoint_visitor_connections",
            "visitor connections carried to one endpoint",
            labels=["endpoint", "kind"],
        )
        live = GaugeMetricFamily(
            "relay_endpoint_visitor_connections_active",
            "visitor connections of one endpoint open now",
            labels=["endpoint", "kind"],
        )
        requests = CounterMetricFamily(
            "relay_endpoint_http_requests",
            "HTTP requests of one endpoint, by the status class of the answer",
            labels=["endpoint", "kind", "code_class"],
        )
        for i, (name, kind) in enumerate(zip(names, kinds, strict=True)):
            data.add_metric([name, kind, "in"], traffic["from_socket"][i])
            data.add_metric([name, kind, "out"], traffic["to_socket"][i])
            opened.add_metric([name, kind], traffic["opened"][i])
            live.add_metric([name, kind], traffic["live"][i])
            if kind in ("http", "https"):
                for c, code_class in enumerate(CODE_CLASSES):
                    requests.add_metric([name, kind, code_class], classes[i][c])
        yield data
        yield opened
        yield live
        yield requests
