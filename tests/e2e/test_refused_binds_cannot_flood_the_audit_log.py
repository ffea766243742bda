"""An agent that keeps sending binds the edge refuses has its session stopped (RLY_209)
once its token is past its budget (60 at once, then one a second): every refusal before
is answered and audited as ever, the one past the budget is answered and audited once as
``bind.flood``, and nothing more is written for it. Without the budget one session wrote
1,357 audit entries a second (about 2 KB of store each). Another token's agent binds
and serves meanwhile, hash-checked.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from relay.protocol import Bind
from tests.e2e.agent_wire import authenticate, control_message, read_until_closed, tls_link
from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, payload
from tests.e2e.test_admin_listener import get, sample

pytestmark = pytest.mark.timeout(90)

SENT = 100


def test_a_token_past_its_refused_bind_budget_has_its_session_stopped(
    edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    _, token = edge.token()
    with tls_link(("127.0.0.1", edge.listen_port), edge.ca_file) as link:
        authenticate(link, token)
        for i in range(1, SENT + 1):  # each refused: not a host name
            link.sendall(control_message(Bind(request_id=i, kind="http", domain=f"no!{i}")))
        seen = read_until_closed(link, timeout=30)
    answered = seen.count(b'"type":"bind_error"')
    assert 61 <= answered < SENT, answered  # 60 at once (and what refilled meanwhile), 1 more
    assert seen.count(b'"type":"stop"') == 1 and b"RLY_209" in seen, seen[-400:]
    refused = edge.audit_details("bind.refuse")
    flood = edge.audit_details("bind.flood")
    assert len(refused) == answered - 1, (len(refused), answered)
    assert len(flood) == 1 and flood[0]["burst"] == 60, flood
    _, text = get(edge, "/metrics")
    assert sample(text, "relay_agent_sessions_closed_total", reason="refused_binds") == 1
    assert sample(text, "relay_binds_refused_total", code="RLY_201") == answered

    # Its token's next session is stopped at its first refusal, and audits nothing more.
    with tls_link(("127.0.0.1", edge.listen_port), edge.ca_file) as link:
        authenticate(link, token)
        started = time.monotonic()
        link.sendall(control_message(Bind(request_id=1, kind="http", domain="no!again")))
        again = read_until_closed(link, timeout=30)
    if time.monotonic() - started < 0.5:  # no refusal refilled meanwhile (1 a second)
        assert b'"type":"stop"' in again and b"RLY_209" in again, again[-300:]
        assert len(edge.audit_details("bind.refuse")) == len(refused)
        assert len(edge.audit_details("bind.flood")) == 1

    # Another token's agent is not touched.
    _, other = edge.token()
    agent = Agent(edge, other, echo.port)
    agents.append(agent)
    port = agent.wait_bound()
    data = payload(7, 100_000)
    got = echo_roundtrip(port, data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
