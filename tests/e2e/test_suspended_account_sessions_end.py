"""Suspending an account ends its agents' live sessions within 2 s (RLY_104), leaves other
accounts' agents alone, and refuses its next connection with RLY_104: the edge's
once-a-second credential watch sees the suspension as it sees a revocation."""

from __future__ import annotations

import time

import pytest

from relay.control.store import Store
from relay.control.tokens import load_or_create_pepper
from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, payload
from tests.e2e.test_credentials_end_live_sessions import SLACK, audit_actions, wait_exit


@pytest.mark.timeout(120)
def test_suspending_an_account_ends_its_live_session_within_two_seconds(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    store = Store.open(f"sqlite:///{edge.data_dir / 'relay.db'}")
    try:
        acme = store.create_account("acme")
        token_record, token = store.create_token(
            description="acme's agent",
            pepper=load_or_create_pepper(edge.data_dir),
            account_id=acme.id,
        )
    finally:
        store.close()
    _, bystander_token = edge.token()  # the default account's: it must keep working

    agent = Agent(edge, token, echo.port)
    bystander = Agent(edge, bystander_token, echo.port)
    agents += [agent, bystander]
    port = agent.wait_bound()
    bystander_port = bystander.wait_bound()
    data = payload(41, 100_000)
    assert echo_roundtrip(port, data) == data

    store = Store.open(f"sqlite:///{edge.data_dir / 'relay.db'}")
    try:
        store.set_account_status(acme.id, "suspended", actor="test")
    finally:
        store.close()
    code, took = wait_exit(agent, 2.0)
    assert code == 3, agent.proc.text()
    assert took < 2.0 + SLACK, took
    assert "RLY_104" in agent.proc.text(), agent.proc.text()
    stops = [(t, d) for action, t, d in audit_actions(edge) if action == "session.stop"]
    assert len(stops) == 1 and stops[0][0] == token_record.id, stops
    assert stops[0][1]["reason"] == "suspended"

    # Its port serves nobody now; the other account's agent still carries its visitors.
    try:
        got = echo_roundtrip(port, b"still there?", timeout=5)
    except OSError:
        got = b""
    assert got == b""
    assert bystander.proc.proc.poll() is None, bystander.proc.text()
    assert echo_roundtrip(bystander_port, data) == data

    # A new connection with the suspended account's token is refused, with the same code.
    started = time.monotonic()
    again = Agent(edge, token, echo.port)
    agents.append(again)
    assert again.proc.wait(30) == 3, again.proc.text()
    assert time.monotonic() - started < 30
    assert "RLY_104" in again.proc.text(), again.proc.text()
    fails = [d for action, t, d in audit_actions(edge) if action == "auth.fail"]
    assert fails == [{"reason": "account_suspended"}], fails
