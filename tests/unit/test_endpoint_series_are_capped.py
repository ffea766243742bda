"""Per-endpoint metric series are opt-in and capped: the first N endpoint names get a slot
for the life of the process, the rest none; a slot out of range is refused before it can
index the compiled counters."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay import _exchanges, _fastpath
from relay._exchanges import Exchanges
from relay._fastpath import MAX_ENDPOINT_SERIES, Pump
from relay.config import load_edge_config
from relay.edge.endpoint_series import EndpointSeries
from relay.errors import ConfigError


def test_off_by_default_gives_no_slot_and_counts_no_refusal() -> None:
    series = EndpointSeries(0)
    assert series.slot_for("tcp://edge:20001", "tcp") == 0
    assert series.names == [] and series.refused == 0


def test_the_first_names_get_slots_and_keep_them_the_rest_are_refused() -> None:
    series = EndpointSeries(2)
    assert series.slot_for("tcp://edge:20001", "tcp") == 1
    assert series.slot_for("https://a.example", "https") == 2
    assert series.slot_for("http://b.example", "http") == 0
    assert series.slot_for("http://c.example", "http") == 0
    # A name bound again (released, then taken again) keeps its slot and its counters.
    assert series.slot_for("tcp://edge:20001", "tcp") == 1
    assert series.names == ["tcp://edge:20001", "https://a.example"]
    assert series.kinds == ["tcp", "https"]
    assert series.refused == 2


def test_the_limit_is_checked_against_the_compiled_slots() -> None:
    EndpointSeries(MAX_ENDPOINT_SERIES)
    with pytest.raises(ValueError, match="metrics_endpoint_labels"):
        EndpointSeries(MAX_ENDPOINT_SERIES + 1)


@pytest.mark.parametrize("value", [-1, MAX_ENDPOINT_SERIES + 1])
def test_config_refuses_a_limit_out_of_range(value: int) -> None:
    with pytest.raises(ConfigError, match=r"metrics_endpoint_labels must be 0\.\.10000"):
        load_edge_config(None, {"metrics_endpoint_labels": value})


def test_config_file_sets_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "edge.yml"
    path.write_text("metrics_endpoint_labels: 25\n")
    assert load_edge_config(path, {}).metrics_endpoint_labels == 25


@pytest.mark.parametrize("slot", [-1, MAX_ENDPOINT_SERIES + 1, 2**31 - 1])
def test_a_pump_refuses_a_slot_out_of_range(slot: int) -> None:
    pump = Pump(None)  # type: ignore[arg-type]  # never connected: only the slot is set
    with pytest.raises(ValueError, match="metric_slot"):
        pump.metric_slot = slot
    assert pump.metric_slot == 0
    pump.metric_slot = MAX_ENDPOINT_SERIES
    assert pump.metric_slot == MAX_ENDPOINT_SERIES


def test_readers_refuse_counts_beyond_the_slots() -> None:
    assert _fastpath.endpoint_traffic(0)["from_socket"] == []
    assert len(_fastpath.endpoint_traffic(MAX_ENDPOINT_SERIES)["live"]) == MAX_ENDPOINT_SERIES
    with pytest.raises(ValueError):
        _fastpath.endpoint_traffic(MAX_ENDPOINT_SERIES + 1)
    with pytest.raises(ValueError):
        _exchanges.endpoint_http_counts(-1)


def test_exchanges_count_requests_in_their_endpoint_slot_only() -> None:
    slot = MAX_ENDPOINT_SERIES - 7  # a slot no other test in this process uses
    before = _exchanges.endpoint_http_counts(MAX_ENDPOINT_SERIES)
    ex = Exchanges(1, "app.example", "203.0.113.7", slot)
    for status in (200, 204, 404, 503):
        ex.request(b"GET", b"/")
        ex.response_bytes(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
    ex.request(b"GET", b"/cut")  # the connection ends before an answer: class "none"
    ex.close()
    Exchanges(1, "other.example", "203.0.113.8", MAX_ENDPOINT_SERIES + 5).close()
    after = _exchanges.endpoint_http_counts(MAX_ENDPOINT_SERIES)
    grew = {
        i + 1: [a - b for a, b in zip(after[i], before[i], strict=True)]
        for i in range(MAX_ENDPOINT_SERIES)
        if after[i] != before[i]
    }
    # none, 1xx, 2xx, 3xx, 4xx, 5xx
    assert grew == {slot: [1, 0, 2, 0, 1, 1]}
