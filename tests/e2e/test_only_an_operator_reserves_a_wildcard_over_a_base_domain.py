"""The names under an edge's base domain are every account's, first come: a member's key
may reserve one of them, or a wildcard over a part of them, but not a wildcard over all
of them (``*.<base>``, or one above it). Reserved, such a wildcard would take every other
account's next bind of a name there (RLY_207), random names included. An operator's key
may (the operator runs the edge). Both where the API is served: an edge's own control
plane (it knows its base domain) and `relay control --base-domain`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.api_calls import call, two_accounts
from tests.e2e.procs import Edge
from tests.e2e.test_edge_with_remote_control_plane import Control
from tests.ports import free_port

API = "/api/v1"
BASE = "relay.localhost"  # tests/e2e/procs.py's Edge passes --base-domain relay.localhost


@pytest.fixture(params=["edge", "relay-control"])
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Edge | Control]:
    server: Edge | Control
    if request.param == "edge":
        server = Edge(tmp_path / "edge").start()
    else:
        server = Control(tmp_path / "control", free_port(), extra=["--base-domain", BASE])
        server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_member_may_not_reserve_a_wildcard_over_the_whole_base_domain(
    plane: Edge | Control,
) -> None:
    made = two_accounts(plane)
    admin, member = made.admin, made.member_b

    def reserve(key: str, domain: str) -> tuple[int, str | None]:
        body = {"domain": domain, **({"account_id": made.account_b} if key == admin else {})}
        answer = call(plane, "POST", f"{API}/reserved_domains", key, body)
        return answer.status, answer.code

    for over_all in (f"*.{BASE}", f"*.{BASE.upper()}."):
        assert reserve(member, over_all) == (403, "RLY_120"), over_all
    answer = call(plane, "POST", f"{API}/reserved_domains", member, {"domain": f"*.{BASE}"})
    assert answer.body["message"] == (
        f"only an operator account's key may reserve *.{BASE}: it covers every name under "
        f"{BASE}, which accounts bind first come"
    ), answer.body
    allowed = [f"*.team-b.{BASE}", f"app.{BASE}", "*.team-b.example.org"]
    for domain in allowed:
        assert reserve(member, domain) == (201, None), domain
    assert reserve(admin, f"*.{BASE}") == (201, None)
    listed = call(plane, "GET", f"{API}/reserved_domains", member).body["items"]
    assert sorted(d["domain"] for d in listed) == sorted([*allowed, f"*.{BASE}"])


def test_relay_control_without_a_base_domain_says_what_it_cannot_check(tmp_path: Path) -> None:
    """It cannot tell a wildcard over an edge's whole base domain from any other: the
    operator is told at start, once, and not when the base domains are given."""
    warning = "no --base-domain: a member's key may reserve a wildcard over an edge's whole"
    for extra in ([], ["--base-domain", BASE]):
        server = Control(tmp_path / f"control{len(extra)}", free_port(), extra=extra)
        server.start()
        try:
            assert server.proc is not None
            said = server.proc.text()
        finally:
            server.stop()
        assert said.count(warning) == (0 if extra else 1), said
