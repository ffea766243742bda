"""The pure rules behind an agent's failover between PoPs and its reconnect delays:

* a PoP that failed an attempt (relay/agent/pops.py ``PopChooser.failed``) is left out for
  a while, but never leaves the agent with nothing to try: when every candidate is set
  aside, the one that failed longest ago is tried; only refusals (another region, an
  untrusted certificate) can end the agent;
* expired set-asides are forgotten;
* the backoff starts over only after a session that lasted (relay/agent/backoff.py);
* with several PoPs the agent's link keepalive is shorter (relay/agent/client.py).

A fake clock stands in for pops.py's ``time.monotonic``; no event loop runs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from relay.agent.backoff import STABLE_AFTER, Backoff
from relay.agent.client import (
    SEVERAL_KEEPALIVE_INTERVAL_MS,
    SEVERAL_KEEPALIVE_TIMEOUT_MS,
    Agent,
    AgentOptions,
)
from relay.agent.pops import FAILED_FOR, WRONG_REGION_FOR, Pop, PopChooser, rank
from relay.mux import MuxConfig

pytestmark = pytest.mark.timeout(30)

A, B, C = (Pop(f"10.0.0.{i}", 7000, f"pop{i}") for i in (1, 2, 3))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    # pops.py's own name for the time module, not the module itself: nothing else sees it.
    monkeypatch.setattr("relay.agent.pops.time", SimpleNamespace(monotonic=fake))
    yield fake


def ranked(chooser: PopChooser, clock: Clock, pops: list[Pop], rtts: dict[Pop, float]) -> list[Pop]:
    """What ``PopChooser.ranked`` returns for these probes (without probing)."""
    return rank(pops, rtts, set(), chooser._until(clock.now), clock.now)


def test_a_pop_that_failed_is_passed_over_until_its_time_is_up(clock: Clock) -> None:
    chooser = PopChooser(())
    rtts = {A: 0.0001, B: 0.0002}  # the hung one answers probes fastest
    assert chooser.choose(ranked(chooser, clock, [A, B], rtts)) == A
    chooser.failed(A)
    assert chooser.choose(ranked(chooser, clock, [A, B], rtts)) == B
    assert not chooser.all_away([A, B])
    clock.now += FAILED_FOR - 0.1
    assert chooser.choose(ranked(chooser, clock, [A, B], rtts)) == B
    clock.now += 0.2
    assert chooser.choose(ranked(chooser, clock, [A, B], rtts)) == A


def test_when_every_pop_failed_the_one_that_failed_longest_ago_is_tried(clock: Clock) -> None:
    """Not the fastest: a hung PoP is the fastest to probe, and would be tried every time."""
    chooser = PopChooser(())
    rtts = {A: 0.0001, B: 0.0002, C: 0.0003}
    tried = []
    for _ in range(6):
        pop = chooser.choose(ranked(chooser, clock, [A, B, C], rtts))
        tried.append(pop)
        chooser.failed(pop)  # every attempt fails: each PoP in turn, none twice in a row
        clock.now += 3.0
        assert not chooser.all_away([A, B, C])
    assert tried == [A, B, C, A, B, C]


def test_refusals_may_leave_nothing_but_a_pop_that_only_failed_is_tried(clock: Clock) -> None:
    chooser = PopChooser(())
    rtts = {A: 0.0001, B: 0.0002}
    chooser.wrong_region(A)
    chooser.failed(B)
    assert not chooser.all_away([A, B])
    assert chooser.choose(ranked(chooser, clock, [A, B], rtts)) == B  # not A: it refused
    chooser.set_aside(B, WRONG_REGION_FOR)  # B refuses too (a later answer wins)
    assert chooser.all_away([A, B])


def test_a_session_forgives_a_failure_but_not_a_refusal(clock: Clock) -> None:
    chooser = PopChooser(())
    chooser.failed(A)
    chooser.wrong_region(B)
    chooser.served(A)
    chooser.served(B)
    assert set(chooser._away) == {B}


def test_set_asides_that_expired_are_forgotten(clock: Clock) -> None:
    """Otherwise every address DNS ever returned would stay in memory."""
    chooser = PopChooser(())
    for i in range(100):
        chooser.failed(Pop(f"10.1.0.{i}", 7000, "many"))
        clock.now += 1.0
    assert len(chooser._away) <= FAILED_FOR + 1
    clock.now += WRONG_REGION_FOR
    chooser.wrong_region(A)
    assert set(chooser._away) == {A}
    clock.now += WRONG_REGION_FOR
    assert chooser._until(clock.now) == {}


def test_sessions_dropped_at_once_do_not_reset_the_backoff() -> None:
    """An edge that takes auth and binds and then closes the link at once: the delays grow
    to their cap instead of starting over at 0.025-0.25 s each time."""
    backoff = Backoff(rng=random.Random(3))
    ceilings = []
    for _ in range(12):
        backoff.session_ended(0.05)
        delay = backoff.next_delay()
        ceilings.append(min(backoff.maximum, backoff.initial * 2 ** (backoff.attempt - 1)))
        assert 0.1 * ceilings[-1] <= delay <= ceilings[-1]
    assert ceilings[-1] == backoff.maximum


def test_a_session_that_lasted_starts_the_delays_over() -> None:
    backoff = Backoff(rng=random.Random(4))
    for _ in range(8):
        backoff.next_delay()
    backoff.session_ended(STABLE_AFTER - 0.01)
    assert backoff.attempt == 8
    backoff.session_ended(STABLE_AFTER)
    assert backoff.attempt == 0
    assert backoff.next_delay() <= backoff.initial


def agent_with(mux: MuxConfig) -> Agent:
    return Agent(AgentOptions("127.0.0.1", 7000, "rly_x", (), mux=mux), status=lambda _: None)


def test_with_several_pops_the_keepalive_is_shorter_never_longer_nor_switched_on() -> None:
    default = MuxConfig()
    several = agent_with(default)._mux(True)
    assert several.keepalive_interval_ms == SEVERAL_KEEPALIVE_INTERVAL_MS
    assert several.keepalive_timeout_ms == SEVERAL_KEEPALIVE_TIMEOUT_MS
    assert several.keepalive_interval_ms < default.keepalive_interval_ms
    assert agent_with(default)._mux(False) == default
    off = MuxConfig(keepalive_interval_ms=0)
    assert agent_with(off)._mux(True) == off
    quick = MuxConfig(keepalive_interval_ms=1_000, keepalive_timeout_ms=2_000)
    assert agent_with(quick)._mux(True) == quick
