"""Every API route, on a real edge's admin listener, with a real agent connected: no key,
a garbled one, a wrong secret, an expired and a revoked key get 401; a key without the
route's scope 403; the right scope 2xx. Every error body is ``{code, message,
request_id}``."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
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
    #: Makes a new object for each call and gives its id (``{id}`` in the path): for a
    #: write that is not idempotent, such as releasing a reservation.
    fresh: Callable[[], str] | None = None

    def target(self) -> str:
        return self.path.format(id=self.fresh()) if self.fresh is not None else self.path


def numbered(body: Any, n: int) -> Any:
    """``{n}`` in a body's strings becomes the route's number: one name per route."""
    if not isinstance(body, dict):
        return body
    return {k: v.format(n=n) if isinstance(v, str) else v for k, v in body.items()}


def another(body: Any) -> Any:
    """A create's body again, naming something not taken yet."""
    if not isinstance(body, dict):
        return body
    changed = dict(body)
    if "name" in body:
        changed["name"] = body["name"] + "-x"  # a second account, not a conflict
    if "domain" in body:
        changed["domain"] = "x" + body["domain"]
    if "port" in body:
        changed["port"] = body["port"] + 1
    return changed


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


def routes(
    account_id: str,
    credential_id: str,
    key_id: str,
    session_id: str,
    domain: Callable[[], str],
    addr: Callable[[], str],
    token: str,
) -> list[Route]:
    """Every route with arguments that make it succeed for a key with its scope (the
    writes are idempotent or touch objects made for them); ``domain`` and ``addr`` make
    a reservation and give its id."""
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
        Route("GET", f"{API}/reserved_domains", "reserved:read"),
        Route("GET", API + "/reserved_domains/{id}", "reserved:read", fresh=domain),
        Route("POST", f"{API}/reserved_domains", "reserved:write", {"domain": "m{n}.example.com"}),
        Route("DELETE", API + "/reserved_domains/{id}", "reserved:write", fresh=domain),
        Route("GET", f"{API}/reserved_addrs", "reserved:read"),
        Route("GET", API + "/reserved_addrs/{id}", "reserved:read", fresh=addr),
        Route("POST", f"{API}/reserved_addrs", "reserved:write", {"port": 30000}),
        Route("DELETE", API + "/reserved_addrs/{id}", "reserved:write", fresh=addr),
        # What an edge apart from its control plane asks (relay/control/for_edge.py).
        Route("POST", f"{API}/edge/verify_token", "edge", {"token": token, "peer": "t:1"}),
        Route("POST", f"{API}/edge/inactive_tokens", "edge", {"ids": [credential_id]}),
        Route(
            "POST",
            f"{API}/edge/reservation_owner",
            "edge",
            {"kind": "http", "name": "x.example.com"},
        ),
        Route(
            "POST",
            f"{API}/edge/pins_under",
            "edge",
            {"wildcard": "*.example.com", "region": "eu"},
        ),
        Route("POST", f"{API}/edge/reserved_ports", "edge", {}),
        Route("POST", f"{API}/edge/reservation_changes", "edge", {"after": 0}),
        Route(
            "POST",
            f"{API}/edge/reservation_owners",
            "edge",
            {"names": ["x.example.com"], "ports": [20022]},
        ),
        Route("POST", f"{API}/edge/audit_events", "edge", {"events": []}),
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
        names = itertools.count()

        def domain() -> str:
            return keys.store.reserve_domain(member.id, f"r{next(names)}.example.net").id

        def addr() -> str:
            return keys.store.reserve_addr(member.id, 40000 + next(names)).id

        table = routes(member.id, credential.id, victim_key, session["id"], domain, addr, token)
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
            body = numbered(route.body, n)
            path = route.target()  # refused before any lookup: one object will do
            for why, (key, raw) in refused.items():
                answer = call(edge, route.method, path, key, body, raw_auth=raw)
                assert_error(answer, 401, {"RLY_111", "RLY_112", "RLY_113"})
                assert answer.headers.get("www-authenticate", "").startswith("Bearer"), why
            other = next(s for s in by_scope if s != route.scope)
            assert_error(call(edge, route.method, path, by_scope[other], body), 403, {"RLY_120"})
            for key in (by_scope[route.scope], admin):
                answer = call(edge, route.method, route.target(), key, body)
                assert 200 <= answer.status < 300, (route, answer.status, answer.body)
                if route.method == "POST":
                    body = another(body)
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
        # Reload needs admin itself: every other scope is refused, admin reloads.
        for key, raw in refused.values():
            answer = call(edge, "POST", f"{API}/reload", key, raw_auth=raw)
            assert_error(answer, 401, {"RLY_111", "RLY_112", "RLY_113"})
        for key in by_scope.values():
            assert_error(call(edge, "POST", f"{API}/reload", key), 403, {"RLY_120"})
        answer = call(edge, "POST", f"{API}/reload", admin)
        assert answer.status == 200 and answer.body["nodes"][0]["answered"], answer.body
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
