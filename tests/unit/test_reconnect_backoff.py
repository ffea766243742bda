"""Reconnect delays grow, are jittered, are capped and reset after success."""

from __future__ import annotations

import random

from relay.agent.backoff import Backoff


def test_delays_grow_then_cap_with_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    ceilings = [min(8.0, 0.5 * 2**i) for i in range(12)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert 0.1 * ceiling <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not lockstep
    assert max(delays) <= 8.0


def test_reset_starts_over() -> None:
    backoff = Backoff(initial=1.0, maximum=100.0, rng=random.Random(2))
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.0
