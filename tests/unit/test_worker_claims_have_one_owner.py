"""The supervisor's claim table (relay/cluster/claims.py): a name or port has one owner
across the workers, by the single edge's rules."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from relay.cluster.claims import ClaimTable


def test_a_free_key_goes_to_whoever_asks() -> None:
    table = ClaimTable()
    verdict = table.claim(0, "http:a.example", "t1", "agent1")
    assert verdict.granted and verdict.dropped == ()
    assert table.live_workers("http:a.example") == [0]


def test_another_token_is_refused_on_every_worker() -> None:
    table = ClaimTable()
    table.claim(0, "tcp:20001", "t1", "agent1")
    for worker in (0, 1, 2):
        verdict = table.claim(worker, "tcp:20001", "t2", "agent2")
        assert not verdict.granted
        assert "another token" in verdict.why
    assert table.live_workers("tcp:20001") == [0]


def test_a_name_has_one_owner_across_http_and_the_tls_port() -> None:
    table = ClaimTable()
    table.claim(0, "sni:s.example", "t1", "agent1")
    assert not table.claim(1, "http:s.example", "t2", "agent2").granted
    assert table.claim(1, "http:s.example", "t1", "agent1").granted


def test_the_same_agent_takes_its_key_to_the_worker_it_reconnected_to() -> None:
    table = ClaimTable()
    table.claim(0, "http:a.example", "t1", "agent1")
    verdict = table.claim(1, "http:a.example", "t1", "agent1")
    assert verdict.granted and verdict.dropped == (0,)
    assert table.live_workers("http:a.example") == [1]


def test_another_agent_of_the_token_waits_until_no_worker_holds_it_live() -> None:
    table = ClaimTable()
    table.claim(0, "http:a.example", "t1", "agent1")
    assert not table.claim(1, "http:a.example", "t1", "agent2").granted
    assert table.set_live(0, "http:a.example", False)  # its session ended: orphaned
    assert table.live_workers("http:a.example") == []
    verdict = table.claim(1, "http:a.example", "t1", "agent2")
    assert verdict.granted and verdict.dropped == (0,)


def test_a_dead_workers_keys_are_free_again() -> None:
    table = ClaimTable()
    table.claim(0, "http:a.example", "t1", "agent1")
    table.claim(1, "tcp:20001", "t1", "agent1")
    assert table.worker_gone(0) == ["http:a.example"]
    assert table.claim(2, "http:a.example", "t2", "agent2").granted
    assert table.live_workers("tcp:20001") == [1]


def test_release_and_set_live_by_a_non_holder_change_nothing() -> None:
    table = ClaimTable()
    table.claim(0, "http:a.example", "t1", "agent1")
    assert not table.release(1, "http:a.example")
    assert not table.set_live(1, "http:a.example", False)
    assert not table.set_live(0, "http:a.example", True)  # already live
    assert table.live_workers("http:a.example") == [0]


KEYS = st.sampled_from(["http:a.x", "sni:a.x", "http:b.x", "tcp:20001"])
WORKERS = st.integers(0, 2)
TOKENS = st.sampled_from(["t1", "t2"])
AGENTS = st.sampled_from(["a1", "a2", "a3"])


class ClaimsMachine(RuleBasedStateMachine):
    """Any sequence of claims, releases, orphanings and worker deaths: the table never
    lets two tokens share a name, nor two workers a key."""

    def __init__(self) -> None:
        super().__init__()
        self.table = ClaimTable()

    @rule(worker=WORKERS, key=KEYS, token=TOKENS, agent=AGENTS)
    def claim(self, worker: int, key: str, token: str, agent: str) -> None:
        before = self.table.holders(key)
        verdict = self.table.claim(worker, key, token, agent)
        if verdict.granted:
            assert self.table.holders(key) == {worker: True}
            assert set(verdict.dropped) == set(before) - {worker}
        else:
            assert self.table.holders(key) == before

    @rule(worker=WORKERS, key=KEYS)
    def release(self, worker: int, key: str) -> None:
        self.table.release(worker, key)

    @rule(worker=WORKERS, key=KEYS, live=st.booleans())
    def set_live(self, worker: int, key: str, live: bool) -> None:
        self.table.set_live(worker, key, live)

    @rule(worker=WORKERS)
    def worker_gone(self, worker: int) -> None:
        self.table.worker_gone(worker)
        assert all(worker not in self.table.holders(k) for k in self.table.held_keys())

    @invariant()
    def one_owner(self) -> None:
        claims = self.table._claims
        for key, claim in claims.items():
            assert len(claim.holders) <= 1  # one worker per key (links would share)
            assert claim.holders, f"{key} kept with no holder"
            name = key.partition(":")[2]
            for family in ("http", "sni"):
                other = claims.get(f"{family}:{name}")
                if other is not None and not key.startswith("tcp:"):
                    assert other.token == claim.token


TestClaimsMachine = ClaimsMachine.TestCase
TestClaimsMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


@given(st.lists(st.tuples(WORKERS, KEYS, TOKENS, AGENTS), max_size=30))
def test_live_workers_are_holders(claims: list[tuple[int, str, str, str]]) -> None:
    table = ClaimTable()
    for worker, key, token, agent in claims:
        table.claim(worker, key, token, agent)
    for key in table.held_keys():
        assert set(table.live_workers(key)) <= set(table.holders(key))
