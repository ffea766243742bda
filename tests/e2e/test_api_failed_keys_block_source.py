"""Wrong API keys count against their source in the same budget as wrong agent tokens:
past the limit the source gets 429 (RLY_121, Retry-After) from the API — even with a
valid key — and is refused on the agent port too; other sources are not; the block is
audited and ends. Sources are loopback addresses of their own (127.0.0.5, 127.0.0.6)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.api_calls import Keys, call
from tests.e2e.procs import Edge
from tests.e2e.test_failed_auth_blocks_source import authenticates

BLOCK_S = 3.0
LIMIT = 3


@pytest.fixture
def guarded_edge(tmp_path: Path) -> Iterator[Edge]:
    config = tmp_path / "edge.yml"
    config.write_text(
        f"auth_failure_limit: {LIMIT}\nauth_failure_window: 60\nauth_block_time: {BLOCK_S}\n"
    )
    edge = Edge(tmp_path / "edge", extra=["--config", str(config)]).start()
    try:
        yield edge
    finally:
        edge.stop()


@pytest.mark.timeout(90)
def test_wrong_api_keys_block_their_source_on_the_api_and_the_agent_port(
    guarded_edge: Edge,
) -> None:
    edge = guarded_edge
    keys = Keys(edge)
    try:
        _, admin = keys.make(["admin"])
        suspended = keys.store.create_account("dormant", actor="test")
        _, dormant_key = keys.make(["accounts:read"], account=suspended)
        keys.store.set_account_status(suspended.id, "suspended", actor="test")
    finally:
        keys.close()
    _, token = edge.token()
    accounts = "/api/v1/accounts"

    # A suspended account's valid key is refused (RLY_104) but is not a guess.
    for _ in range(LIMIT + 1):
        answer = call(edge, "GET", accounts, dormant_key, source="127.0.0.5")
        assert answer.status == 401 and answer.code == "RLY_104", answer.body
    assert call(edge, "GET", accounts, admin, source="127.0.0.5").status == 200

    wrong = admin[:-4] + ("AAAA" if not admin.endswith("AAAA") else "BBBB")
    for _ in range(LIMIT):
        answer = call(edge, "GET", accounts, wrong, source="127.0.0.5")
        assert answer.status == 401 and answer.code == "RLY_111", answer.body
    blocked_at = time.monotonic()
    refused = call(edge, "GET", accounts, admin, source="127.0.0.5")
    assert refused.status == 429 and refused.code == "RLY_121", refused.body
    assert 1 <= int(refused.headers["retry-after"]) <= BLOCK_S
    assert not authenticates(edge, "127.0.0.5", token)  # one budget: the agent port too
    assert call(edge, "GET", accounts, admin, source="127.0.0.6").status == 200
    assert authenticates(edge, "127.0.0.6", token)
    [block] = edge.audit_details("auth.block")
    assert block == {"source": "127.0.0.5", "failures": LIMIT, "window_s": 60.0, "block_s": 3.0}

    time.sleep(max(0.0, blocked_at + BLOCK_S + 0.3 - time.monotonic()))
    assert call(edge, "GET", accounts, admin, source="127.0.0.5").status == 200
