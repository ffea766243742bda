"""An endpoint a reservation took away (RLY_207, RLY_208) is not asked for again when its
agent reconnects: its other endpoints serve on, and a refused re-bind no longer ends
their session at every reconnect (relay/agent/client.py ``Agent._taken_away``).

On a real edge restarted under real agents (``relay start``, two links):

* a name reserved for another account by an operator while served ends at once, and
  the agent (protocol 2: an ``EndpointEnded``) drops it at once and says so, once; it
  does not ask for it again when the edge restarts, and its TCP port is served again,
  hash-checked, after this restart and the next (no reconnect loop);
* a name reserved for another account by that account's member key acts at the next
  bind only: an agent serving nothing else, refused on its re-bind after a restart,
  exits 4 with RLY_207 (it used to reconnect for ever).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.e2e.api_calls import TwoAccounts, call, two_accounts
from tests.e2e.procs import RELAY, Agent, EchoServer, Edge, Proc, echo_roundtrip
from tests.e2e.test_agent_config_start import agent_config, forwarding_urls, write_config
from tests.e2e.test_agent_links_and_pools import web

API = "/api/v1"
BASE = "relay.localhost"

pytestmark = pytest.mark.timeout(240)

#: How long an agent may take to come back after its edge restarts: its reconnect delays
#: start over only after a session that served 10 s (relay/agent/backoff.py), and the
#: sessions here are shorter, so the delays grow across the restarts, up to 30 s.
BACK_WITHIN = 45.0


@pytest.fixture
def accounts(edge: Edge) -> TwoAccounts:
    return two_accounts(edge)


def reserve_name(edge: Edge, key: str, host: str, account: str = "") -> None:
    body = {"domain": host, **({"account_id": account} if account else {})}
    answer = call(edge, "POST", f"{API}/reserved_domains", key, body)
    assert answer.status == 201, answer.body


def restart(edge: Edge) -> None:
    assert edge.stop() == 0
    edge.start()


def serves_again(port: int, data: bytes, within: float = BACK_WITHIN) -> None:
    """``port`` echoes ``data`` whole again within ``within`` seconds of a restart."""
    deadline = time.monotonic() + within
    while True:
        try:
            echoed = echo_roundtrip(port, data)
        except OSError:
            echoed = b""
        if hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest():
            return
        assert time.monotonic() < deadline, f"port {port} not served again in {within} s"
        time.sleep(0.2)


def leader_lines(agent: Proc) -> list[str]:
    """What link 0 says (another link's lines start ``link <i>:``)."""
    return [line for line in agent.text().splitlines() if not line.startswith("link ")]


def until_reconnected(agent: Proc, times: int, within: float = BACK_WITHIN) -> None:
    """Until link 0 said ``times`` times that it serves again after a reconnect."""
    deadline = time.monotonic() + within
    while sum("reconnected; 1 endpoint(s) serving again" in x for x in leader_lines(agent)) < times:
        assert agent.proc.poll() is None, agent.text()
        assert time.monotonic() < deadline, agent.text()
        time.sleep(0.1)


def test_a_name_taken_away_is_dropped_and_the_other_endpoint_serves_across_restarts(
    edge: Edge, accounts: TwoAccounts, echo: EchoServer, procs: list[Proc], tmp_path: Path
) -> None:
    name = "taken"
    host = f"{name}.{BASE}"
    port = edge.ports[0] + 3
    config = agent_config(edge, accounts.token_a, echo.port, echo.port, port)
    config["agent"]["links"] = 2
    config["endpoints"][1]["subdomain"] = name
    agent = Proc([*RELAY, "start", "--config", str(write_config(tmp_path / "a.yml", config))])
    procs.append(agent)
    forwarding_urls(agent, 2)
    data = os.urandom(512 * 1024)
    serves_again(port, data, within=5.0)

    reserve_name(edge, accounts.admin, host, accounts.account_b)
    said = (
        f"http://{host}:{edge.http_port} is no longer served (error RLY_207: {host} is "
        "reserved by another account); not asked for again, 1 endpoint(s) serve on"
    )
    agent.wait_line(said, timeout=10)  # at once, before any reconnect
    assert "reconnected" not in agent.text(), agent.text()

    for restarts in (1, 2):
        restart(edge)
        until_reconnected(agent, restarts)
        serves_again(port, data)
    assert agent.proc.poll() is None, agent.text()
    gone = [x for x in leader_lines(agent) if "is no longer served (" in x]
    assert gone == [said], agent.text()
    # Link 1 skips it too (said at most once: it may have learnt it from link 0 first).
    text = agent.text()
    assert text.count("link 1: http://") <= 1, text
    assert "re-binding failed" not in text and "could not join" not in text, text


def test_a_members_reservation_ends_an_agent_serving_nothing_else_at_its_next_bind(
    edge: Edge, accounts: TwoAccounts, echo: EchoServer, agents: list[Agent]
) -> None:
    name = "kept"
    host = f"{name}.{BASE}"
    agent = web(edge, accounts.token_a, echo.port, name)
    agents.append(agent)
    agent.wait_bound()
    reserve_name(edge, accounts.member_b, host)  # B's own key: acts at A's next bind

    restart(edge)
    assert agent.proc.wait(BACK_WITHIN) == 4, agent.proc.text()
    text = agent.proc.text()
    assert f"RLY_207: http://{host}:{edge.http_port} is no longer served" in text, text
    assert "re-binding failed" not in text, text
