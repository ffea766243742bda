"""When a link of an agent connects again to reach a worker of its own
(relay/agent/placement.py): beside a lower link while the lower links on its PoP are
fewer than the PoP's workers; never link 0, never on an edge of one process, never
beside only higher links, never once every worker can hold a lower link."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.agent.placement import LONGEST_WAIT, MAX_PLACEMENT_TRIES, crowded, placement_delay


def test_link_1_beside_link_0_moves_while_a_worker_is_free() -> None:
    assert crowded(link=1, workers=2, beside=0b1, lower_on_pop=1)
    assert not crowded(link=1, workers=2, beside=0, lower_on_pop=1)


def test_link_0_and_an_edge_of_one_process_never_move() -> None:
    assert not crowded(link=0, workers=2, beside=0b10, lower_on_pop=0)
    assert not crowded(link=1, workers=1, beside=0b1, lower_on_pop=1)


def test_only_lower_links_count() -> None:
    # Link 1 beside link 2: link 2 moves, not link 1; so two links never chase each other.
    assert not crowded(link=1, workers=2, beside=0b100, lower_on_pop=1)
    assert crowded(link=2, workers=3, beside=0b010, lower_on_pop=2)


def test_with_as_many_lower_links_as_workers_a_link_stays() -> None:
    assert not crowded(link=2, workers=2, beside=0b01, lower_on_pop=2)
    # Lower links on another PoP leave this PoP's workers free.
    assert crowded(link=2, workers=2, beside=0b01, lower_on_pop=1)


@given(link=st.integers(1, 15), workers=st.integers(2, 16), beside=st.integers(0, 2**16 - 1))
def test_higher_links_beside_never_move_a_link(link: int, workers: int, beside: int) -> None:
    higher_only = beside & ~((1 << (link + 1)) - 1)
    assert not crowded(link, workers, higher_only, lower_on_pop=link)


def test_new_connections_wait_longer_and_outlast_a_worker_restart() -> None:
    """A worker the supervisor starts again listens after a second or two: tries made
    before it all reach the other worker, so most of them must come after."""
    waits = [placement_delay(t) for t in range(1, MAX_PLACEMENT_TRIES + 1)]
    assert waits == sorted(waits) and max(waits) == LONGEST_WAIT
    late = [t for t in range(MAX_PLACEMENT_TRIES) if sum(waits[: t + 1]) > 2.0]
    assert len(late) >= 10
