"""A name belongs to one token across http, https and tls; a name outside the edge's base
domain, or a wildcard, is bound only by the account that reserved it, and a token's bind
ACL narrows what it binds; refused binds are audited."""

from __future__ import annotations

import pytest

from tests.e2e.http_helpers import curl, web_agent
from tests.e2e.origin import Origin
from tests.e2e.procs import Agent, Edge


def refused(edge: Edge, token: str, upstream: int, *flags: str, kind: str = "http") -> Agent:
    agent = Agent(edge, token, str(upstream), kind=kind, extra=list(flags))
    try:
        agent.proc.wait(30)
    finally:
        agent.stop()
    return agent


def refusals(edge: Edge) -> list[dict[str, object]]:
    return edge.audit_details("bind.refuse")


@pytest.mark.timeout(120)
def test_a_name_served_over_https_cannot_be_taken_over_http_by_another_token(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    owner = web_agent(edge, agents, str(origin.port), "--subdomain", "shop")
    assert owner.url.startswith("https://shop.relay.localhost:")
    _, other_token = edge.token()
    squatter = refused(edge, other_token, origin.port, "--subdomain", "shop", "--no-https")
    assert squatter.proc.proc.returncode == 4, squatter.proc.text()
    assert "RLY_204" in squatter.proc.text()
    # Plain-HTTP visitors of the name are still redirected to the owner's HTTPS.
    got = curl(
        f"http://shop.relay.localhost:{edge.http_port}/x",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
    )
    assert got.stdout.decode().startswith("308 https://shop.relay.localhost:"), got
    assert [r["code"] for r in refusals(edge)] == ["RLY_204"]


@pytest.mark.timeout(120)
def test_the_same_token_may_serve_a_name_over_http_and_https(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    _, token = edge.token()
    secure = Agent(edge, token, str(origin.port), kind="http", extra=["--subdomain", "both"])
    plain = Agent(
        edge, token, str(origin.port), kind="http", extra=["--subdomain", "both", "--no-https"]
    )
    agents += [secure, plain]
    secure.wait_bound()
    plain.wait_bound()
    assert plain.url.startswith("http://both.relay.localhost:")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "domain", ["www.google.com", "*.relay.localhost", "*.example.com"], ids=str
)
def test_a_custom_domain_or_wildcard_nobody_reserved_is_refused_whatever_the_acl(
    edge: Edge, origin: Origin, domain: str
) -> None:
    _, token = edge.token("--allow", "*", "--allow", domain)
    agent = refused(edge, token, origin.port, "--domain", domain, "--no-https")
    assert agent.proc.proc.returncode == 4, agent.proc.text()
    assert "RLY_207" in agent.proc.text()
    assert "not reserved for this token's account" in agent.proc.text()
    assert f"relay domains reserve {domain}" in agent.proc.text()
    [refusal] = refusals(edge)
    assert refusal["code"] == "RLY_207" and refusal["target"] == domain


@pytest.mark.timeout(120)
def test_an_acl_entry_for_a_reserved_wildcard_grants_it_and_nothing_else(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    edge.reserve_domain("*.wild.test")  # for the default account, the token's
    _, token = edge.token("--allow", "*.wild.test")
    wildcard = Agent(
        edge, token, str(origin.port), kind="http", extra=["--domain", "*.wild.test", "--no-https"]
    )
    agents.append(wildcard)
    wildcard.wait_bound()
    got = curl(f"http://app.wild.test:{edge.http_port}/hello")
    assert got.returncode == 0 and b"origin ok /hello" in got.stdout, got
    # The entry names that wildcard only: the base domain's names are not in it.
    agent = refused(edge, token, origin.port, "--subdomain", "mine", "--no-https")
    assert "RLY_205" in agent.proc.text()
