"""Error responses: framing, content negotiation, escaping, JSON, HEAD."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.error_pages import KNOWN_STATUSES, choose_media_type, render

PAGE_TAGS = ["html", "head", "meta", "meta", "meta", "title", "style", "body"]
PAGE_TAGS += ["main", "h1", "p", "p", "p", "code", "code"]
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, sep, body = response.partition(b"\r\n\r\n")
    assert sep, "no end of headers"
    lines = head.decode("ascii").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(": ")
        assert colon and name == name.lower() and name not in headers
        headers[name] = value
    return lines[0], headers, body


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.mark.parametrize("status", sorted(KNOWN_STATUSES))
@pytest.mark.parametrize("accept", [None, "*/*", BROWSER, "application/json"])
def test_framing_for_every_known_status(status: int, accept: str | None) -> None:
    response = render(status, "RLY_502", "upstream refused", accept=accept, request_id="r-1")
    status_line, headers, body = split(response)
    assert status_line == f"HTTP/1.1 {status} {KNOWN_STATUSES[status][0]}"
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    assert headers["cache-control"] == "no-store"
    assert headers["x-relay-error-code"] == "RLY_502"
    assert headers["x-relay-request-id"] == "r-1"
    assert headers["content-type"].endswith("; charset=utf-8")
    assert b"upstream refused" in body


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "text/plain"),
        ("", "text/plain"),
        ("*/*", "text/plain"),
        (BROWSER, "text/html"),
        ("application/json", "application/json"),
        ("application/json, text/plain, */*", "application/json"),  # axios
        ("text/plain, application/json", "text/plain"),
        ("text/html;q=0.5, application/json", "application/json"),
        ("application/json;q=0.1, */*", "text/plain"),
        ("application/*", "application/json"),
        ("text/*", "text/plain"),
        ("text/*, text/html", "text/html"),
        ("image/png", "text/plain"),
        ("application/json;q=0", "text/plain"),
        ("application/json;q=nan, text/html", "text/html"),
        ("garbage, ,;;, /, */json", "text/plain"),
        ("APPLICATION/JSON", "application/json"),
    ],
)
def test_content_negotiation(accept: str | None, expected: str) -> None:
    assert choose_media_type(accept) == expected
    _, headers, _ = split(render(404, "RLY_601", "x", accept=accept, request_id="r"))
    assert headers["content-type"] == f"{expected}; charset=utf-8"


def test_json_body() -> None:
    response = render(
        503, "RLY_503", 'tunnel "web" is offline', accept="application/json", request_id="abc"
    )
    _, _, body = split(response)
    assert json.loads(body) == {
        "status": 503,
        "error": "Service Unavailable",
        "code": "RLY_503",
        "message": 'tunnel "web" is offline',
        "request_id": "abc",
    }


def test_html_page_is_self_contained() -> None:
    _, headers, body = split(render(502, "RLY_502", "no", accept=BROWSER, request_id="r"))
    page = body.decode()
    assert page.startswith("<!doctype html>")
    for needle in ("http://", "https://", "<script", "<link", "<img", "@import", "url("):
        assert needle not in page
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


def test_plain_body() -> None:
    _, _, body = split(render(504, "RLY_504", "slow", accept=None, request_id="id9"))
    assert body.decode() == "504 Gateway Timeout\nslow\n\nerror RLY_504 · request id9\n"


def test_other_statuses_fall_back_to_the_standard_phrase() -> None:
    assert split(render(429, "X", "m", accept=None, request_id="r"))[0] == (
        "HTTP/1.1 429 Too Many Requests"
    )
    assert split(render(599, "X", "m", accept=None, request_id="r"))[0] == (
        "HTTP/1.1 599 Server Error"
    )


@pytest.mark.parametrize("accept", [None, BROWSER, "application/json"])
def test_head_has_headers_but_no_body(accept: str | None) -> None:
    get = render(404, "RLY_601", "gone", accept=accept, request_id="r")
    head = render(404, "RLY_601", "gone", accept=accept, request_id="r", head=True)
    assert head.endswith(b"\r\n\r\n")
    assert get.startswith(head)
    _, headers, body = split(head)
    assert body == b""
    assert int(headers["content-length"]) == len(split(get)[2]) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"status": 200}, "not in 400..599"),
        ({"status": 600}, "not in 400..599"),
        ({"status": True}, "not in 400..599"),
        ({"code": "RLY_1\r\nset-cookie: x"}, "error code"),
        ({"code": ""}, "error code"),
        ({"request_id": "a b"}, "request id"),
    ],
)
def test_refuses_values_that_would_break_headers(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"status": 502, "code": "RLY_502", "request_id": "r"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        render(
            args["status"],  # type: ignore[arg-type]
            args["code"],  # type: ignore[arg-type]
            "m",
            accept=None,
            request_id=args["request_id"],  # type: ignore[arg-type]
        )


@given(st.text(max_size=200))
def test_html_escaping(message: str) -> None:
    response = render(400, "RLY_400", message, accept=BROWSER, request_id="r")
    _, headers, body = split(response)
    assert int(headers["content-length"]) == len(body)
    page = body.decode("utf-8")
    parser = _TextCollector()
    parser.feed(page)
    parser.close()
    # The message never creates markup: the page has exactly its own tags …
    assert parser.tags == PAGE_TAGS
    # … and reads back as the original text.
    safe = message.encode("utf-8", errors="replace").decode("utf-8")
    expected = safe.replace("\r\n", "\n").replace("\r", "\n")
    assert expected in "".join(parser.text).replace("\r\n", "\n").replace("\r", "\n")


@given(st.text(max_size=200), st.sampled_from(sorted(KNOWN_STATUSES)))
def test_json_round_trip(message: str, status: int) -> None:
    _, headers, body = split(
        render(status, "RLY_000", message, accept="application/json", request_id="r")
    )
    assert int(headers["content-length"]) == len(body)
    doc = json.loads(body)
    assert doc["message"] == message  # ensure_ascii: even lone surrogates survive
    assert doc["status"] == status


@given(st.text(max_size=200), st.sampled_from([None, "*/*", BROWSER, "application/json"]))
def test_content_length_always_right(message: str, accept: str | None) -> None:
    _, headers, body = split(render(502, "RLY_502", message, accept=accept, request_id="r"))
    assert int(headers["content-length"]) == len(body)


def test_every_visitor_facing_code_in_the_source_is_documented() -> None:
    import re
    from pathlib import Path

    import relay.errors

    root = Path(relay.errors.__file__).parent
    used: set[str] = set()
    for path in [*root.rglob("*.py"), *root.rglob("*.pyx")]:
        used |= set(re.findall(r"RLY_6[1-9]\d", path.read_text()))
    assert used, "no visitor-facing codes found: the scan is broken"
    documented = set(re.findall(r"RLY_6[1-9]\d", relay.errors.__doc__ or ""))
    assert used <= documented, sorted(used - documented)
