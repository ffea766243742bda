"""relay/edge/auth_guard.py: a source that fails to authenticate ``limit`` times within
``window`` seconds is refused for ``block`` seconds; memory stays bounded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.edge.auth_guard import AuthGuard, source_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("address", "source"),
    [
        (("203.0.113.7", 51000), "203.0.113.7"),
        ("203.0.113.7", "203.0.113.7"),
        (("2001:db8:1:2:aaaa::1", 443, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:ffff::9", 443, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:3::1", 443, 0, 0), "2001:db8:1:3::/64"),
        (("::ffff:198.51.100.4", 80, 0, 0), "198.51.100.4"),
        (("fe80::1%eth0", 80, 0, 2), "fe80::/64"),
        (None, "-"),
        ((), "-"),
    ],
)
def test_sources_are_addresses_and_ipv6_slash_64s(address: object, source: str) -> None:
    assert source_of(address) == source


def test_the_limit_th_failure_within_the_window_blocks_for_the_block_time() -> None:
    clock = Clock()
    guard = AuthGuard(3, 60.0, 300.0, clock=clock)
    assert [guard.failed("a") for _ in range(2)] == [False, False]
    assert guard.blocked_for("a") == 0.0
    clock.now += 59.0
    assert guard.failed("a") is True
    assert guard.blocked_for("a") == pytest.approx(300.0)
    assert guard.blocked_for("b") == 0.0  # another source is not touched
    assert guard.blocked_sources() == 1
    clock.now += 299.0
    assert guard.blocked_for("a") == pytest.approx(1.0)
    assert guard.failed("a") is False  # failures while blocked do not extend the block
    clock.now += 1.0
    assert guard.blocked_for("a") == 0.0
    assert guard.blocked_sources() == 0
    # After the block the count starts again from nothing.
    assert [guard.failed("a") for _ in range(3)] == [False, False, True]


def test_failures_older_than_the_window_do_not_count() -> None:
    clock = Clock()
    guard = AuthGuard(3, 10.0, 30.0, clock=clock)
    for _ in range(10):
        assert guard.failed("a") is False
        clock.now += 5.0  # two failures per window at most
    assert guard.blocked_for("a") == 0.0


def test_limit_zero_turns_the_guard_off_and_a_reload_turns_it_on() -> None:
    clock = Clock()
    guard = AuthGuard(0, 60.0, 300.0, clock=clock)
    assert not any(guard.failed("a") for _ in range(1000))
    assert guard.blocked_for("a") == 0.0
    assert len(guard) == 0
    guard.configure(2, 60.0, 5.0)
    assert [guard.failed("a") for _ in range(2)] == [False, True]
    assert guard.blocked_for("a") == pytest.approx(5.0)
    guard.configure(0, 60.0, 5.0)
    assert guard.blocked_for("a") == 0.0  # off means nobody is refused


def test_the_table_of_sources_is_bounded_least_recently_seen_first_out() -> None:
    guard = AuthGuard(25, 60.0, 300.0, max_sources=100, clock=Clock())
    guard.failed("kept")
    for i in range(1000):
        guard.failed(f"flood-{i}")
        if i % 50 == 0:
            guard.failed("kept")  # seen again: stays (21 failures by the end)
    assert len(guard) == 100
    # "kept" still has its 21 failures: the 25th blocks it.
    assert [guard.failed("kept") for _ in range(4)] == [False, False, False, True]
    # "flood-0" was forgotten: its count starts again.
    assert not any(guard.failed("flood-0") for _ in range(24))


@pytest.mark.parametrize(
    ("limit", "window", "block"), [(-1, 60.0, 300.0), (3, 0.0, 300.0), (3, 60.0, 0.0)]
)
def test_impossible_settings_are_refused(limit: int, window: float, block: float) -> None:
    with pytest.raises(ValueError, match="limit >= 0"):
        AuthGuard(limit, window, block)
    with pytest.raises(ValueError, match="limit >= 0"):
        AuthGuard(1, 1.0, 1.0).configure(limit, window, block)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=5),
    gaps=st.lists(st.floats(min_value=0.0, max_value=30.0), min_size=1, max_size=40),
)
def test_blocks_exactly_as_a_sliding_window_says(limit: int, gaps: list[float]) -> None:
    """Against a plain model: a failure blocks when it is the limit-th of those counted in
    the last ``window`` seconds since the last block ended; failures while blocked are
    not counted."""
    window, block = 20.0, 15.0
    clock = Clock()
    guard = AuthGuard(limit, window, block, clock=clock)
    counted: list[float] = []
    blocked_until = 0.0
    for gap in gaps:
        clock.now += gap
        now = clock.now
        expected = False
        if now >= blocked_until:
            counted = [t for t in counted if t > now - window] + [now]
            if len(counted) >= limit:
                expected, blocked_until, counted = True, now + block, []
        assert guard.failed("s") is expected
        assert (guard.blocked_for("s") > 0) == (now < blocked_until)
