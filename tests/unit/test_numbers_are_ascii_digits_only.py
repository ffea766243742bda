"""Every number relay reads from text (a port, a cursor, a duration, a Retry-After) is
ASCII digits. ``str.isdigit`` is true of a superscript one (U+00B9) and an
Arabic-Indic three (U+0663) too, and ``int`` refuses the first and reads the second: a
check by ``isdigit`` alone let the API answer 500 to a reservation_owner query for tcp
port U+00B9 (found by the schemathesis run of tests/e2e/test_api_against_its_openapi.py)
and let ports be written in other scripts. And a number no longer than what reads it
can hold: a duration past 100 years, an audit cursor past a 64-bit seq.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from relay import asgi_once
from relay.certs.acme_issuer import parse_retry_after
from relay.cli import parse_duration
from relay.cluster.presence import _is_link, _is_port
from relay.config import parse_host_port
from relay.control.api import ControlPlane, create_app
from relay.control.store import Store
from relay.edge.cluster import _peer_tuple
from relay.errors import ConfigError

PEPPER = b"p" * 32
#: Digits ``str.isdigit`` takes: superscripts (int refuses them), Arabic-Indic and
#: fullwidth (int reads them).
NOT_ASCII = ["\u00b9", "\u00b2\u00b3", "\u0663", "\uff11\uff12\uff13", "8\u0660"]


@pytest.fixture
def plane(tmp_path: Any) -> Iterator[ControlPlane]:
    store = Store.open(f"sqlite:///{tmp_path / 'relay.db'}")
    yield ControlPlane(store, PEPPER)
    store.close()


def call(plane: ControlPlane, method: str, target: str, body: Any = None) -> tuple[int, Any]:
    store = plane.store
    _, key = store.create_api_key(
        store.default_account().id, scopes=["admin"], pepper=PEPPER, actor="test"
    )
    headers = [(b"authorization", f"Bearer {key}".encode())]
    data = b""
    if body is not None:
        headers.append((b"content-type", b"application/json"))
        data = json.dumps(body).encode()
    status, _, answer = asyncio.run(
        asgi_once.call(
            create_app(plane),
            method=method,
            target=f"/api/v1{target}".encode(),
            headers=headers,
            body=data,
            client=("127.0.0.1", 40000),
            server=("127.0.0.1", 9190),
        )
    )
    return status, json.loads(answer)


@pytest.mark.parametrize("name", NOT_ASCII)
def test_the_api_refuses_a_port_not_in_ascii_digits(plane: ControlPlane, name: str) -> None:
    status, answer = call(plane, "POST", "/edge/reservation_owner", {"kind": "tcp", "name": name})
    assert status == 400, answer
    assert "port number" in json.dumps(answer), answer


def test_the_api_still_answers_a_port_in_ascii_digits(plane: ControlPlane) -> None:
    status, answer = call(plane, "POST", "/edge/reservation_owner", {"kind": "tcp", "name": "22"})
    assert (status, answer["account_id"]) == (200, None), answer


@pytest.mark.parametrize("cursor", NOT_ASCII)
def test_the_audit_log_refuses_a_cursor_not_in_ascii_digits(
    plane: ControlPlane, cursor: str
) -> None:
    """Refused by the query's pattern before the route reads it."""
    status, answer = call(plane, "GET", f"/audit_events?cursor={quote(cursor)}")
    assert (status, answer["code"]) == (422, "RLY_401"), answer
    assert "query.cursor" in answer["message"], answer


@pytest.mark.parametrize("digits", NOT_ASCII)
def test_text_read_as_a_number_is_ascii_digits(digits: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(digits + "h")
    with pytest.raises(ConfigError):
        parse_host_port("127.0.0.1:" + digits, what="listen")
    assert not _is_port(digits)
    assert not _is_link("10.0.0.2:" + digits)
    assert _peer_tuple("10.0.0.2:" + digits) == "10.0.0.2:" + digits
    now = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    assert parse_retry_after(digits, now) is None


def test_ascii_digits_are_still_numbers() -> None:
    assert parse_duration("12h") == dt.timedelta(hours=12)
    assert parse_host_port("127.0.0.1:7000", what="listen") == ("127.0.0.1", 7000)
    assert _is_port("20001") and _is_link("10.0.0.2:7400")
    assert _peer_tuple("10.0.0.2:5555") == ("10.0.0.2", 5555)
    now = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    assert parse_retry_after("30", now) == now + dt.timedelta(seconds=30)


def test_a_duration_past_a_hundred_years_is_refused_not_overflowed() -> None:
    """``99999999999d`` once raised OverflowError (a traceback, not a usage error)."""
    assert parse_duration("36600d") == dt.timedelta(days=36600)
    for text in ("36601d", "99999999999d", "9" * 40 + "s"):
        with pytest.raises(ConfigError, match="longer than 100 years"):
            parse_duration(text)


def test_an_audit_cursor_longer_than_a_seq_is_a_400(plane: ControlPlane) -> None:
    """A seq is a 64-bit integer in the store: 64 digits once reached it and failed (500)."""
    for cursor in ("9" * 19, "1" * 64):
        status, answer = call(plane, "GET", f"/audit_events?cursor={cursor}")
        assert (status, answer["code"]) == (400, "RLY_401"), answer
        assert "cursor must be the next_cursor" in answer["message"], answer
    status, answer = call(plane, "GET", "/audit_events?cursor=" + "9" * 18)
    assert status == 200 and answer["items"] == [], answer
