"""The bench's uvloop floor: counts every request however it is split, answers each one,
and shows up in the fixed-rate table with its CPU per request."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import report_http
from bench.httpbench import HttpMeasurement
from bench.loopfloor import MAX_HEAD, RESPONSE, LoopFloor, RequestCounter
from bench.report import X

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: oha/1.4\r\nAccept: */*\r\n\r\n"


def feed_in_pieces(counter: RequestCounter, data: bytes, cuts: list[int]) -> int:
    """Feed `data` cut at `cuts`."""
    total, start = 0, 0
    for end in [*sorted(set(cuts)), len(data)]:
        total += counter.feed(data[start:end])
        start = end
    return total


@given(
    requests=st.integers(min_value=0, max_value=12),
    cuts=st.lists(st.integers(min_value=0, max_value=12 * len(REQUEST)), max_size=40),
)
def test_every_request_is_counted_once_however_the_stream_is_split(
    requests: int, cuts: list[int]
) -> None:
    data = REQUEST * requests
    cuts = [c for c in cuts if c <= len(data)]
    assert feed_in_pieces(RequestCounter(), data, cuts) == requests


@given(cut=st.integers(min_value=1, max_value=len(REQUEST) - 1))
def test_a_request_cut_anywhere_completes_only_with_its_last_byte(cut: int) -> None:
    counter = RequestCounter()
    first, rest = REQUEST[:cut], REQUEST[cut:]
    assert counter.feed(first) == 0
    assert counter.unfinished == first
    assert counter.feed(rest) == 1
    assert counter.unfinished == b""


def test_a_head_without_an_end_is_refused_past_the_limit() -> None:
    counter = RequestCounter()
    chunk = b"X" * 4096
    with pytest.raises(ValueError, match="longer than"):
        for _ in range(MAX_HEAD // len(chunk) + 2):
            counter.feed(chunk)


def recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    got = bytearray()
    while len(got) < size:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(size - len(got))
        if not data:
            break
        got += data
    return bytes(got)


def test_the_responder_answers_every_pipelined_request_and_stops_by_pid(tmp_path: Path) -> None:
    floor = LoopFloor(tmp_path, origin_port=0)
    try:
        floor.start()
        pid = floor.procs["responder"].pid
        with socket.create_connection(("127.0.0.1", floor.visitor_port()), timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # 50 requests, written in odd-sized pieces so heads straddle reads.
            stream = REQUEST * 50
            for i in range(0, len(stream), 37):
                s.sendall(stream[i : i + 37])
            got = recv_exactly(s, 50 * len(RESPONSE), time.monotonic() + 10)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(RESPONSE * 50).hexdigest()
    finally:
        floor.stop()
    assert not floor.procs["responder"].alive()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def lat(key: str, cpu_s: dict[str, float], requests: int = 4000) -> HttpMeasurement:
    return HttpMeasurement(
        "ka-lat", key, 1, True, rate=1000.0, rps=1000.0, requests=requests,
        latency_ms={"p50": 0.4, "p90": 0.8, "p99": 3.0, "p99.9": 5.0, "max": 6.0},
        cpu_s=cpu_s,
    )  # fmt: skip


def test_the_fixed_rate_table_shows_cpu_per_request_and_the_floor_row() -> None:
    ms = [
        lat("direct", {"origin nginx": 0.04}),
        lat("relay", {"edge": 0.6, "agent": 0.56}),
        lat("bore", {"server": 0.4, "local": 0.36}),
        lat("loopfloor", {"responder": 0.24}),
    ]
    cells = report_http.cells(ms)
    res = {"config": {"ka_conns": 50, "close_conns": 20, "http_duration_s": 2, "reps": 1},
           "http": {"rates": {"common_ka_rate": 1000.0}}}  # fmt: skip
    md = "\n".join(report_http.markdown(res, cells, {"direct": "direct", "relay": "relay",
                                                     "bore": "bore"},
                                        ["direct", "relay", "bore"]))  # fmt: skip
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if "|" in line}
    assert rows["relay"].split(" | ")[7] == "290 (edge 150 + agent 140)"
    assert rows["bore"].split(" | ")[7] == "190 (server 100 + local 90)"
    assert rows["direct"].split(" | ")[7] == "10 (origin nginx)"
    assert rows["*uvloop floor (not a tunnel)*"].split(" | ")[7] == "60 (responder)"
    assert "It costs 60 µs per request" in md
    assert f"edge 150 µs (2.5{X} the floor) and agent 140 µs (2.3{X} the floor)" in md


def test_without_a_floor_measurement_the_table_has_no_floor_row_or_paragraph() -> None:
    cells = report_http.cells([lat("relay", {"edge": 0.6, "agent": 0.56})])
    res = {"config": {"ka_conns": 50, "close_conns": 20, "http_duration_s": 2, "reps": 1},
           "http": {"rates": {"common_ka_rate": 1000.0}}}  # fmt: skip
    md = "\n".join(report_http.markdown(res, cells, {"relay": "relay"}, ["relay"]))
    assert "uvloop floor" not in md
    assert "290 (edge 150 + agent 140)" in md
