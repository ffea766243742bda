"""Calls to the control-plane API on a real edge's admin listener, for the API's tests:
plain HTTP/1.1 on a socket, one request per connection, as the listener serves them."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from relay.control.store import AccountRecord, Store
from relay.control.tokens import load_or_create_pepper
from tests.e2e.procs import Edge


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None


class ServesApi(Protocol):
    """What serves the API: an edge's admin listener, or `relay control`'s."""

    host: str
    admin_port: int


def call(
    edge: ServesApi,
    method: str,
    path: str,
    key: str | None = None,
    body: Any = None,
    *,
    raw_auth: str | None = None,
    source: str | None = None,
) -> Answer:
    """One request; ``source``: the loopback address to send it from (default: any)."""
    conn = http.client.HTTPConnection(
        edge.host,
        edge.admin_port,
        timeout=30,
        source_address=(source, 0) if source is not None else None,
    )
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if raw_auth is not None:
        headers["Authorization"] = raw_auth
    data = None
    if body is not None:
        data = json.dumps(body, default=str).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        content = json.loads(raw) if raw else None
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, content)
    finally:
        conn.close()


class KeepsData(Protocol):
    """What keeps a SQLite store in its data directory: an edge, or `relay control`."""

    data_dir: Path


class Keys:
    """API keys made straight in the edge's store (as `relay api-keys bootstrap` does)."""

    def __init__(self, edge: KeepsData) -> None:
        self.store = Store.open(f"sqlite:///{edge.data_dir / 'relay.db'}")
        self.pepper = load_or_create_pepper(edge.data_dir)

    def make(
        self,
        scopes: list[str],
        *,
        account: AccountRecord | None = None,
        expires_in: float | None = None,
    ) -> tuple[str, str]:
        """``(key id, key)``."""
        owner = account or self.store.default_account()
        expires = None
        if expires_in is not None:
            expires = datetime.now().astimezone() + timedelta(seconds=expires_in)
        record, key = self.store.create_api_key(
            owner.id, scopes=scopes, expires_at=expires, pepper=self.pepper, actor="test"
        )
        return record.id, key

    def close(self) -> None:
        self.store.close()


@dataclass(frozen=True)
class TwoAccounts:
    """An operator's admin key, and two member accounts: A with an authtoken, B with an
    API key of its own that reserves (``reserved:read``, ``reserved:write``)."""

    admin: str
    account_a: str
    account_b: str
    token_a: str
    member_b: str


def two_accounts(edge: KeepsData) -> TwoAccounts:
    """:class:`TwoAccounts` made straight in ``edge``'s store (teams ``team-a``, ``team-b``)."""
    keys = Keys(edge)
    try:
        _, admin = keys.make(["admin"])
        a = keys.store.create_account("team-a", actor="test")
        b = keys.store.create_account("team-b", actor="test")
        _, token_a = keys.store.create_token(account_id=a.id, pepper=keys.pepper, actor="test")
        _, member_b = keys.make(["reserved:read", "reserved:write"], account=b)
    finally:
        keys.close()
    return TwoAccounts(admin, a.id, b.id, token_a, member_b)


def api_key(edge: Edge, scopes: list[str]) -> str:
    """One API key of the default (operator) account holding ``scopes``."""
    keys = Keys(edge)
    try:
        return keys.make(scopes)[1]
    finally:
        keys.close()
