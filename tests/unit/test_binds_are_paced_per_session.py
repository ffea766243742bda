"""One session's binds and unbinds are acted on at most BURST at once, then PER_SECOND
(relay/edge/control_pace.py): whatever an agent sends, and however it spaces it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.edge.control_pace import BURST, PER_SECOND, ControlPace
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
