"""The supervisor's claim table (relay/cluster/claims.py): a name or port has one owner
across the workers, by the single edge's rules; links of one agent and pooled agents of
one token share it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from relay.cluster.claims import ClaimTable, Member, rewrite_refused


def test_a_free_key_goes_to_whoever_asks() -> None:
    table = ClaimTable()
    verdict = table.claim("http:a.example", "t1", Member(0, "agent1"))
    assert verdict.granted and verdict.dropped == ()
    assert table.live_workers("http:a.example") == [0]


def test_another_token_is_refused_on_every_worker() -> None:
    table = ClaimTable()
    table.claim("tcp:20001", "t1", Member(0, "agent1"))
    for worker in (0, 1, 2):
        verdict = table.claim("tcp:20001", "t2", Member(worker, "agent2"))
        assert not verdict.granted
        assert "another token" in verdict.why
    assert table.live_workers("tcp:20001") == [0]


def test_a_name_has_one_owner_across_http_and_the_tls_port() -> None:
    table = ClaimTable()
    table.claim("sni:s.example", "t1", Member(0, "agent1"))
    assert not table.claim("http:s.example", "t2", Member(1, "agent2")).granted
    assert table.claim("http:s.example", "t1", Member(1, "agent1")).granted


def test_the_same_link_takes_its_place_to_the_worker_it_reconnected_to() -> None:
    table = ClaimTable()
    table.claim("http:a.example", "t1", Member(0, "agent1"))
    verdict = table.claim("http:a.example", "t1", Member(1, "agent1"))
    assert verdict.granted and verdict.dropped == (Member(0, "agent1"),)
    assert table.live_workers("http:a.example") == [1]


def test_links_of_one_agent_share_a_key_across_workers() -> None:
    table = ClaimTable()
    table.claim("tcp:20001", "t1", Member(0, "agent1", link=0))
    verdict = table.claim("tcp:20001", "t1", Member(1, "agent1", link=1))
    assert verdict.granted and verdict.dropped == ()
    assert table.live_workers("tcp:20001") == [0, 1]
    # Link 1 comes back on worker 0: worker 1 drops it, and holds the key no more.
    verdict = table.claim("tcp:20001", "t1", Member(0, "agent1", link=1))
    assert verdict.dropped == (Member(1, "agent1", link=1),)
    assert table.live_workers("tcp:20001") == [0]


def test_pooled_agents_share_and_an_unpooled_one_does_not() -> None:
    table = ClaimTable()
    table.claim("http:p.example", "t1", Member(0, "a1", pooled=True))
    assert table.claim("http:p.example", "t1", Member(1, "a2", pooled=True)).granted
    assert not table.claim("http:p.example", "t1", Member(2, "a3")).granted
    assert not table.claim("http:p.example", "t2", Member(2, "a4", pooled=True)).granted
    assert table.live_workers("http:p.example") == [0, 1]


def orphaned(table: ClaimTable, worker: int, key: str, token: str, *members: Member) -> str:
    """``worker`` reports ``key``'s members, none live (their sessions ended)."""
    return table.apply_state(worker, key, token, list(members), False)


def test_pooled_members_on_any_worker_share_one_host_rewrite() -> None:
    """As on one edge (relay/edge/server.py ``_check_rewrite``): which worker took a
    visitor must not decide the Host its upstream sees."""
    table = ClaimTable()
    key = "http:p.example"
    assert table.claim(key, "t1", Member(0, "a1", pooled=True), "one.internal").granted
    for rewrite in ("two.internal", None):
        verdict = table.claim(key, "t1", Member(1, "a2", pooled=True), rewrite)
        assert not verdict.granted
        assert verdict.why == rewrite_refused("p.example", "one.internal")
    assert table.claim(key, "t1", Member(1, "a3", pooled=True), "one.internal").granted
    # Every member gone (their workers say so): the next agent's rewrite is the key's.
    for worker in (0, 1):
        table.apply_state(worker, key, "t1", [], False)
    assert table.claim(key, "t1", Member(1, "a4", pooled=True), None).granted
    assert not table.claim(key, "t1", Member(0, "a5", pooled=True), "one.internal").granted
    # A worker's report is the last word on it too.
    table.apply_state(1, key, "t1", [Member(1, "a4", pooled=True)], True, rewrite="three")
    assert table.claim(key, "t1", Member(0, "a6", pooled=True), "three").granted


def test_another_agent_of_the_token_waits_until_no_worker_holds_it_live() -> None:
    table = ClaimTable()
    table.claim("http:a.example", "t1", Member(0, "agent1"))
    assert not table.claim("http:a.example", "t1", Member(1, "agent2")).granted
    assert orphaned(table, 0, "http:a.example", "t1", Member(0, "agent1")) == "changed"
    assert table.live_workers("http:a.example") == []
    verdict = table.claim("http:a.example", "t1", Member(1, "agent2"))
    assert verdict.granted and verdict.dropped == (Member(0, "agent1"),)


def test_a_dead_workers_names_wait_for_their_agents_then_are_free() -> None:
    table = ClaimTable()
    table.claim("http:a.example", "t1", Member(0, "agent1"))
    table.claim("tcp:20001", "t1", Member(1, "agent1"))
    down = table.worker_down(0)
    assert down.changed == ["http:a.example"]
    # Within the grace: another token is refused, the agent itself (on any worker) not.
    assert not table.claim("http:a.example", "t2", Member(2, "agent2")).granted
    assert table.forget_orphans(down) == ["http:a.example"]
    assert table.claim("http:a.example", "t2", Member(2, "agent2")).granted
    assert table.live_workers("tcp:20001") == [1]


def test_a_dead_workers_agent_coming_back_keeps_its_name_past_the_grace() -> None:
    table = ClaimTable()
    table.claim("http:a.example", "t1", Member(0, "agent1"))
    down = table.worker_down(0)
    verdict = table.claim("http:a.example", "t1", Member(1, "agent1"))
    assert verdict.granted and verdict.dropped == (Member(0, "agent1"),)
    assert table.forget_orphans(down) == []
    assert table.live_workers("http:a.example") == [1]


def test_a_name_orphaned_afresh_after_a_restart_outlives_the_earlier_deaths_grace() -> None:
    """Worker 1 dies; restarted, it takes its agent back, whose link then drops: the name
    is orphaned anew, and the timer of the first death must not free it for another
    token (on one edge it is refused for a full grace from the new orphaning)."""
    table = ClaimTable()
    table.claim("http:a.example", "t1", Member(1, "agent1"))
    first_death = table.worker_down(1)
    assert table.claim("http:a.example", "t1", Member(1, "agent1")).granted
    assert orphaned(table, 1, "http:a.example", "t1", Member(1, "agent1")) == "changed"
    assert table.forget_orphans(first_death) == []
    assert table.holders("http:a.example") == {1: False}
    verdict = table.claim("http:a.example", "t2", Member(0, "agent2"))
    assert not verdict.granted and "another token" in verdict.why
    # The worker's own orphan timer frees it when its grace runs out; or, should the
    # worker die first, the grace of that death does.
    second_death = table.worker_down(1)
    assert second_death.changed == []
    assert table.forget_orphans(second_death) == ["http:a.example"]
    assert table.claim("http:a.example", "t2", Member(0, "agent2")).granted


def test_a_name_orphaned_before_its_worker_died_goes_with_that_deaths_grace() -> None:
    """The worker kept the orphan's timer, and it died with the worker: the grace of the
    death frees the name, which no restarted worker knows of."""
    table = ClaimTable()
    table.claim("tcp:20001", "t1", Member(0, "agent1"))
    orphaned(table, 0, "tcp:20001", "t1", Member(0, "agent1"))
    down = table.worker_down(0)
    assert down.changed == []
    assert table.forget_orphans(down) == ["tcp:20001"]
    assert table.held_keys() == []


def test_a_reports_last_word_wins_over_a_claim_it_crossed() -> None:
    """A claim granted to a bind that then failed (or was cancelled): the worker's next
    report says it holds nothing, and the name is free again."""
    table = ClaimTable()
    assert table.claim("http:a.example", "t1", Member(0, "agent1")).granted
    assert table.apply_state(0, "http:a.example", "", [], False) == "changed"
    assert table.held_keys() == []
    assert table.claim("http:a.example", "t2", Member(1, "agent2")).granted


def test_a_report_for_a_name_another_token_holds_is_a_conflict() -> None:
    table = ClaimTable()
    table.claim("sni:a.example", "t2", Member(1, "agent2"))
    outcome = table.apply_state(0, "http:a.example", "t1", [Member(0, "agent1")], True)
    assert outcome == "conflict"
    assert table.held_keys() == ["sni:a.example"]


def test_reports_by_a_non_holder_or_unchanged_change_nothing() -> None:
    table = ClaimTable()
    table.claim("http:a.example", "t1", Member(0, "agent1"))
    assert not table.release(1, "http:a.example")
    unchanged = table.apply_state(0, "http:a.example", "t1", [Member(0, "agent1")], True)
    assert unchanged == "same"
    assert table.live_workers("http:a.example") == [0]


def test_a_worker_whose_members_drain_gets_no_visitor_while_another_takes_them() -> None:
    """Visitors go where a member takes them: a worker whose pooled members all drain
    (a GoAway, a restart) still holds the key, but is left out of ``live_workers``
    while another worker's member takes visitors; when every one drains, the draining
    workers are all there is."""
    table = ClaimTable()
    key = "http:p.example"
    table.claim(key, "t1", Member(1, "a", pooled=True))
    table.claim(key, "t1", Member(2, "b", pooled=True))
    assert table.live_workers(key) == [1, 2]
    draining = [Member(1, "a", pooled=True)]
    assert table.apply_state(1, key, "t1", draining, live=True, taking=False) == "changed"
    assert table.live_workers(key) == [2]
    assert table.holders(key) == {1: True, 2: True}  # still held: no other token takes it
    assert table.apply_state(1, key, "t1", draining, live=True, taking=False) == "same"
    both = [Member(2, "b", pooled=True)]
    assert table.apply_state(2, key, "t1", both, live=True, taking=False) == "changed"
    assert table.live_workers(key) == [1, 2]
    # One takes visitors again (a member bound anew on worker 2): only it gets them.
    assert table.claim(key, "t1", Member(2, "c", pooled=True)).granted
    assert table.live_workers(key) == [2]
    # Gone, a draining worker's key is forgotten there, draining state and all.
    assert table.apply_state(1, key, "t1", [], live=False) == "changed"
    assert table.live_workers(key) == [2]


def test_a_member_that_left_is_forgotten() -> None:
    table = ClaimTable()
    table.claim("http:a.example", "t1", Member(0, "agent1", link=0))
    table.claim("http:a.example", "t1", Member(0, "agent1", link=1))
    table.apply_state(0, "http:a.example", "t1", [Member(0, "agent1", link=0)], True)
    assert table.members("http:a.example") == [Member(0, "agent1", link=0)]


def test_a_late_orphan_report_from_the_worker_a_link_left_keeps_one_owner() -> None:
    """Agent X's link 0 moves from worker 0 to worker 1. Before worker 0 reads its
    ``drop`` it reports the dead session orphaned: the link stays live on worker 1, and
    when worker 0 then lets go, worker 1 still holds the name for X. Another agent of the
    token is refused, as on one edge (it used to be granted: two owners of one name)."""
    table = ClaimTable()
    key, token = "http:a.example", "t1"
    assert table.claim(key, token, Member(0, "agent-x", 0)).granted
    table.apply_state(0, key, token, [Member(0, "agent-x", 0)], True)
    moved = table.claim(key, token, Member(1, "agent-x", 0))
    assert moved.granted and [m.worker for m in moved.dropped] == [0]
    table.apply_state(1, key, token, [Member(1, "agent-x", 0)], True)
    table.apply_state(0, key, token, [Member(0, "agent-x", 0)], False)  # before the drop
    assert table.members(key) == [Member(1, "agent-x", 0)]
    table.apply_state(0, key, token, [], False)  # the drop, read
    assert table.live_workers(key) == [1]
    assert table.members(key) == [Member(1, "agent-x", 0)]
    assert not table.claim(key, token, Member(2, "agent-z", 0)).granted


KEYS = st.sampled_from(["http:a.x", "sni:a.x", "http:b.x", "tcp:20001"])
WORKERS = st.integers(0, 2)
TOKENS = st.sampled_from(["t1", "t2"])
MEMBERS = st.builds(
    Member, WORKERS, st.sampled_from(["a1", "a2", "a3"]), st.integers(0, 1), st.booleans()
)


class ClaimsMachine(RuleBasedStateMachine):
    """Any sequence of claims, departures, orphanings, releases and worker deaths: the
    table never lets two tokens share a name, nor one agent's link be in two places."""

    def __init__(self) -> None:
        super().__init__()
        self.table = ClaimTable()

    @rule(key=KEYS, token=TOKENS, member=MEMBERS)
    def claim(self, key: str, token: str, member: Member) -> None:
        before = self.table.members(key)
        verdict = self.table.claim(key, token, member)
        after = self.table.members(key)
        if verdict.granted:
            assert member in after
            assert self.table.holders(key)[member.worker] is True
            assert set(verdict.dropped) <= set(before)
            assert all(m.worker != member.worker for m in verdict.dropped)
        else:
            assert after == before

    @rule(
        worker=WORKERS,
        key=KEYS,
        token=TOKENS,
        members=st.lists(MEMBERS, max_size=3),
        live=st.booleans(),
    )
    def report(self, worker: int, key: str, token: str, members: list[Member], live: bool) -> None:
        before = self.table.members(key)
        held = self.table.holders(key)
        outcome = self.table.apply_state(worker, key, token, members, live)
        # An orphan of a link another worker holds live is stale (the worker it left,
        # before its ``drop``): it stays where it is live.
        live_elsewhere = set()
        if not live:
            live_elsewhere = {
                (m.agent, m.link) for m in before if m.worker != worker and held.get(m.worker)
            }
        placed = {(m.agent, m.link) for m in members} - live_elsewhere
        if outcome == "conflict":
            assert self.table.members(key) == before
        elif placed:
            assert placed <= {
                (m.agent, m.link) for m in self.table.members(key) if m.worker == worker
            }
        else:
            assert worker not in self.table.holders(key)

    @rule(worker=WORKERS, key=KEYS)
    def release(self, worker: int, key: str) -> None:
        self.table.release(worker, key)

    @rule(worker=WORKERS)
    def worker_down_and_forgotten(self, worker: int) -> None:
        down = self.table.worker_down(worker)
        assert all(self.table.holders(k).get(worker) is False for k in down.changed)
        self.table.forget_orphans(down)
        for key in self.table.held_keys():
            assert self.table.holders(key).get(worker) is None, f"{key} outlived its grace"

    @invariant()
    def one_owner(self) -> None:
        claims = self.table._claims
        for key, claim in claims.items():
            assert claim.live, f"{key} kept with no holding worker"
            assert {m.worker for m in claim.members} <= set(claim.live)
            orphaned_on = {worker for worker, up in claim.live.items() if not up}
            assert set(claim.orphaned_in) == orphaned_on, f"{key}: orphaned, but since when?"
            places = [(m.agent, m.link) for m in claim.members]
            assert len(places) == len(set(places)), f"{key}: a link in two places"
            name = key.partition(":")[2]
            for family in ("http", "sni"):
                other = claims.get(f"{family}:{name}")
                if other is not None and not key.startswith("tcp:"):
                    assert other.token == claim.token


TestClaimsMachine = ClaimsMachine.TestCase
TestClaimsMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


@given(st.lists(st.tuples(KEYS, TOKENS, MEMBERS), max_size=30))
def test_live_workers_are_holders(claims: list[tuple[str, str, Member]]) -> None:
    table = ClaimTable()
    for key, token, member in claims:
        table.claim(key, token, member)
    for key in table.held_keys():
        assert set(table.live_workers(key)) <= set(table.holders(key))
