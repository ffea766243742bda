"""One session's binds and unbinds are acted on at most BURST at once, then PER_SECOND,
and all of one account's sessions together at most its burst, then ACCOUNT_PER_SECOND
(relay/edge/control_pace.py): whatever agents send, and however they space it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.edge.control_pace import (
    ACCOUNT_PER_SECOND,
    BURST,
    PER_SECOND,
    AccountPaces,
    ControlPace,
    account_burst,
)
from tests.unit.test_refused_binds_have_a_budget_per_token import Clock


def test_an_agent_binding_every_endpoint_it_may_never_waits() -> None:
    pace = ControlPace(clock=Clock())
    assert [pace.delay() for _ in range(BURST)] == [0.0] * BURST
    assert BURST >= 2 * 64  # twice the default max_endpoints_per_session
    assert pace.paced == 0


def test_past_the_burst_each_message_waits_its_turn() -> None:
    clock = Clock()
    pace = ControlPace(clock=clock)
    for _ in range(BURST):
        pace.delay()
    assert pace.delay() == pytest.approx(1 / PER_SECOND)
    assert pace.delay() == pytest.approx(2 / PER_SECOND)
    assert pace.paced == 2
    # The session waited for both (the edge read nothing meanwhile): the next is due at once
    # after another 1/PER_SECOND, not after the debt of the first two again.
    clock.now += 2 / PER_SECOND
    assert pace.delay() == pytest.approx(1 / PER_SECOND)


def test_a_quiet_session_gets_its_burst_back() -> None:
    clock = Clock()
    pace = ControlPace(clock=clock)
    for _ in range(BURST + 10):
        pace.delay()
    clock.now += (BURST + 11) / PER_SECOND  # (one more: the clock is a float)
    assert [pace.delay() for _ in range(BURST)] == [0.0] * BURST


@settings(max_examples=200, deadline=None)
@given(
    burst=st.integers(min_value=1, max_value=20),
    per_second=st.floats(min_value=0.5, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=200),
)
def test_no_window_acts_on_more_than_the_burst_and_its_refill(
    burst: int, per_second: float, gaps: list[float]
) -> None:
    """The session acts on each message after its delay and reads the next only then
    (as the edge does): over any span of its acts, at most burst + per_second * span."""
    clock = Clock()
    pace = ControlPace(burst, per_second, clock)
    acts: list[float] = []
    for gap in gaps:
        clock.now += gap
        wait = pace.delay()
        assert wait >= 0.0
        clock.now += wait
        acts.append(clock.now)
    for i, start in enumerate(acts):
        for j in range(i, len(acts)):
            span = acts[j] - start
            assert j - i + 1 <= burst + per_second * span + 1e-6


# --- the account's pace, shared by its sessions ----------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    burst=st.integers(min_value=1, max_value=12),
    sessions=st.lists(st.sampled_from(("acc_a", "acc_b")), min_size=1, max_size=6),
    steps=st.lists(
        st.tuples(st.integers(0, 5), st.floats(min_value=0, max_value=0.5)), max_size=150
    ),
)
def test_an_account_s_sessions_together_act_on_no_more_than_its_burst_and_refill(
    burst: int, sessions: list[str], steps: list[tuple[int, float]]
) -> None:
    """Sessions of two accounts, each reading its next message only once it acted on the
    last (as the edge does), each message charged to its session's pace and its
    account's: by any time, each account has acted on at most its burst plus its refill
    since its first message, however many sessions it has; and an account is never made
    to wait by another's pace."""
    per_second = 10.0
    clock = Clock()
    accounts = AccountPaces(burst, per_second, clock)
    own = [ControlPace(1000, 1000.0, clock) for _ in sessions]  # sessions' own: never bind
    ready = [clock.now] * len(sessions)  # when each session reads its next message
    acts: dict[str, list[float]] = {"acc_a": [], "acc_b": []}
    first: dict[str, float] = {}
    for index, gap in steps:
        s = index % len(sessions)
        # Events in time order: the session reads when it is ready, after a gap of its own.
        clock.now = max(clock.now, ready[s] + gap)
        account = sessions[s]
        first.setdefault(account, clock.now)
        wait = max(own[s].delay(), accounts.delay(account))
        assert wait >= 0.0
        ready[s] = clock.now + wait
        acts[account].append(ready[s])
    for account, times in acts.items():
        for i, at in enumerate(sorted(times)):
            assert i + 1 <= burst + per_second * (at - first[account]) + 1e-6


def test_an_account_in_debt_is_not_forgotten_and_a_rested_one_is() -> None:
    clock = Clock()
    paces = AccountPaces(4, 10.0, clock)
    for _ in range(8):
        paces.delay("acc_busy")  # 4 past its burst: 0.4 s of debt
    for i in range(100):
        paces.delay(f"acc_{i}")  # many others, no time passing: the busy one stays
    assert paces.delay("acc_busy") == pytest.approx(0.5)
    clock.now += 60.0  # every pace rests
    for i in range(60):
        paces.delay(f"acc_late_{i}")
    # The 101 rested ones went, PRUNE_PER_CHARGE a charge; the 60 charged just now stay.
    assert len(paces) == 60
    # A forgotten account starts as a rested one would: its whole burst at once.
    assert [paces.delay("acc_busy") for _ in range(4)] == [0.0] * 4


def test_an_account_s_burst_covers_every_endpoint_it_may_hold_bound_twice() -> None:
    assert account_burst(0) == 0  # endpoints unlimited: no account pace
    assert account_burst(4000) == 8000
    assert account_burst(5) == BURST  # never below a session's
    off = AccountPaces(0, clock=Clock())
    assert all(off.delay("acc_a") == 0.0 for _ in range(10_000)) and len(off) == 0
    assert ACCOUNT_PER_SECOND > PER_SECOND
