"""Joining an endpoint (a pool member, a link of one agent) on a single-process edge
(``Edge._take_over``, no workers):

* at most MAX_MEMBERS_PER_KEY members per endpoint, as under ``--workers``: one more is
  refused with RLY_201 (routing and leaving walk the members, per visitor); the same
  link coming back still takes its own place;
* one Host rewrite per endpoint: a member joining live members with another
  ``--host-header`` (or none where they have one) is refused with RLY_204, since every
  visitor gets the endpoint's rewrite whichever member serves it; once no other member is
  live, the newcomer's rewrite replaces the endpoint's.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from relay.config import EdgeConfig
from relay.edge.members import MAX_MEMBERS_PER_KEY
from relay.edge.registry import Holder
from relay.edge.routes import HostEndpoint
from relay.edge.server import Edge
from relay.errors import BindError, EndpointAlreadyBound

TOKEN = "tok_pool"


def session(name: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        session_id=name, endpoints={}, accepting_visitors=True, link=types.SimpleNamespace()
    )


def member(agent: str, link: int = 0) -> Holder:
    return Holder(TOKEN, agent, session(f"s_{agent}_{link}"), link, True)


@pytest.fixture
def edge(tmp_path: Path) -> Edge:
    made = Edge(EdgeConfig(data_dir=tmp_path))
    assert made.worker is None and made.cluster is None  # one process: no supervisor
    return made


def bound(
    edge: Edge, first: Holder, rewrite: bytes | None = None, name: str = "app.relay.localhost"
) -> HostEndpoint:
    endpoint = HostEndpoint(
        "ep_" + name.split(".")[0], "http", name, first, "http://x", host_rewrite=rewrite
    )
    edge.registry.claim(endpoint.key, first)
    edge.by_key[endpoint.key] = endpoint
    edge.endpoints[endpoint.endpoint_id] = endpoint
    return endpoint


def join(edge: Edge, endpoint: HostEndpoint, newcomer: Holder, rewrite: bytes | None) -> None:
    if rewrite is None:
        edge._take_over(endpoint, newcomer, newcomer.session)
    else:
        edge._take_over(endpoint, newcomer, newcomer.session, rewrite)


def test_a_member_past_the_cap_is_refused_on_a_single_process_edge(edge: Edge) -> None:
    endpoint = bound(edge, member("a_0"))
    for i in range(1, MAX_MEMBERS_PER_KEY):
        join(edge, endpoint, member(f"a_{i}"), None)
    assert len(endpoint.members) == MAX_MEMBERS_PER_KEY
    late = member("a_late")
    with pytest.raises(BindError) as refused:
        join(edge, endpoint, late, None)
    assert refused.value.code == "RLY_201"
    assert str(refused.value) == (
        f"http:app.relay.localhost has {MAX_MEMBERS_PER_KEY} members (links and pooled "
        "agents), the most one endpoint may have on one edge process"
    )
    assert late not in endpoint.members and not late.session.endpoints
    # A member's own link coming back replaces itself: no room needed.
    back = member("a_7")
    join(edge, endpoint, back, None)
    assert back in endpoint.members and len(endpoint.members) == MAX_MEMBERS_PER_KEY


def test_a_member_with_another_host_rewrite_is_refused_while_others_serve(edge: Edge) -> None:
    first = member("a_1")
    endpoint = bound(edge, first, b"one.internal")
    with pytest.raises(EndpointAlreadyBound) as refused:
        join(edge, endpoint, member("a_2"), b"two.internal")
    assert refused.value.code == "RLY_204"
    assert str(refused.value) == (
        "app.relay.localhost is served by members with --host-header one.internal; a member "
        "joins with the same Host rewrite as theirs"
    )
    with pytest.raises(EndpointAlreadyBound, match="a member joins with the same Host"):
        join(edge, endpoint, member("a_3"), None)  # no rewrite where they have one
    assert [m.agent_id for m in endpoint.members] == ["a_1"]
    same = member("a_4")
    join(edge, endpoint, same, b"one.internal")
    assert [m.agent_id for m in endpoint.members] == ["a_1", "a_4"]
    assert endpoint.host_rewrite == b"one.internal"

    # No rewrite on the endpoint: a member joining with one is refused too.
    plain = bound(edge, member("b_1"), name="plain.relay.localhost")
    with pytest.raises(EndpointAlreadyBound, match="members with no --host-header"):
        join(edge, plain, member("b_2"), b"two.internal")


def test_with_no_live_member_left_the_newcomers_rewrite_holds(edge: Edge) -> None:
    first = member("a_1")
    endpoint = bound(edge, first, b"one.internal")
    first.session = None  # its agent is gone: the endpoint waits (orphaned)
    taker = member("a_2")
    join(edge, endpoint, taker, b"two.internal")
    assert endpoint.members == [taker] and endpoint.host_rewrite == b"two.internal"
