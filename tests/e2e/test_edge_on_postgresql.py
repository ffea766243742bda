"""An edge whose store is a real PostgreSQL: tokens made with `relay token --store`
authenticate agents, carry their bytes, and a revoke there ends the live session within
2 s; the audit chain on PostgreSQL records it and verifies; no SQLite file is made."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from relay.control.store import Store
from tests.e2e.procs import RELAY, Agent, EchoServer, Edge, echo_roundtrip, payload
from tests.postgres import PostgresServer


@pytest.mark.timeout(120)
def test_tokens_sessions_and_revocation_on_postgresql(
    tmp_path: Path, postgres_server: PostgresServer, echo: EchoServer, agents: list[Agent]
) -> None:
    # The URL as an operator writes it (no driver suffix).
    url = postgres_server.database().replace("postgresql+psycopg://", "postgresql://")
    edge = Edge(tmp_path / "edge", extra=["--store", url]).start()
    try:
        token_id, token = edge.token("--store", url)
        listed = subprocess.run(
            [*RELAY, "token", "list", "--data-dir", str(edge.data_dir), "--store", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert token_id in listed
        assert not (edge.data_dir / "relay.db").exists()

        agent = Agent(edge, token, echo.port)
        agents.append(agent)
        port = agent.wait_bound(timeout=20)
        data = payload(41, 500_000)
        assert echo_roundtrip(port, data) == data

        subprocess.run(
            [*RELAY, "token", "revoke", "--data-dir", str(edge.data_dir), "--store", url, token_id],
            capture_output=True,
            timeout=60,
            check=True,
        )
        revoked = time.monotonic()
        assert agent.proc.wait(timeout=10) == 3
        assert time.monotonic() - revoked < 3.0  # the edge's 1 s check, plus the agent's exit

        store = Store.open(url)
        try:
            actions = [e.action for e in store.audit.events()]
            assert store.audit.verify() == len(actions)
        finally:
            store.close()
        assert actions.count("token.create") == 1
        assert "token.revoke" in actions
        assert "session.stop" in actions
    finally:
        edge.stop()
