"""Per-endpoint metric series, opted into with a cap: each endpoint with a series counts
its own bytes (to the byte, HTTP heads included), connections and answers; an endpoint
past the cap is only in the per-kind totals; and docs/metrics.md names exactly the
families an edge exports."""

from __future__ import annotations

import re
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.e2e.http_helpers import host_of, web_agent
from tests.e2e.origin import Origin
from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, payload
from tests.e2e.test_access_log_and_request_metrics import exchange
from tests.e2e.test_admin_listener import get, sample

METRICS_PAGE = Path(__file__).parents[2] / "docs" / "metrics.md"


def settled(edge: Edge, name: str, want: float, timeout: float = 5.0, **labels: str) -> str:
    """The exposition once sample ``name{labels}`` reads ``want`` (a closed connection is
    counted when the edge has seen the close)."""
    deadline = time.monotonic() + timeout
    while True:
        _, text = get(edge, "/metrics")
        if sample(text, name, **labels) == want or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_each_endpoint_counts_its_own_traffic_up_to_the_cap(
    tmp_path: Path, origin: Origin, echo: EchoServer, agents: list[Agent]
) -> None:
    edge = Edge(tmp_path / "edge", extra=["--metrics-endpoint-labels", "3"]).start()
    try:
        _, token = edge.token()
        tcp = Agent(edge, token, echo.port)
        agents.append(tcp)
        tcp_port = tcp.wait_bound()
        secure_web = web_agent(edge, agents, str(origin.port))
        https_url = secure_web.url
        plain_web = web_agent(edge, agents, str(origin.port), "--no-https")
        http_url = plain_web.url
        late = Agent(edge, token, echo.port)  # the fourth endpoint: past the cap
        agents.append(late)
        late_port = late.wait_bound()

        data = payload(7, 200_001)
        assert echo_roundtrip(tcp_port, data) == data
        late_data = payload(8, 50_000)
        assert echo_roundtrip(late_port, late_data) == late_data

        host = host_of(plain_web).encode()
        plain = [
            b"GET /hello HTTP/1.1\r\nHost: %b:%d\r\n\r\n" % (host, edge.http_port),
            b"GET /status/404 HTTP/1.1\r\nHost: %b:%d\r\n\r\n" % (host, edge.http_port),
        ]
        host = host_of(secure_web).encode()
        with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
            plain_answers = [exchange(sock, request) for request in plain]
        secure = [
            b"GET /blob/70000 HTTP/1.1\r\nHost: %b\r\n\r\n" % host,
            b"POST /sink HTTP/1.1\r\nHost: %b\r\ncontent-length: 5\r\n\r\nabcde" % host,
            b"GET /status/503 HTTP/1.1\r\nHost: %b\r\n\r\n" % host,
        ]
        context = ssl.create_default_context(cafile=str(edge.ca_file))
        with (
            socket.create_connection(("127.0.0.1", edge.https_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=host.decode()) as sock,
        ):
            secure_answers = [exchange(sock, request) for request in secure]  # type: ignore[arg-type]
        assert [a.split(b" ", 2)[1] for a in secure_answers] == [b"200", b"200", b"503"]

        tcp_url = f"tcp://127.0.0.1:{tcp_port}"
        text = settled(
            edge, "relay_endpoint_visitor_connections_active", 0, endpoint=https_url, kind="https"
        )
        text = settled(edge, "relay_endpoint_visitor_connections_active", 0, endpoint=tcp_url,
                       kind="tcp")  # fmt: skip
        for url, kind, sent, received in (
            (tcp_url, "tcp", len(data), len(data)),
            (http_url, "http", sum(map(len, plain)), sum(map(len, plain_answers))),
            (https_url, "https", sum(map(len, secure)), sum(map(len, secure_answers))),
        ):
            labels = {"endpoint": url, "kind": kind}
            assert sample(text, "relay_endpoint_visitor_bytes_total", **labels,
                          direction="in") == sent, url  # fmt: skip
            assert sample(text, "relay_endpoint_visitor_bytes_total", **labels,
                          direction="out") == received, url  # fmt: skip
            assert sample(text, "relay_endpoint_visitor_connections_total", **labels) == 1
            assert sample(text, "relay_endpoint_visitor_connections_active", **labels) == 0
        for url, kind, classes in (
            (http_url, "http", {"2xx": 1, "4xx": 1}),
            (https_url, "https", {"2xx": 2, "5xx": 1}),
        ):
            for code_class in ("none", "1xx", "2xx", "3xx", "4xx", "5xx"):
                got = sample(
                    text,
                    "relay_endpoint_http_requests_total",
                    endpoint=url,
                    kind=kind,
                    code_class=code_class,
                )
                assert got == classes.get(code_class, 0), (url, code_class)
        # The fourth endpoint has no series of its own, yet is in the per-kind totals.
        assert f"tcp://127.0.0.1:{late_port}" not in text
        assert sample(text, "relay_endpoint_series_refused_total") == 1
        assert sample(text, "relay_endpoint_series_limit") == 3
        assert sample(text, "relay_visitor_bytes_total", kind="tcp", direction="in") == len(
            data
        ) + len(late_data)
        assert_metrics_page_names_exactly(text)
    finally:
        edge.stop()


#: Families only the supervisor of an edge with workers exports (at its admin listener;
#: tests/e2e/test_edge_metrics_with_workers.py checks them there).
SUPERVISOR_FAMILIES = {
    "relay_edge_workers",
    "relay_edge_workers_answering",
    "relay_edge_worker_restarts_total",
    "relay_edge_worker_scrape_failures_total",
}


def assert_metrics_page_names_exactly(text: str) -> None:
    """Every relay_ family the edge exports is in docs/metrics.md's tables, and every one
    the tables name is exported (this edge holds a certificate and endpoint series, so
    nothing conditional is missing)."""
    exported = set()
    for kind_line in re.findall(r"^# TYPE (relay_\w+) (\w+)$", text, re.MULTILINE):
        name, kind = kind_line
        counter_base = kind == "counter" and not name.endswith("_total")
        exported.add(name + "_total" if counter_base else name)
    documented = set()
    for line in METRICS_PAGE.read_text().splitlines():
        if line.startswith("| `relay_"):
            first_cell = line.split("|")[1]
            documented.update(re.findall(r"`(relay_\w+)`", first_cell))
    assert exported - documented == set(), "exported but not on docs/metrics.md"
    assert documented >= SUPERVISOR_FAMILIES
    assert documented - exported - SUPERVISOR_FAMILIES == set(), "on the page, not exported"


@pytest.mark.timeout(60)
def test_without_the_opt_in_no_endpoint_label_appears(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    _, token = edge.token()
    agent = Agent(edge, token, echo.port)
    agents.append(agent)
    port = agent.wait_bound()
    data = payload(9, 10_000)
    assert echo_roundtrip(port, data) == data
    _, text = get(edge, "/metrics")
    assert 'endpoint="' not in text
    assert sample(text, "relay_endpoint_series_limit") == 0
    assert sample(text, "relay_endpoint_series_refused_total") == 0
