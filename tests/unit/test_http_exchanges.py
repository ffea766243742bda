"""relay/_exchanges.pyx reads only response heads and counts bodies down: however the
responses are cut into chunks, every request gets its status and its exact byte count."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import _exchanges
from relay._exchanges import Exchanges


@pytest.fixture(autouse=True)
def logging_on() -> Iterator[None]:
    _exchanges.set_logging(_exchanges.LOG_RECORDS)
    _exchanges.take_finished()
    yield
    _exchanges.set_logging(_exchanges.LOG_OFF)
    _exchanges.take_finished()


def response(status: int, body: bytes, *, interim: bool = False) -> bytes:
    head = b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % (
        status,
        len(body),
    )
    return (b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b"") + head + body


def text_lines() -> list[bytes]:
    """The text lines finished since the last drain (they come in blocks of many)."""
    blocks = _exchanges.take_finished()
    assert all(block.endswith(b"\n") for block in blocks)
    # Split at newlines only: a target may hold any other byte (\r among them).
    return [line + b"\n" for line in b"".join(blocks).split(b"\n")[:-1]]


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


EXCHANGES = [
    (b"GET", b"/a", response(200, b"hello")),
    (b"GET", b"/missing", response(404, b"no such thing" * 50)),
    (b"HEAD", b"/a", b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"),  # no body follows
    (b"POST", b"/up", response(201, b"", interim=True)),
    (b"GET", b"/big", response(200, bytes(70_000))),
    (b"GET", b"/none", b"HTTP/1.1 204 No Content\r\n\r\n"),
]


@settings(max_examples=200, deadline=None)
@given(points=st.lists(st.integers(min_value=0, max_value=80_000), max_size=25))
def test_statuses_and_bytes_survive_any_cut_of_the_responses(points: list[int]) -> None:
    ex = Exchanges(1, "app.example", "203.0.113.7")
    for method, target, answer in EXCHANGES:
        ex.request(method, target)
        for piece in cut(answer, points):
            ex.response_bytes(piece)
    ex.close()
    records = _exchanges.take_finished()
    assert [(r[6], r[7], r[8], r[10]) for r in records] == [
        (m, t, int(a[9:12]) if not a.startswith(b"HTTP/1.1 100") else 201, len(a))
        for m, t, a in EXCHANGES
    ]


def test_pipelined_requests_get_their_own_statuses_when_lengths_are_known() -> None:
    ex = Exchanges(1, "app.example", "203.0.113.7")
    for i in range(3):
        ex.request(b"GET", b"/p%d" % i)
    ex.response_bytes(response(200, b"a") + response(302, b"bb") + response(500, b"ccc"))
    ex.close()
    assert [(r[7], r[8]) for r in _exchanges.take_finished()] == [
        (b"/p0", 200),
        (b"/p1", 302),
        (b"/p2", 500),
    ]


def test_a_body_of_unknown_length_ends_with_the_next_request_or_the_connection() -> None:
    ex = Exchanges(1, "app.example", "203.0.113.7")
    ex.request(b"GET", b"/chunked")
    ex.response_bytes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert _exchanges.take_finished() == []  # its end is not known yet
    ex.response_bytes(b"0\r\n\r\n")
    ex.request(b"GET", b"/next")  # the visitor read it all: it asks again
    [first] = _exchanges.take_finished()
    assert (first[8], first[10]) == (200, 62)
    ex.response_bytes(b"HTTP/1.1 200 OK\r\n\r\nclose-delimited")
    ex.close()
    [second] = _exchanges.take_finished()
    assert (second[7], second[8], second[10]) == (b"/next", 200, 34)


def test_a_connection_that_ends_before_any_status_is_logged_without_one() -> None:
    ex = Exchanges(2, "app.example", "203.0.113.7")
    ex.request(b"GET", b"/slow")
    ex.close()
    [record] = _exchanges.take_finished()
    assert (record[2], record[8], record[10]) == (2, 0, 0)
    counts = _exchanges.http_counts()
    assert counts["classes"][2][0] >= 1  # counted under "none"


def test_counts_by_status_class_and_duration() -> None:
    before = _exchanges.http_counts()
    ex = Exchanges(1, "app.example", "203.0.113.7")
    for status in (200, 201, 404, 503, 503):
        ex.request(b"GET", b"/")
        ex.response_bytes(response(status, b"x"))
    after = _exchanges.http_counts()
    delta = [a - b for a, b in zip(after["classes"][1], before["classes"][1], strict=True)]
    assert delta == [0, 0, 2, 0, 1, 2]
    assert sum(after["buckets"][1]) - sum(before["buckets"][1]) == 5


def test_text_lines_are_formatted_whole_in_one_go() -> None:
    _exchanges.set_logging(_exchanges.LOG_TEXT)
    ex = Exchanges(2, "app.example", "203.0.113.7")
    ex.request(b"GET", b"/a?b=c")
    ex.response_bytes(response(404, b"nope"))
    ex.request(b"POST", b"/" + b"x" * 5000)  # a target longer than a line carries
    ex.close()
    first, second = text_lines()
    assert re.fullmatch(
        rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z https app\.example 203\.0\.113\.7 "
        rb"r[0-9a-f]+ GET /a\?b=c 404 in=0 out=%d \d+\.\d{3}s\n" % len(response(404, b"nope")),
        first,
    ), first
    assert b" POST /" + b"x" * 2047 + b" - in=0 out=0 " in second  # cut, no status


@settings(max_examples=150, deadline=None)
@given(
    status=st.sampled_from([200, 201, 302, 404, 418, 500, 503, 599]),
    size=st.integers(min_value=0, max_value=2_000_000),
    method=st.sampled_from([b"GET", b"POST", b"PROPFIND", b"A" * 20]),
    target=st.binary(min_size=1, max_size=64).map(lambda t: b"/" + t.replace(b"\n", b"")),
)
def test_every_field_of_a_text_line_is_written_exactly(
    status: int, size: int, method: bytes, target: bytes
) -> None:
    _exchanges.set_logging(_exchanges.LOG_TEXT)
    ex = Exchanges(1, "e.example", "")
    ex.request(method, target)
    head = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, size)
    ex.response_bytes(head)
    ex.response_bytes(b"\0" * size)
    [line] = text_lines()
    match = re.fullmatch(
        rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z http e\.example - r([0-9a-f]+) (.*) "
        rb"(\d{3}) in=0 out=(\d+) (\d+)\.(\d{3})s\n",
        line,
        re.DOTALL,
    )
    assert match, line
    assert match[3] == method[:16] + b" " + target
    assert int(match[4]) == status
    assert int(match[5]) == len(head) + size
    assert int(match[2], 16) > 0
    assert int(match[6]) < 5  # seconds: the exchange took far less


def test_text_lines_fill_blocks_in_order_with_none_lost_across_them() -> None:
    """Lines are written into 256 KiB blocks: thousands of long lines span several blocks
    and come back whole, in order, each once."""
    _exchanges.set_logging(_exchanges.LOG_TEXT)
    ex = Exchanges(1, "e.example", "203.0.113.7")
    count = 3000
    for i in range(count):
        ex.request(b"GET", b"/%06d/" % i + b"p" * 200)
        ex.response_bytes(response(200, b""))
    blocks = _exchanges.take_finished()
    assert len(blocks) >= 3  # ~250 bytes a line: more than two blocks' worth
    lines = b"".join(blocks).split(b"\n")[:-1]
    assert [int(line.split(b" GET /")[1][:6]) for line in lines] == list(range(count))


def test_a_log_that_is_not_drained_drops_past_its_bound_and_counts_what_it_dropped() -> None:
    _exchanges.set_logging(_exchanges.LOG_TEXT)
    ex = Exchanges(1, "e.example", "203.0.113.7")
    dropped = _exchanges.http_counts()["dropped"]
    for _ in range(100_000 + 7):
        ex.request(b"GET", b"/")
        ex.response_bytes(response(204, b""))
    assert _exchanges.http_counts()["dropped"] - dropped == 7
    assert len(text_lines()) == 100_000
    ex.request(b"GET", b"/after")  # a drain makes room again
    ex.response_bytes(response(204, b""))
    [line] = text_lines()
    assert b" GET /after 204 " in line
