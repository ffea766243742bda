"""The API's audit routes on SQLite and on a real PostgreSQL: filters and pages return
exactly the events asked for, and /audit_events/verify reports an edited, deleted or
reordered event with the first bad seq. Requests go through the admin listener's bridge
(relay/asgi_once.py) into the real FastAPI app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import delete, update

from relay import asgi_once
from relay.control.api import ControlPlane, create_app
from relay.control.audit import audit_table
from relay.control.store import Store

PEPPER = b"p" * 32


@pytest.fixture
def plane(database_url: str) -> Iterator[ControlPlane]:
    store = Store.open(database_url)
    yield ControlPlane(store, PEPPER)
    store.close()


def get(plane: ControlPlane, key: str, path: str, **params: Any) -> tuple[int, Any]:
    target = f"/api/v1{path}" + (f"?{urlencode(params)}" if params else "")
    status, _, body = asyncio.run(
        asgi_once.call(
            create_app(plane),
            method="GET",
            target=target.encode(),
            headers=[(b"authorization", f"Bearer {key}".encode())],
            body=b"",
            client=("127.0.0.1", 40000),
            server=("127.0.0.1", 9190),
        )
    )
    return status, json.loads(body)


def admin_key(plane: ControlPlane) -> str:
    store = plane.store
    _, key = store.create_api_key(
        store.default_account().id, scopes=["admin"], pepper=PEPPER, actor="test"
    )
    return key


def fill(plane: ControlPlane) -> None:
    for i in range(6):
        plane.store.audit.append("alice" if i % 2 else "bob", f"test.{i % 3}", f"t{i}", {"i": i})


def test_filters_and_pages_return_exactly_the_events_asked_for(plane: ControlPlane) -> None:
    key = admin_key(plane)
    fill(plane)
    status, page = get(plane, key, "/audit_events", actor="alice", limit=2)
    assert status == 200, page
    assert [e["target"] for e in page["items"]] == ["t1", "t3"]
    status, rest = get(plane, key, "/audit_events", actor="alice", cursor=page["next_cursor"])
    assert [e["target"] for e in rest["items"]] == ["t5"] and rest["next_cursor"] is None
    _, by_action = get(plane, key, "/audit_events", action="test.2")
    assert [e["target"] for e in by_action["items"]] == ["t2", "t5"]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    _, none = get(plane, key, "/audit_events", since=later)
    assert none["items"] == []
    _, everything = get(plane, key, "/audit_events", until=later, limit=500)
    seqs = [e["seq"] for e in everything["items"]]
    assert seqs == sorted(seqs) and len(seqs) == plane.store.audit.head()[0]
    status, naive = get(plane, key, "/audit_events", since="2026-01-01T00:00:00")
    assert status == 400 and naive["code"] == "RLY_401"
    # Within the calendar as written, outside it in UTC (schemathesis found the 500).
    for name, edge in (
        ("since", "0001-01-01T00:01:00+07:43"),
        ("until", "9999-12-31T23:59:00-05:00"),
    ):
        status, off = get(plane, key, "/audit_events", **{name: edge})
        assert (status, off["code"]) == (400, "RLY_401"), off
        assert off["message"].startswith(f"{name} is out of range"), off
    # An offset is honoured: an hour ahead of UTC, "later" in local time is the same instant.
    local = (datetime.now(UTC) + timedelta(hours=1)).astimezone(timezone(timedelta(hours=1)))
    _, none = get(plane, key, "/audit_events", since=local.isoformat())
    assert none["items"] == []


def _verify(plane: ControlPlane, key: str) -> dict[str, Any]:
    status, body = get(plane, key, "/audit_events/verify")
    assert status == 200, body
    return dict(body)


@pytest.mark.parametrize("damage", ["edit", "delete", "reorder"])
def test_verify_reports_the_first_damaged_event(plane: ControlPlane, damage: str) -> None:
    key = admin_key(plane)
    fill(plane)
    intact = _verify(plane, key)
    assert intact["intact"] is True and intact["events"] == plane.store.audit.head()[0]
    first = 3  # the key's creation is event 1; fill's events follow
    with plane.store.engine.begin() as conn:
        if damage == "edit":
            conn.execute(
                update(audit_table).where(audit_table.c.seq == first).values(actor="mallory")
            )
        elif damage == "delete":
            conn.execute(delete(audit_table).where(audit_table.c.seq == first))
        else:  # swap two events' contents, keeping each row's seq and hashes
            rows = {
                r.seq: r
                for r in conn.execute(
                    audit_table.select().where(audit_table.c.seq.in_([first, first + 1]))
                )
            }
            for seq, other in ((first, first + 1), (first + 1, first)):
                conn.execute(
                    update(audit_table)
                    .where(audit_table.c.seq == seq)
                    .values(
                        actor=rows[other].actor,
                        target=rows[other].target,
                        detail=rows[other].detail,
                        action=rows[other].action,
                    )
                )
    report = _verify(plane, key)
    assert report["intact"] is False, report
    assert report["code"] == "RLY_701"
    assert report["first_bad_seq"] == first, report
    assert report["events"] == first - 1
