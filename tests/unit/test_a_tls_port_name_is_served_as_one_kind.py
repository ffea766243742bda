"""A name on the TLS port is one kind of endpoint, https (the edge terminates TLS) or tls
(passed through), wherever its members are: a pool member binding it as the other kind
is refused with RLY_204, on one edge (``Edge._bind_host_claimed``), across workers (the
supervisor's ``ClaimTable``) and across nodes (``ClusterNode._check_shares``). Were it
let in, which worker or node took a visitor would decide whether its TLS is terminated.
"""

from __future__ import annotations

import asyncio
import types
from pathlib import Path

import pytest

from relay.cluster.claims import ClaimTable, Member, kind_refused
from relay.cluster.presence import NodeInfo, RemoteName
from relay.config import EdgeConfig
from relay.edge.cluster import owner_tag
from relay.edge.registry import Holder
from relay.edge.routes import HostEndpoint
from relay.edge.server import Edge
from relay.errors import EndpointAlreadyBound
from relay.protocol import Bind
from tests.unit.test_cluster_name_shares import node_with

NAME = "app.example.com"


def test_the_message_names_the_kind_the_members_serve() -> None:
    assert kind_refused(NAME, "https") == (
        "app.example.com is served as a https endpoint; a member joins as the same kind"
    )


def one_edge(tmp_path: Path, theirs: str, token: str = "t1") -> tuple[Edge, HostEndpoint]:
    """A single-process edge whose TLS port serves ``NAME`` as ``theirs`` for agent a1 of
    ``token``, pooled."""
    edge = Edge(EdgeConfig(data_dir=tmp_path))
    released: list[str] = []
    edge.web = types.SimpleNamespace(
        public_port=lambda kind: 443, certificate_released=released.append, released=released
    )
    first = Holder(token, "a1", types.SimpleNamespace(endpoints={}), 0, True)
    endpoint = HostEndpoint("ep_1", theirs, NAME, first, f"{theirs}://{NAME}")
    edge.registry.claim(endpoint.key, first)
    edge.by_key[endpoint.key] = endpoint
    edge.endpoints[endpoint.endpoint_id] = endpoint
    return edge, endpoint


def bind_on(edge: Edge, kind: str, pooled: bool = True, token: str = "t1") -> HostEndpoint:
    session = types.SimpleNamespace(
        endpoints={}, session_id="s_2", account_id="acc_1", limited=True
    )
    newcomer = Holder(token, "a2", session, 0, pooled)
    request = Bind(request_id=1, kind=kind, domain=NAME, pool=pooled)
    # The name is held here: no place was taken for it (the bind joins or takes over).
    return edge._bind_host_claimed(session, request, NAME, "sni", newcomer, {}, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("theirs", "mine"), [("https", "tls"), ("tls", "https")])
def test_one_edge_refuses_a_member_of_the_other_kind(
    tmp_path: Path, theirs: str, mine: str
) -> None:
    edge, endpoint = one_edge(tmp_path, theirs)
    first = endpoint.members[0]
    with pytest.raises(EndpointAlreadyBound) as refused:
        bind_on(edge, mine)
    assert refused.value.code == "RLY_204"
    assert str(refused.value) == kind_refused(NAME, theirs)
    assert endpoint.members == [first] and endpoint.kind == theirs
    joined = bind_on(edge, theirs)  # the same kind joins
    assert joined is endpoint and len(endpoint.members) == 2


def test_one_edge_asks_who_binds_before_it_compares_kinds(tmp_path: Path) -> None:
    """Another token's agent, or an agent not in the pool, hears why it may not share
    the name at all, not what kind another account serves it as."""
    edge, _ = one_edge(tmp_path, "https", token="t_other")
    with pytest.raises(EndpointAlreadyBound, match="bound by another token"):
        bind_on(edge, "tls")
    edge, _ = one_edge(tmp_path, "https")
    with pytest.raises(EndpointAlreadyBound, match="bound by another agent session"):
        bind_on(edge, "tls", pooled=False)


def test_a_name_kept_for_an_agent_that_is_gone_takes_the_newcomer_s_kind(
    tmp_path: Path,
) -> None:
    """As the supervisor and the cluster decide: nothing serves it, so the agent of the
    token that binds it now (its kind changed with its config) takes it as its kind."""
    edge, endpoint = one_edge(tmp_path, "https")
    endpoint.members[0].session = None  # orphaned, in its grace
    taken = bind_on(edge, "tls")
    assert taken is endpoint and endpoint.kind == "tls"
    assert endpoint.url == f"tls://{NAME}" and [m.agent_id for m in endpoint.members] == ["a2"]
    assert edge.web.released == [NAME]  # a tls endpoint needs no certificate: let go now


def test_pooled_members_on_any_worker_serve_one_kind() -> None:
    table = ClaimTable()
    key = f"sni:{NAME}"
    assert table.claim(key, "t1", Member(0, "a1", pooled=True), kind="https").granted
    verdict = table.claim(key, "t1", Member(1, "a2", pooled=True), kind="tls")
    assert not verdict.granted and verdict.why == kind_refused(NAME, "https")
    assert table.claim(key, "t1", Member(1, "a3", pooled=True), kind="https").granted
    # Every member gone: the next agent's kind is the key's.
    for worker in (0, 1):
        table.apply_state(worker, key, "t1", [], False)
    assert table.claim(key, "t1", Member(1, "a4", pooled=True), kind="tls").granted
    assert not table.claim(key, "t1", Member(0, "a5", pooled=True), kind="https").granted
    # A worker's report is the last word on it too.
    table.apply_state(1, key, "t1", [Member(1, "a4", pooled=True)], True, kind="https")
    assert table.claim(key, "t1", Member(0, "a6", pooled=True), kind="https").granted


def held_as(kind: str, share: str = "pool", node_id: str = "b") -> RemoteName:
    info = NodeInfo(node_id, "eu", "10.0.0.9:7400")
    return RemoteName("sni", NAME, kind, "", info, owner_tag("t1"), share)


def bind(node: object, agent: str, kind: str) -> bool:
    async def go() -> bool:
        return await node.claim_name(NAME, "t1", "sni", agent, True, "", kind)  # type: ignore[attr-defined]

    return asyncio.run(go())


@pytest.mark.parametrize(("theirs", "mine"), [("https", "tls"), ("tls", "https")])
def test_a_pool_member_of_the_other_kind_on_another_node_is_refused(theirs: str, mine: str) -> None:
    node, presence = node_with([held_as(theirs)])
    with pytest.raises(EndpointAlreadyBound) as refused:
        bind(node, "a2", mine)
    assert refused.value.code == "RLY_204"
    assert str(refused.value) == kind_refused(NAME, theirs) + " (on node b)"
    assert presence.claimed == []  # refused before any claim is made in Redis
    node, presence = node_with([held_as(theirs)])
    assert bind(node, "a2", theirs)  # the same kind joins
    assert len(presence.claimed) == 1


def test_the_agent_s_own_row_and_a_sibling_worker_s_are_not_compared_by_kind() -> None:
    """The agent's own links share its spec (another kind under its id is a stale row);
    the host's sibling workers are the supervisor's to compare."""
    node, _ = node_with([held_as("https", share="agent:a1")])
    assert bind(node, "a1", "tls")
    node, _ = node_with([held_as("https", node_id="eu1.w0")], worker=1)
    assert bind(node, "a2", "tls")
