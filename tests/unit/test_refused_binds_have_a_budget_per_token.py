"""relay/edge/bind_refusals.py: a token's refused binds are audited up to a burst, then
at the refill rate; the first refusal past that is audited as a flood, later ones are
only counted, until the token is within its budget again. Tokens are independent, and
at most MAX_TOKENS are remembered."""

from __future__ import annotations

from relay.edge.bind_refusals import BURST, MAX_TOKENS, RefusedBinds, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_a_flood_audited_once() -> None:
    clock = Clock()
    budget = RefusedBinds(clock=clock)
    assert [budget.refused("t1") for _ in range(BURST)] == [Verdict.AUDIT] * BURST
    assert budget.refused("t1") is Verdict.FLOOD_BEGINS
    assert [budget.refused("t1") for _ in range(100)] == [Verdict.FLOOD] * 100
    assert budget.refused("t2") is Verdict.AUDIT  # another token has its own budget


def test_the_budget_refills_at_its_rate_and_never_past_the_burst() -> None:
    clock = Clock()
    budget = RefusedBinds(burst=3, per_second=1.0, clock=clock)
    for _ in range(3):
        budget.refused("t1")
    assert budget.refused("t1") is Verdict.FLOOD_BEGINS
    clock.now += 0.5
    assert budget.refused("t1") is Verdict.FLOOD  # half a refusal refilled: not one
    clock.now += 0.6
    assert budget.refused("t1") is Verdict.AUDIT  # within the budget again ...
    assert budget.refused("t1") is Verdict.FLOOD_BEGINS  # ... so the next flood is news
    clock.now += 3600
    assert [budget.refused("t1") for _ in range(4)] == [Verdict.AUDIT] * 3 + [Verdict.FLOOD_BEGINS]


def test_a_clock_that_steps_back_refills_nothing() -> None:
    clock = Clock()
    budget = RefusedBinds(burst=1, clock=clock)
    budget.refused("t1")
    clock.now -= 100
    assert budget.refused("t1") is Verdict.FLOOD_BEGINS


def test_at_most_max_tokens_are_remembered_the_least_recent_forgotten() -> None:
    clock = Clock()
    budget = RefusedBinds(burst=1, max_tokens=MAX_TOKENS, clock=clock)
    budget.refused("first")
    for i in range(MAX_TOKENS):
        budget.refused(f"t{i}")
    assert len(budget._tokens) == MAX_TOKENS
    assert budget.refused("first") is Verdict.AUDIT  # forgotten: a fresh budget
    assert budget.refused(f"t{MAX_TOKENS - 1}") is Verdict.FLOOD_BEGINS  # remembered
