"""Which PoP an agent tries first (relay/agent/pops.py): the ranking rule over every
input (Hypothesis), and the chooser against real listeners on 127.0.0.1 (probes are real
TCP connects: a closed port is unreachable, a PoP set aside waits, a PoP another link is
on comes after a free one)."""

from __future__ import annotations

import asyncio
import itertools
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.agent.pops import MAX_CANDIDATES, Pop, PopChooser, in_turns, rank
from tests.ports import free_port

pytestmark = pytest.mark.timeout(30)

INF = float("inf")
POPS = [Pop(f"10.0.0.{i}", 7000, f"pop{i}") for i in range(8)]


@st.composite
def situations(draw: st.DrawFn) -> tuple[list[Pop], dict[Pop, float], set[Pop], dict[Pop, float]]:
    pops = draw(st.lists(st.sampled_from(POPS), min_size=2, max_size=8, unique=True))
    rtt = st.one_of(st.just(INF), st.floats(0.0001, 0.5), st.sampled_from([0.001, 0.002]))
    rtts = {p: draw(rtt) for p in pops}
    busy = set(draw(st.lists(st.sampled_from(pops), unique=True)))
    away = {p: draw(st.sampled_from([0.0, 50.0, 200.0])) for p in pops}
    return pops, rtts, busy, away


@given(situations())
def test_the_ranking_is_the_stated_order_and_keeps_ties_as_resolved(
    situation: tuple[list[Pop], dict[Pop, float], set[Pop], dict[Pop, float]],
) -> None:
    pops, rtts, busy, away = situation
    now = 100.0
    ranked = rank(list(pops), rtts, busy, away, now)
    assert sorted(ranked, key=pops.index) == pops  # every candidate, once

    def key(p: Pop) -> tuple[bool, bool, bool, float]:
        return (away[p] > now, rtts[p] == INF, p in busy, rtts[p])

    for first, second in itertools.pairwise(ranked):
        assert key(first) <= key(second), (first, second)
        if key(first) == key(second):  # a tie: as the resolver gave them
            assert pops.index(first) < pops.index(second)


@given(st.lists(st.sampled_from(POPS), min_size=1, max_size=8, unique=True))
def test_without_probes_only_the_set_aside_ones_move(pops: list[Pop]) -> None:
    away = {pops[0]: 200.0}
    ranked = rank(list(pops), {}, set(pops), away, 100.0)
    assert ranked == [*pops[1:], pops[0]]


def listener(port: int | None = None) -> socket.socket:
    return socket.create_server(("127.0.0.1", port or free_port()))


def test_a_closed_port_ranks_last_and_a_set_aside_pop_after_the_others() -> None:
    async def scenario() -> None:
        with listener() as one, listener() as two:
            closed = free_port()  # nothing listens: the probe is refused
            ports = [closed, one.getsockname()[1], two.getsockname()[1]]
            chooser = PopChooser(tuple(("127.0.0.1", p) for p in ports))
            ranked = await chooser.ranked()
            assert [p.port for p in ranked][-1] == closed
            assert chooser.last_rtts[ranked[-1]] == INF
            assert all(0 < chooser.last_rtts[p] < 1.0 for p in ranked[:2])
            assert chooser.several
            first = ranked[0]
            chooser.set_aside(first, 60)
            again = await chooser.ranked()
            assert again[-1] == first and again[0].port != closed
            assert not chooser.all_away(again)
            for pop in again:
                chooser.set_aside(pop, 60)
            assert chooser.all_away(await chooser.ranked())

    asyncio.run(scenario())


def test_a_link_prefers_a_pop_no_other_link_of_its_agent_is_on() -> None:
    async def scenario() -> None:
        with listener() as one, listener() as two:
            pops = tuple(("127.0.0.1", s.getsockname()[1]) for s in (one, two))
            taken: dict[Pop, str] = {}
            chooser = PopChooser(pops, busy=lambda: taken)
            for _ in range(5):  # whatever their round-trip times, the free one first
                taken.clear()
                ranked = await chooser.ranked()
                taken[ranked[0]] = ""
                again = await chooser.ranked()
                assert again[0] != ranked[0] and again[1] == ranked[0]

    asyncio.run(scenario())


def test_a_link_beside_another_finds_the_pop_no_link_is_on_once_it_answers() -> None:
    """``free_pop``: where a link sharing its PoP with a lower link moves to — a PoP no
    other link is on, that the probe reaches and that is not set aside; none while the
    lost PoP is down, or while it is set aside, or when the other links hold it."""

    async def scenario() -> None:
        with listener() as here_sock:
            here = Pop("127.0.0.1", here_sock.getsockname()[1], "127.0.0.1")
            back_port = free_port()
            back = Pop("127.0.0.1", back_port, "127.0.0.1")
            taken = {here: ""}  # the lower link's PoP, which this link shares
            chooser = PopChooser((("127.0.0.1", here.port), ("127.0.0.1", back_port)))
            chooser.busy = lambda: taken
            assert await chooser.free_pop(here) is None  # the lost PoP is still down
            with listener(back_port):
                assert await chooser.free_pop(here) == back
                chooser.failed(back)
                assert await chooser.free_pop(here) is None  # set aside: not yet
                chooser.served(back)
                taken[back] = ""  # another link got there first
                assert await chooser.free_pop(here) is None
                del taken[back]
                assert await chooser.free_pop(here) == back

    asyncio.run(scenario())


def test_a_name_is_resolved_to_each_of_its_addresses() -> None:
    """``localhost`` names 127.0.0.1 here; every address a name resolves to becomes a
    candidate checked against the name (the certificate's), each port its own."""

    async def scenario() -> None:
        with listener() as one:
            port = one.getsockname()[1]
            chooser = PopChooser((("localhost", port), ("127.0.0.1", port)))
            ranked = await chooser.ranked()
            names = {(p.host, p.name) for p in ranked}
            assert ("127.0.0.1", "localhost") in names and ("127.0.0.1", "127.0.0.1") in names

    asyncio.run(scenario())


def test_a_name_with_many_addresses_does_not_crowd_out_the_other_entries() -> None:
    """``--edge big.example,small.example``: the big name's 20 addresses and the small
    one's 2 are taken in turns up to MAX_CANDIDATES, so the small entry's are probed."""
    big = [Pop(f"10.1.0.{i}", 7000, "big.example") for i in range(20)]
    small = [Pop(f"10.2.0.{i}", 7000, "small.example") for i in range(2)]
    taken = in_turns([big, small])
    assert len(taken) == MAX_CANDIDATES
    assert taken[:4] == [big[0], small[0], big[1], small[1]]
    assert taken[4:] == big[2 : MAX_CANDIDATES - 2]
    assert in_turns([small, small[:1]]) == small  # each once
