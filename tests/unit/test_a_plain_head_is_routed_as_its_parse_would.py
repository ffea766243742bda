"""A worker hands a visitor over by the Host its head's bytes say (``plain_host``), before
any parse: only the worker that serves it parses it. That is right only if the parse
would have routed it by the same name, or refused it (then the worker it reaches refuses
it alike). Checked against httptools itself, over heads built from ordinary and hostile
pieces: bare CR and LF, folded lines, blank lines before the request line, two Hosts,
absolute-form targets, spaces where llhttp takes none.
"""

from __future__ import annotations

from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay._httpfront import plain_host


class _Head:
    """What httptools saw of a head: its target and headers, once complete."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def routed_by_parse(data: bytes) -> str | None:
    """The name HttpVisitor routes the first head of ``data`` by, once httptools parsed
    it; None when it refuses it (malformed, not one Host, a Host no name has) or the
    head is not complete. An absolute-form target routes by its authority: "absolute"."""
    seen = _Head()
    parser: Any = httptools.HttpRequestParser(seen)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        pass  # what follows a complete head does not change how it was routed
    if not seen.complete:
        return None
    hosts = [value.strip() for name, value in seen.headers if name.lower() == b"host"]
    if len(hosts) != 1:
        return None
    if seen.url[:1] != b"/":
        return "absolute"
    host = hosts[0]
    allowed = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]"
    if host.translate(None, allowed):
        return None
    text = host.decode("latin-1").lower()
    return text if text.endswith("]") else text.rsplit(":", 1)[0]


LINE_ENDS = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\r\r\n", b" \r\n"])
REQUEST_LINES = st.sampled_from(
    [
        b"GET / HTTP/1.1",
        b"HEAD /a?b=c HTTP/1.1",
        b"POST /upload HTTP/1.0",
        b"GET http://a.test/ HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"GET  / HTTP/1.1",
        b"GET /a b HTTP/1.1",
        b"GET / HTTP/1.1 ",
        b"",
    ]
)
HEADER_LINES = st.sampled_from(
    [
        b"Host: a.test",
        b"host:b.test:8080",
        b"HOST:   C.Test  ",
        b"Host: [::1]:443",
        b"Host: a.test\nHost: evil.test",
        b"X-A: 1\nHost: evil.test",
        b"Host: a.test\rX: y",
        b"Host : a.test",
        b" Host: folded.test",
        b"\tcontinued",
        b"Host:",
        b"Host: bad host",
        b"Host: a.test/x",
        b"Content-Length: 3",
        b"Transfer-Encoding: chunked",
        b"Accept: */*",
        b"X-Host: other.test",
        b"Hostile: yes",
    ]
)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    out = draw(st.sampled_from([b"", b"", b"\r\n", b"\r\n\r\n"]))  # blank lines first
    out += draw(REQUEST_LINES) + draw(LINE_ENDS)
    for line in draw(st.lists(HEADER_LINES, max_size=6)):
        out += line + draw(LINE_ENDS)
    out += draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b""]))
    return out + draw(st.sampled_from([b"", b"abc", b"Host: late.test\r\n\r\n"]))


@settings(max_examples=3000, deadline=None)
@given(heads())
def test_a_head_handed_over_by_its_bytes_is_routed_by_the_same_name_or_refused(
    data: bytes,
) -> None:
    by_bytes = plain_host(data)
    by_parse = routed_by_parse(data)
    if by_bytes is not None and by_parse is not None:
        assert by_bytes == by_parse, (data, by_bytes, by_parse)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"GET / HTTP/1.1\r\nHost: A.Test:8080\r\nAccept: */*\r\n\r\n", "a.test"),
        (b"HEAD /x HTTP/1.1\r\nhost:[::1]:80\r\n\r\n", "[::1]"),
        (b"POST /sink HTTP/1.1\r\nHOST: b.test\r\ncontent-length: 3\r\n\r\nabc", "b.test"),
        (b"GET / HTTP/1.0\r\nHost: c.test\r\n\r\nGET / HTTP/1.0\r\n", "c.test"),
    ],
)
def test_an_ordinary_head_is_handed_over_by_its_bytes(data: bytes, name: str) -> None:
    assert plain_host(data) == name
    assert routed_by_parse(data) == name


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a.test\r\n",  # not complete yet
        b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",  # absolute form
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",  # two
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",  # none
        b"GET / HTTP/1.1\r\nX: 1\r\n Host: a.test\r\n\r\n",  # folded
        b"\r\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n",  # a blank line first
        b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n",  # no such name
    ],
)
def test_an_unusual_head_is_parsed_before_it_is_routed(data: bytes) -> None:
    assert plain_host(data) is None
