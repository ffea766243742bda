"""How a name may be shared across the nodes of a cluster: each node publishes with each
name a sixth field, ``pool`` (every member pools) or ``agent:<agent id>`` (one agent's
links hold it), read strictly by every other node (relay/cluster/presence.py); a bind on
a node is refused when one edge would refuse it (relay/edge/cluster.py ``_claim``, the
rule of relay/edge/members.py ``admit``).

The rule itself is a pure function, checked here against ``admit`` over every small
membership: it is what lets the links of one agent on two PoPs share a name (an
end-to-end test of that is in tests/e2e/test_cluster_pools_follow_one_edge_rules.py).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.cluster import presence as presence_module
from relay.cluster.presence import (
    AGENT_ID_RE,
    NodeInfo,
    RemoteName,
    _parse,
    may_share,
    share_of,
)
from relay.edge import session as session_module
from relay.edge.cluster import ClusterNode, endpoint_share, owner_tag
from relay.edge.members import add, admit
from relay.edge.registry import Holder
from relay.errors import EndpointAlreadyBound

LONGEST_ID = "a" * 64


def parsed(*names: list[Any]) -> list[RemoteName] | None:
    """What a node reading ``names`` (inline in a node key) takes of them."""
    raw = json.dumps({"region": "eu", "link": "10.0.0.2:7400", "names": list(names)})
    result = _parse("b", raw.encode(), None)
    assert result is not presence_module._NAMES_MISSING
    return None if result is None else result[1]


# --- the field, parsed strictly ---------------------------------------------------------


@pytest.mark.parametrize(
    "share",
    ["pool", "agent:a_0123456789abcdef", "agent:" + LONGEST_ID, "agent:!~", "agent:x"],
)
def test_a_well_formed_share_is_read(share: str) -> None:
    names = parsed(["http", "app.example.com", "http", "", "owner1", share])
    assert names is not None
    assert [(n.hostname, n.owner, n.share) for n in names] == [("app.example.com", "owner1", share)]


def test_a_name_of_five_fields_says_no_share() -> None:
    """A node of an older version: its names are read, checked by their owner alone."""
    names = parsed(["tcp", "20001", "tcp", "", "owner1"])
    assert names is not None and names[0].share == ""
    assert may_share(names[0].share, "anyone", pooled=False)


@pytest.mark.parametrize(
    "share",
    [
        "",
        "pools",
        "Pool",
        " pool",
        "pool ",
        "agent:",
        "agent",
        "AGENT:x",
        "agent:" + LONGEST_ID + "b",  # an agent id is at most 64 characters
        "agent:a b",
        "agent:a\tb",
        "agent:a\x7f",
        "agent:\u00e9t\u00e9",
        "agent:a\n",
        "owner1",
        "x" * 10_000,
        1,
        None,
        True,
        ["pool"],
        {"agent": "x"},
    ],
)
def test_a_malformed_share_leaves_the_whole_entry_out(share: object) -> None:
    good = ["http", "ok.example.com", "http", "", "owner1", "pool"]
    bad = ["http", "app.example.com", "http", "", "owner1", share]
    assert parsed(good, bad) is None
    assert parsed(bad) is None


@pytest.mark.parametrize(
    "item",
    [
        ["http", "app.example.com", "http", "", "owner1", "pool", "pool"],  # seven
        ["http", "app.example.com", "http", "", "owner1", "pool", ""],
        ["http", "app.example.com", "http", ""],
        ["http", "app.example.com", "http", "", "owner1", "agent:" + "x" * 300],
    ],
)
def test_a_name_of_another_length_is_refused(item: list[Any]) -> None:
    assert parsed(item) is None


def test_the_agent_id_rule_is_the_edge_s() -> None:
    """This floor does not import the edge: its copy of the rule must stay the same."""
    assert AGENT_ID_RE.pattern == session_module.AGENT_ID_RE.pattern


# --- the rule ---------------------------------------------------------------------------


def test_what_shares_with_what() -> None:
    assert share_of(True, "a1") == "pool"
    assert share_of(False, "a1") == "agent:a1"
    # Pooled agents share; one that does not pool shares with no pool.
    assert may_share("pool", "a2", pooled=True)
    assert not may_share("pool", "a2", pooled=False)
    # An unpooled holder shares with its own agent's links only, pooled or not.
    assert may_share("agent:a1", "a1", pooled=False)
    assert may_share("agent:a1", "a1", pooled=True)
    assert not may_share("agent:a1", "a2", pooled=False)
    assert not may_share("agent:a1", "a2", pooled=True)
    assert not may_share("agent:a1", "a10", pooled=False)  # whole ids, not prefixes


@dataclass
class FakeEndpoint:
    """What relay/edge/members.py needs of an endpoint."""

    holder: Holder
    members: list[Holder] = field(default_factory=list)
    turn: int = 0

    @property
    def key(self) -> str:
        return "http:app.example.com"

    def __post_init__(self) -> None:
        self.members = [self.holder]


AGENTS = ["a1", "a2", "a3"]
#: (agent, link): an agent's links share its flags, so whether it pools is the agent's.
LINK = st.tuples(st.sampled_from(AGENTS), st.integers(0, 2))


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries({a: st.booleans() for a in AGENTS}),
    st.lists(LINK, min_size=1, max_size=6),
    LINK,
)
def test_a_node_s_share_answers_as_one_edge_would(
    pools: dict[str, bool], joined: list[tuple[str, int]], newcomer: tuple[str, int]
) -> None:
    """An endpoint built by one edge's rule (its members admitted one by one), then
    summed up as its node publishes it: a newcomer of the token on another node is let
    in exactly when that edge would admit it beside them. The newcomer is a link the
    endpoint does not have (the same link again is a reconnect, handled where the link
    was)."""
    session = object()  # live: every member here takes visitors
    (agent, link), *rest = joined
    endpoint = FakeEndpoint(Holder("t1", agent, session, link, pools[agent]))
    for agent, link in rest:
        member = Holder("t1", agent, session, link, pools[agent])
        try:
            replaced = admit(endpoint, member)
        except EndpointAlreadyBound:
            continue
        add(endpoint, member, replaced)
    agent, link = newcomer
    if any(m.agent_id == agent and m.link == link for m in endpoint.members):
        return
    try:
        admit(endpoint, Holder("t1", agent, session, link, pools[agent]))
        one_edge = True
    except EndpointAlreadyBound:
        one_edge = False
    across = may_share(endpoint_share(endpoint), agent, pools[agent])
    assert across == one_edge, (endpoint.members, newcomer)


def test_an_endpoint_s_share_counts_its_live_members() -> None:
    live, gone = object(), None
    endpoint = FakeEndpoint(Holder("t1", "a1", live, 0, True))
    endpoint.members.append(Holder("t1", "a2", gone, 0, False))  # orphaned: not counted
    assert endpoint_share(endpoint) == "pool"
    endpoint.members.append(Holder("t1", "a1", live, 1, False))
    assert endpoint_share(endpoint) == "agent:a1"


# --- the check at bind time -------------------------------------------------------------


class FakePresence:
    """A table of other nodes' holds, and a Redis claim that always grants."""

    def __init__(self, held: list[RemoteName]) -> None:
        self.held = held
        self.claimed: list[str] = []

    def lookup(self, family: str, hostname: str) -> RemoteName | None:
        found = self.holders(family, hostname)
        return found[0] if found else None

    def holders(self, family: str, hostname: str) -> list[RemoteName]:
        return [n for n in self.held if (n.family, n.hostname) == (family, hostname)]

    async def claim(self, key: str, owner: str) -> str | None:
        self.claimed.append(key)
        return None


def node_with(held: list[RemoteName], worker: int | None = None) -> tuple[ClusterNode, Any]:
    config = SimpleNamespace(region="eu", node_id="eu1", listen="127.0.0.1:7000")
    edge = SimpleNamespace(
        config=config,
        pop_name="eu1",
        worker=None if worker is None else SimpleNamespace(index=worker),
    )
    node = ClusterNode(edge)  # type: ignore[arg-type]
    presence = FakePresence(held)
    node.presence = presence  # type: ignore[assignment]
    return node, presence


def held_by(
    node_id: str,
    share: str,
    family: str = "http",
    name: str = "app.example.com",
    rewrite: str = "",
) -> RemoteName:
    kind = {"http": "http", "sni": "https", "tcp": "tcp"}[family]
    return RemoteName(
        family,
        name,
        kind,
        rewrite,
        NodeInfo(node_id, "eu", "10.0.0.9:7400"),
        owner_tag("t1"),
        share,
    )


def bind(
    node: ClusterNode, family: str, agent: str | None, pooled: bool, rewrite: str = ""
) -> bool:
    async def go() -> bool:
        if family == "tcp":
            return await node.claim_port(20001, "t1", agent, pooled)
        return await node.claim_name("app.example.com", "t1", family, agent, pooled, rewrite)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("share", "agent", "pooled", "granted"),
    [
        ("agent:a1", "a2", False, False),  # a second instance: refused
        ("agent:a1", "a2", True, False),  # pooled on one side only
        ("pool", "a2", False, False),
        ("pool", "a2", True, True),  # a pool
        ("agent:a1", "a1", False, True),  # the agent's own link on another PoP
        ("", "a2", False, True),  # a node of an older version: the owner alone
    ],
)
@pytest.mark.parametrize("family", ["http", "sni", "tcp"])
def test_a_bind_is_refused_as_one_edge_refuses_it(
    share: str, agent: str, pooled: bool, granted: bool, family: str
) -> None:
    name = "20001" if family == "tcp" else "app.example.com"
    node, presence = node_with([held_by("b", share, family, name)])
    if granted:
        assert bind(node, family, agent, pooled)
        assert len(presence.claimed) == 1
        return
    with pytest.raises(EndpointAlreadyBound) as refused:
        bind(node, family, agent, pooled)
    assert refused.value.code == "RLY_204"
    assert "bound by another agent session (on node b)" in str(refused.value)
    assert presence.claimed == []  # refused before any claim is made in Redis


def test_only_the_same_front_counts() -> None:
    """On one edge an http name and the TLS port's are two endpoints: an unpooled agent
    holding one does not stop another agent of the token binding the other."""
    node, _ = node_with([held_by("b", "agent:a1", "sni")])
    assert bind(node, "http", "a2", False)


def test_every_holder_is_checked_not_only_the_first() -> None:
    node, _ = node_with([held_by("b", "pool"), held_by("c", "agent:a1")])
    with pytest.raises(EndpointAlreadyBound, match="on node c"):
        bind(node, "http", "a2", True)


def test_without_the_binding_agent_only_the_owner_is_compared() -> None:
    """The edge not saying which agent binds (an older caller): the earlier rule."""
    node, _ = node_with([held_by("b", "agent:a1")])
    assert bind(node, "http", None, False)


def test_a_sibling_worker_s_hold_is_left_to_the_supervisor() -> None:
    """Under --workers the supervisor applies the rule across the host's workers with
    what each holds now; a stale row of a sibling here must not refuse first."""
    node, _ = node_with([held_by("eu1.w0", "agent:a1")], worker=1)
    assert bind(node, "http", "a2", False)
    node, _ = node_with([held_by("eu2.w0", "agent:a1")], worker=1)
    with pytest.raises(EndpointAlreadyBound):
        bind(node, "http", "a2", False)


# --- one Host rewrite per pooled name, across nodes -------------------------------------


@pytest.mark.parametrize("family", ["http", "sni"])
@pytest.mark.parametrize(
    ("theirs", "mine", "said"),
    [
        ("internal.local", "", "with --host-header internal.local;"),
        ("", "internal.local", "with no --host-header;"),
        ("internal.local", "other.local", "with --host-header internal.local;"),
    ],
)
def test_a_pool_member_with_another_host_rewrite_on_another_node_is_refused(
    family: str, theirs: str, mine: str, said: str
) -> None:
    """One edge refuses it (relay/edge/server.py ``_check_rewrite``): were it let in on
    another node, which node took a visitor would decide the Host its upstream saw."""
    node, presence = node_with([held_by("b", "pool", family, rewrite=theirs)])
    with pytest.raises(EndpointAlreadyBound) as refused:
        bind(node, family, "a2", True, mine)
    assert refused.value.code == "RLY_204"
    assert said in str(refused.value) and "(on node b)" in str(refused.value)
    assert presence.claimed == []  # refused before any claim is made in Redis


def test_a_pool_member_with_the_same_host_rewrite_joins_on_another_node() -> None:
    node, presence = node_with([held_by("b", "pool", rewrite="internal.local")])
    assert bind(node, "http", "a2", True, "internal.local")
    assert presence.claimed == ["app.example.com"]


def test_every_pool_row_s_rewrite_is_checked() -> None:
    held = [held_by("b", "pool", rewrite="x.local"), held_by("c", "pool", rewrite="y.local")]
    node, _ = node_with(held)
    with pytest.raises(EndpointAlreadyBound, match="on node c"):
        bind(node, "http", "a2", True, "x.local")


def test_the_agent_s_own_row_is_not_compared_by_its_rewrite() -> None:
    """An agent's links share its flags (an agent id is one process's): a row under the
    binding agent's own id is one of its own links, never a member with another rewrite,
    so it is not compared (one edge compares only other agents' members too)."""
    node, _ = node_with([held_by("b", "agent:a1", rewrite="old.local")])
    assert bind(node, "http", "a1", False, "new.local")


def test_a_sibling_worker_s_rewrite_is_left_to_the_supervisor() -> None:
    """The supervisor's claim table compares the host's workers' rewrites with what each
    holds now (relay/cluster/claims.py); a stale row here must not refuse first."""
    node, _ = node_with([held_by("eu1.w0", "pool", rewrite="x.local")], worker=1)
    assert bind(node, "http", "a2", True, "")
