"""The bench judges issue 4's targets against the best peer of the same run."""

from __future__ import annotations

from bench import report, report_http
from bench.httpbench import HttpMeasurement
from bench.scenarios import Measurement, Scenario

UP = Scenario("tcp-1-up", 1, False)
DOWN = Scenario("tcp-1-down", 1, True)


def bulk_cells(gbps: dict[str, float]) -> dict[tuple[str, str], report.Cell]:
    ms = [
        Measurement(s.key, key, rep, True, gbps=value, bytes=1, seconds=1.0)
        for s in (UP, DOWN)
        for key, value in gbps.items()
        for rep in (1, 2, 3)
    ]
    return report.summarize(ms)


def by_name(targets: list[report.Target], start: str) -> list[report.Target]:
    found = [t for t in targets if t.name.startswith(start)]
    assert found, [t.name for t in targets]
    return found


def test_single_stream_is_judged_against_the_best_encrypted_peer_not_bore() -> None:
    cells = bulk_cells({"relay": 4.0, "ssh": 3.9, "frp": 1.8, "rathole": 2.4, "bore": 5.0,
                        "socat-tls": 1.9})  # fmt: skip
    ts = report.peer_targets(cells, [UP, DOWN], None)
    best = by_name(ts, "single-stream ≥ the best peer with encryption")
    assert [t.met for t in best] == [True, True]
    assert "ssh -R 3.90" in best[0].detail
    socat = by_name(ts, "single-stream ≥ 0.8")
    assert [t.met for t in socat] == [True, True]


def test_single_stream_below_the_best_encrypted_peer_is_not_met() -> None:
    cells = bulk_cells({"relay": 3.0, "ssh": 2.0, "rathole": 3.1, "socat-tls": 4.0})
    ts = report.peer_targets(cells, [UP], None)
    (best,) = by_name(ts, "single-stream ≥ the best peer with encryption")
    assert best.met is False
    assert "rathole 3.10" in best.detail and "0.97" in best.detail
    (socat,) = by_name(ts, "single-stream ≥ 0.8")
    assert socat.met is False  # 3.0 / 4.0 = 0.75


def test_a_skipped_relay_leaves_the_bulk_targets_unevaluated() -> None:
    cells = bulk_cells({"ssh": 2.0})
    ts = report.peer_targets(cells, [UP], "was skipped")
    assert {t.met for t in ts} == {None}


def http(
    scenario: str, values: dict[str, float], p99: dict[str, float] | None = None
) -> list[HttpMeasurement]:
    return [
        HttpMeasurement(
            scenario, key, rep, True, rps=value, latency_ms={"p99": (p99 or {}).get(key, 1.0)}
        )
        for key, value in values.items()
        for rep in (1, 2, 3)
    ]


def test_http_targets_compare_each_relay_endpoint_with_its_peers() -> None:
    ms = http("ka-max", {"relay": 26000, "relay-http": 16000, "bore": 20000, "ssh": 15000,
                         "frp-http": 2100})  # fmt: skip
    ms += http("close-max", {"relay": 2900, "relay-http": 2500, "bore": 3000, "frp-http": 900})
    ms += http("ka-lat", {"relay": 1000, "relay-http": 1000, "bore": 1000, "frp-http": 1000},
               p99={"relay": 1.5, "relay-http": 2.0, "bore": 1.3, "frp-http": 2.5})  # fmt: skip
    ts = report_http.peer_targets(report_http.cells(ms))
    (ka,) = by_name(ts, "keep-alive req/s ≥ the best peer")
    assert ka.met is True
    assert "relay 26,000 vs bore 20,000" in ka.detail
    assert "relay http 16,000 vs frp http 2,100" in ka.detail
    (close,) = by_name(ts, "new connections/s ≥ the best peer")
    assert close.met is False  # the TCP endpoint trails bore, though http leads frp http
    (lat,) = by_name(ts, "fixed-rate p99 ≤ the best peer's")
    assert lat.met is False
    assert "relay 1.50 ms vs bore 1.30 ms" in lat.detail
    assert "relay http 2.00 ms vs frp http 2.50 ms" in lat.detail


def test_http_targets_without_peer_runs_are_not_evaluated() -> None:
    ts = report_http.peer_targets(report_http.cells(http("ka-max", {"relay": 1.0})))
    assert {t.met for t in ts} == {None}
