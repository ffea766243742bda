"""relay/api_client.py against a real tiny HTTP server on 127.0.0.1: what each kind of
answer (or no answer) becomes, where the key may and may not go, and how listings page."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relay.api_client import ApiClient
from relay.errors import (
    ConfigError,
    Conflict,
    ConnectError,
    Forbidden,
    InvalidApiKey,
    NotFound,
    RateLimited,
    RelayError,
)

KEY = "rlk_abcdefghijkl_" + "A" * 43


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


#: What the server answers: (status, headers, body).
Answer = tuple[int, dict[str, str], bytes]


@dataclass
class FakeApi:
    """Answers every request with ``answer(seen)``; records what it was sent."""

    url: str = ""
    answer: Callable[[Seen], Answer] = lambda seen: (204, {}, b"")
    seen: list[Seen] = field(default_factory=list)


def json_answer(status: int, body: object, headers: dict[str, str] | None = None) -> Answer:
    return (
        status,
        {"content-type": "application/json", **(headers or {})},
        json.dumps(body).encode(),
    )


def error_body(code: str, message: str, request_id: str = "req_0123456789abcdef") -> bytes:
    return json.dumps({"code": code, "message": message, "request_id": request_id}).encode()


def serve(fake: FakeApi) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            parts = urllib.parse.urlsplit(self.path)
            seen = Seen(
                self.command,
                parts.path,
                urllib.parse.parse_qs(parts.query),
                {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length) if length else b"",
            )
            fake.seen.append(seen)
            status, headers, body = fake.answer(seen)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _handle

        def log_message(self, format: str, *args: object) -> None:
            pass  # the test's output stays readable

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    server = serve(fake)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "RLY_111", InvalidApiKey),
        (403, "RLY_120", Forbidden),
        (404, "RLY_601", NotFound),
        (409, "RLY_602", Conflict),
        (400, "RLY_401", ConfigError),
    ],
)
def test_an_error_body_becomes_the_class_its_code_names_with_the_request_id(
    api: FakeApi, status: int, code: str, cls: type[RelayError]
) -> None:
    api.answer = lambda seen: (status, {"content-type": "application/json"}, error_body(code, "no"))
    with pytest.raises(cls) as caught:
        ApiClient(api.url, KEY).get("/accounts/acc_x")
    assert type(caught.value) is cls
    assert caught.value.code == code
    assert str(caught.value) == "no (request req_0123456789abcdef)"


def test_a_refusal_for_too_many_failures_carries_when_to_retry(api: FakeApi) -> None:
    api.answer = lambda seen: (
        429,
        {"content-type": "application/json", "retry-after": "7"},
        error_body("RLY_121", "too many failed authentications"),
    )
    with pytest.raises(RateLimited) as caught:
        ApiClient(api.url, KEY).get("/accounts")
    assert caught.value.code == "RLY_121"
    assert caught.value.retry_after == 7.0


def test_a_code_this_build_does_not_know_is_kept_and_a_malformed_one_is_not(
    api: FakeApi,
) -> None:
    api.answer = lambda seen: (500, {}, error_body("RLY_999", "something newer"))
    with pytest.raises(RelayError) as caught:
        ApiClient(api.url, KEY).get("/accounts")
    assert type(caught.value) is RelayError and caught.value.code == "RLY_999"

    api.answer = lambda seen: (500, {}, error_body("\x1b[31mRED", "something"))
    with pytest.raises(RelayError) as caught:
        ApiClient(api.url, KEY).get("/accounts")
    assert caught.value.code == "RLY_000"


def test_the_request_id_comes_from_the_header_when_the_body_has_none(api: FakeApi) -> None:
    body = json.dumps({"code": "RLY_601", "message": "gone"}).encode()
    api.answer = lambda seen: (404, {"x-request-id": "req_fromheader"}, body)
    with pytest.raises(NotFound, match=r"^gone \(request req_fromheader\)$"):
        ApiClient(api.url, KEY).get("/accounts/acc_x")


def test_terminal_escapes_in_a_message_do_not_reach_the_terminal(api: FakeApi) -> None:
    api.answer = lambda seen: (404, {}, error_body("RLY_601", "no\x1b]0;pwned\x07 such"))
    with pytest.raises(NotFound) as caught:
        ApiClient(api.url, KEY).get("/accounts/acc_x")
    assert "\x1b" not in str(caught.value) and "\x07" not in str(caught.value)


def test_an_error_answer_that_is_not_json_is_a_relay_error_saying_so(api: FakeApi) -> None:
    api.answer = lambda seen: (502, {"content-type": "text/html"}, b"<h1>Bad Gateway</h1>")
    with pytest.raises(RelayError) as caught:
        ApiClient(api.url, KEY).get("/accounts")
    assert caught.value.code == "RLY_000"
    assert "HTTP 502 without a relay error body" in str(caught.value)
    assert api.url in str(caught.value)


def test_a_success_answer_that_is_not_json_is_a_relay_error_saying_so(api: FakeApi) -> None:
    api.answer = lambda seen: (200, {"content-type": "text/plain"}, b"/metrics, /healthz\n")
    with pytest.raises(RelayError, match=r"not JSON \(content-type text/plain"):
        ApiClient(api.url, KEY).get("/accounts")


def test_an_empty_answer_is_none_and_a_json_answer_is_decoded(api: FakeApi) -> None:
    client = ApiClient(api.url, KEY)
    api.answer = lambda seen: (204, {}, b"")
    assert client.delete("/api_keys/k") is None
    api.answer = lambda seen: json_answer(201, {"id": "acc_1", "name": "team-a"})
    assert client.post("/accounts", json={"name": "team-a"}) == {"id": "acc_1", "name": "team-a"}
    sent = api.seen[-1]
    assert (sent.method, sent.path) == ("POST", "/api/v1/accounts")
    assert json.loads(sent.body) == {"name": "team-a"}
    assert sent.headers["content-type"] == "application/json"


def test_the_key_is_sent_as_a_bearer_token_and_never_shown(api: FakeApi) -> None:
    api.answer = lambda seen: (401, {}, error_body("RLY_111", f"invalid API key {KEY}"))
    client = ApiClient(api.url + "/api/v1/", KEY)  # the API's root is taken as well
    with pytest.raises(InvalidApiKey) as caught:
        client.get("/accounts", params={"limit": 1, "cursor": None})
    assert api.seen[-1].headers["authorization"] == f"Bearer {KEY}"
    assert api.seen[-1].path == "/api/v1/accounts"
    assert api.seen[-1].query == {"limit": ["1"]}  # None values are left out
    assert KEY not in str(caught.value) and KEY not in caught.value.one_line()
    assert KEY not in repr(client)


def test_a_connection_refused_is_a_connect_error_naming_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there now
    with pytest.raises(ConnectError) as caught:
        ApiClient(f"http://127.0.0.1:{port}", KEY).get("/accounts")
    assert caught.value.code == "RLY_502"
    assert str(caught.value).startswith(
        f"cannot reach the control plane at http://127.0.0.1:{port}: "
    )


def test_a_server_that_does_not_answer_in_time_is_a_connect_error(api: FakeApi) -> None:
    def slow(seen: Seen) -> Answer:
        time.sleep(1.0)
        return json_answer(200, {})

    api.answer = slow
    started = time.monotonic()
    with pytest.raises(ConnectError, match=r"no answer within 0\.2 s"):
        ApiClient(api.url, KEY, timeout=0.2).get("/accounts")
    assert time.monotonic() - started < 0.9


@pytest.mark.parametrize(
    "url",
    ["http://edge.example.com:9190", "http://10.0.0.5:9190", "http://[2001:db8::1]:9190"],
)
def test_plain_http_to_another_machine_is_refused_before_anything_is_sent(url: str) -> None:
    with pytest.raises(ConfigError, match="in clear"):
        ApiClient(url, KEY)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9190",
        "http://127.8.0.1:9190",
        "http://[::1]:9190",
        "http://localhost:9190",
        "https://edge.example.com",
        "https://10.0.0.5:9443/relay",
    ],
)
def test_tls_anywhere_and_plain_http_to_this_machine_are_allowed(url: str) -> None:
    assert ApiClient(url, KEY).base_url == url


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/", "127.0.0.1:9190", "https://user:pw@edge.example.com", "http://"]
)
def test_what_is_not_an_http_url_for_the_api_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        ApiClient(url, KEY)


def test_a_key_that_would_break_the_header_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as caught:
        ApiClient("http://127.0.0.1:9190", "rlk_abc\r\nX-Evil: 1")
    assert "rlk_abc" not in str(caught.value)


def test_a_redirect_is_not_followed_with_the_key(api: FakeApi) -> None:
    elsewhere = FakeApi()
    other = serve(elsewhere)
    try:
        api.answer = lambda seen: (302, {"location": elsewhere.url + "/api/v1/accounts"}, b"")
        with pytest.raises(ConfigError, match="does not follow redirects"):
            ApiClient(api.url, KEY).get("/accounts")
        assert elsewhere.seen == []
    finally:
        other.shutdown()
        other.server_close()


def test_pages_follow_next_cursor_until_it_is_null(api: FakeApi) -> None:
    pages = {
        None: (["a", "b"], "b"),
        "b": (["c", "d"], "d"),
        "d": (["e"], None),
    }

    def paged(seen: Seen) -> Answer:
        cursor = seen.query.get("cursor", [None])[0]
        names, next_cursor = pages[cursor]
        return json_answer(200, {"items": [{"id": n} for n in names], "next_cursor": next_cursor})

    api.answer = paged
    client = ApiClient(api.url, KEY)
    got = [item["id"] for item in client.items("/accounts", {"limit": 2})]
    assert got == ["a", "b", "c", "d", "e"]
    assert [s.query.get("cursor") for s in api.seen] == [None, ["b"], ["d"]]
    assert all(s.query["limit"] == ["2"] for s in api.seen)
    assert len(list(client.pages("/accounts", {"limit": 2}))) == 3


def test_a_listing_that_never_ends_stops_at_the_page_bound(api: FakeApi) -> None:
    def endless(seen: Seen) -> Answer:
        n = len(api.seen)
        return json_answer(200, {"items": [{"id": str(n)}], "next_cursor": f"c{n}"})

    api.answer = endless
    with pytest.raises(RelayError, match="more than 5 pages"):
        list(ApiClient(api.url, KEY).items("/audit_events", max_pages=5))
    assert len(api.seen) == 5


def test_a_repeated_cursor_stops_the_listing(api: FakeApi) -> None:
    api.answer = lambda seen: json_answer(200, {"items": [], "next_cursor": "same"})
    with pytest.raises(RelayError, match="repeated a page cursor"):
        list(ApiClient(api.url, KEY).pages("/accounts"))
    assert len(api.seen) == 2


def test_an_answer_that_is_not_a_page_is_refused_by_a_listing(api: FakeApi) -> None:
    api.answer = lambda seen: json_answer(200, [{"id": "a"}])
    with pytest.raises(RelayError, match="not a page"):
        list(ApiClient(api.url, KEY).items("/accounts"))
