"""One account cannot spend the edge's ACME orders (``cert_orders_per_account``).

A real edge with ``cert_issuer: acme`` and pebble (real validation), its quota set to 2
orders per account in its configuration file. Account team-a's agents bind three https
names: two are ordered and issued, the third is not ordered at all (pebble sees no order
for it); its agent hears RLY_807, the quota and when it is ordered. An agent of another
account binding a name after that gets its certificate as if nothing happened. The count
of orders is what an HTTPS proxy in front of pebble saw. Everything on 127.0.0.1; every
process is stopped by PID.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.e2e.api_calls import Keys
from tests.e2e.http_helpers import web_agent
from tests.e2e.origin import Origin
from tests.e2e.pebble import (
    AcmeProxy,
    Pebble,
    acme_flags,
    needs_pebble,
    verified_leaf,
    wait_lines,
)
from tests.e2e.procs import Agent, Edge
from tests.e2e.test_certificates_heal import wait_for_leaf

pytestmark = [
    needs_pebble,
    pytest.mark.slow,
]


def token_of_a_new_account(edge: Edge, name: str) -> str:
    keys = Keys(edge)
    try:
        account = keys.store.create_account(name, actor="test")
        _, token = keys.store.create_token(account_id=account.id, pepper=keys.pepper, actor="test")
    finally:
        keys.close()
    return token


@pytest.mark.timeout(240)
def test_an_account_past_its_quota_waits_while_another_gets_its_certificate(
    tmp_path: Path, origin: Origin, agents: list[Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PEBBLE_VA_ALWAYS_VALID", raising=False)
    config = tmp_path / "edge.yml"
    config.write_text(yaml.safe_dump({"cert_orders_per_account": 2}))
    edge = Edge(tmp_path / "edge")
    pebble = Pebble(
        tmp_path / "pebble",
        http_port=edge.http_port,
        tls_port=edge.https_port,
        env={"PEBBLE_WFE_NONCEREJECT": "0"},  # no badNonce: every order here is counted
    )
    with pebble, AcmeProxy(pebble) as proxy:
        edge.extra = [*acme_flags(proxy.directory_url, pebble.ca_bundle), "--config", str(config)]
        try:
            edge.start()
            token_a = token_of_a_new_account(edge, "team-a")
            root_pem = pebble.root_pem()
            first = ["a1.relay.test", "a2.relay.test"]
            for name in first:
                agent = Agent(edge, token_a, origin.port, kind="http", extra=["--domain", name])
                agents.append(agent)
                agent.wait_bound()
            for name in first:
                wait_for_leaf(edge.https_port, name, root_pem)
            assert len(proxy.order_times()) == 2, proxy.orders

            third = Agent(
                edge, token_a, origin.port, kind="http", extra=["--domain", "a3.relay.test"]
            )
            agents.append(third)
            third.wait_bound()  # bound: only its certificate waits
            told = wait_lines(
                third.proc, "Certificate for a3.relay.test: not issued: error RLY_807", timeout=30
            )
            assert "started 2 certificate orders in the last 3 h" in told[0], told
            assert "cert_orders_per_account" in told[0] and "retrying in" in told[0], told

            # The default account is another tenant: its name is ordered and issued.
            other = web_agent(edge, agents, str(origin.port), "--domain", "b1.relay.test")
            wait_lines(other.proc, "Certificate for b1.relay.test: issued (acme", timeout=90)
            leaf = verified_leaf(edge.https_port, "b1.relay.test", root_pem)
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.DNSName) == ["b1.relay.test"]  # pebble's
            # Three orders in all: a3 was never ordered.
            assert len(proxy.order_times()) == 3, proxy.orders
            # The edge said so once, in its log, for the account.
            assert edge.proc is not None
            assert edge.proc.text().count("RLY_807") == 1, edge.proc.text()
        except BaseException:
            print(pebble.output())
            raise
        finally:
            for agent in agents:
                agent.stop()
            edge.stop()
