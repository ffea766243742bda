"""Every API route, on a real edge's admin listener, with a real agent connected: no key,
a garbled one, a wrong secret, an expired and a revoked key get 401; a key without the
route's scope 403; the right scope 2xx. Every error body is ``{code, message,
request_id}``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.control.scopes import SCOPES
from tests.e2e.api_calls import Keys, call
from tests.e2e.procs import Agent, EchoServer, Edge

API = "/api/v1"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    scope: str
    body: Any = None


@pytest.fixture
def lenient_edge(tmp_path: Path) -> Iterator[Edge]:
    """An edge that does not refuse a source for failing: the matrix fails on purpose,
    dozens of times, from 127.0.0.1 (the refusal has its own test)."""
    config = tmp_path / "edge.yml"
    config.write_text("auth_failure_limit: 0\n")
    edge = Edge(tmp_path / "edge", extra=["--config", str(config)]).start()
    try:
        yield edge
    finally:
        edge.stop()


def routes(account_id: str, credential_id: str, key_id: str, session_id: str) -> list[Route]:
    """Every route with arguments that make it succeed for a key with its scope (the
    writes are idempotent or touch objects made for them)."""
    return [
        Route("GET", f"{API}/accounts", "accounts:read"),
        Route("GET", f"{API}/accounts/{account_id}", "accounts:read"),
        Route("POST", f"{API}/accounts", "accounts:write", {"name": "matrix-{n}"}),
        Route("POST", f"{API}/accounts/{account_id}/suspend", "accounts:write"),
        Route("POST", f"{API}/accounts/{account_id}/resume", "accounts:write"),
        Route("GET", f"{API}/credentials", "credentials:read"),
        Route("GET", f"{API}/credentials/{credential_id}", "credentials:read"),
        Route("POST", f"{API}/credentials", "credentials:write", {"description": "m"}),
        Route("DELETE", f"{API}/credentials/{credential_id}", "credentials:write"),
        Route("GET", f"{API}/api_keys", "credentials:read"),
        Route("GET", f"{API}/api_keys/{key_id}", "credentials:read"),
        Route("POST", f"{API}/api_keys", "credentials:write", {"scopes": ["credentials:write"]}),
        Route("DELETE", f"{API}/api_keys/{key_id}", "credentials:write"),
        Route("GET", f"{API}/audit_events", "audit:read"),
        Route("GET", f"{API}/audit_events/verify", "audit:read"),
        Route("GET", f"{API}/tunnel_sessions", "sessions:read"),
        Route("GET", f"{API}/tunnel_sessions/{session_id}", "sessions:read"),
        Route("GET", f"{API}/endpoints", "endpoints:read"),
        Route("GET", f"{API}/certificates", "endpoints:read"),
    ]


def wait_new_session(edge: Edge, admin: str, *, old: str) -> dict[str, Any]:
    """The agent's session after it reconnected (bounded: 15 s)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        items = call(edge, "GET", f"{API}/tunnel_sessions", admin).body["items"]
        fresh = [s for s in items if s["id"] != old]
        if fresh and fresh[0]["endpoints"]:
            return dict(fresh[0])
        time.sleep(0.2)
    raise AssertionError("the agent did not come back after the restart")


def assert_error(answer: Any, status: int, codes: set[str]) -> None:
    assert answer.status == status, (answer.status, answer.body)
    assert set(answer.body) == {"code", "message", "request_id"}, answer.body
    assert answer.body["code"] in codes, answer.body
    assert answer.body["request_id"] == answer.headers["x-request-id"]


@pytest.mark.timeout(240)
def test_every_route_answers_401_403_or_2xx_by_the_key_it_is_given(
    lenient_edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    edge = lenient_edge
    keys = Keys(edge)
    try:
        _, token = edge.token()
        agent = Agent(edge, token, echo.port)
        agents.append(agent)
        agent.wait_bound()
        member = keys.store.create_account("team-matrix", actor="test")
        credential, _ = keys.store.create_token(
            account_id=member.id, pepper=keys.pepper, actor="test"
        )
        victim_key, _ = keys.make(["endpoints:read"], account=member)
        _, admin = keys.make(["admin"])
        sessions = call(edge, "GET", f"{API}/tunnel_sessions", admin)
        assert sessions.status == 200, sessions.body
        [session] = sessions.body["items"]
        table = routes(member.id, credential.id, victim_key, session["id"])
        assert {r.scope for r in table} | {"admin", "sessions:write"} == set(SCOPES)

        key_id, right_secret = keys.make(["endpoints:read"])
        wrong_secret = right_secret[:-4] + ("AAAA" if not right_secret.endswith("AAAA") else "BBBB")
        _, expired = keys.make(["admin"], expires_in=1.0)
        revoked_id, revoked = keys.make(["admin"])
        keys.store.revoke_api_key(revoked_id, actor="test")
        time.sleep(1.2)  # the expiring key's second passes
        refused = {
            "no key": (None, None),
            "not a bearer": (None, "Basic dXNlcjpwYXNz"),
            "garbled": ("rlk_not-a-key", None),
            "wrong secret": (wrong_secret, None),
            "expired": (expired, None),
            "revoked": (revoked, None),
        }
        by_scope = {scope: keys.make([scope])[1] for scope in SCOPES if scope != "admin"}
        for n, route in enumerate(table):
            body = route.body
            if isinstance(body, dict) and "name" in body:
                body = {"name": body["name"].format(n=n)}
            for why, (key, raw) in refused.items():
                answer = call(edge, route.method, route.path, key, body, raw_auth=raw)
                assert_error(answer, 401, {"RLY_111", "RLY_112", "RLY_113"})
                assert answer.headers.get("www-authenticate", "").startswith("Bearer"), why
            other = next(s for s in by_scope if s != route.scope)
            assert_error(
                call(edge, route.method, route.path, by_scope[other], body), 403, {"RLY_120"}
            )
            for key in (by_scope[route.scope], admin):
                answer = call(edge, route.method, route.path, key, body)
                assert 200 <= answer.status < 300, (route, answer.status, answer.body)
                if route.method == "POST" and "name" in (body or {}):
                    body = {"name": body["name"] + "-x"}  # a second account, not a conflict
        # Restart and stop act on the live session: each is refused, then done once.
        writer = by_scope["sessions:write"]
        for action in ("restart", "stop"):
            path = f"{API}/tunnel_sessions/{session['id']}/{action}"
            for key, raw in refused.values():
                answer = call(edge, "POST", path, key, raw_auth=raw)
                assert_error(answer, 401, {"RLY_111", "RLY_112", "RLY_113"})
            assert_error(call(edge, "POST", path, by_scope["sessions:read"]), 403, {"RLY_120"})
            answer = call(edge, "POST", path, writer)
            assert answer.status == 200, answer.body
            if action == "restart":
                session = wait_new_session(edge, admin, old=session["id"])
        # Stopped for good: the agent exits (1, an error that is not its credential's)
        # instead of reconnecting.
        assert agent.proc.wait(10) == 1, agent.proc.text()
        assert "RLY_122" in agent.proc.text()
        # The failures were audited, by key id, never with a secret.
        fails = [e for e in keys.store.audit.events() if e.action == "api_key.auth_fail"]
        assert any(e.target == key_id for e in fails)
        assert right_secret.split("_")[-1] not in repr([e.detail for e in fails])
    finally:
        keys.close()
