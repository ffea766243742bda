"""One PoP answering at several addresses (IPv4 and IPv6, a DNS name with both) is one
PoP to an agent's links: an edge of protocol 2 names itself in ``AuthOk.pop``, and an
address whose edge told the name of a PoP another link is on counts as busy, in the
ranking and in ``free_pop``. Without a name (an older edge), addresses are PoPs.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from relay.agent.placement import Place
from relay.agent.pops import MAX_NAMES, Pop, PopChooser
from tests.ports import free_port


def listener(port: int | None = None) -> socket.socket:
    return socket.create_server(("127.0.0.1", port or free_port()))


def test_an_address_of_a_busy_pop_s_name_is_busy_too() -> None:
    async def scenario() -> None:
        with listener() as one, listener() as two, listener() as three:
            ports = [s.getsockname()[1] for s in (one, two, three)]
            chooser = PopChooser(tuple(("127.0.0.1", p) for p in ports))
            v4, v6, other = (Pop("127.0.0.1", p, "127.0.0.1") for p in ports)
            taken: dict[Pop, str] = {v4: "fra-1"}  # a lower link, on "fra-1" at v4
            chooser.busy = lambda: taken
            for _ in range(5):  # whatever the round-trip times
                chooser.learn(v6, "")
                ranked = await chooser.ranked()
                assert ranked[0] != v4  # by address alone, v6 may come first
                chooser.learn(v6, "fra-1")  # this link reached v6 once: fra-1 too
                ranked = await chooser.ranked()
                assert ranked[0] == other and set(ranked[1:]) == {v4, v6}
            # The name may come from the other link's report alone.
            fresh = PopChooser(chooser.edges, busy=lambda: {v6: "fra-1"})
            fresh.learn(v4, "fra-1")
            assert (await fresh.ranked())[0] == other

    asyncio.run(scenario())


def test_a_link_beside_another_at_another_address_moves_to_a_free_pop() -> None:
    """``free_pop(here)``: never an address of ``here``'s PoP, nor of a busy one."""

    async def scenario() -> None:
        with listener() as one, listener() as two:
            v4 = Pop("127.0.0.1", one.getsockname()[1], "127.0.0.1")
            v6 = Pop("127.0.0.1", two.getsockname()[1], "127.0.0.1")
            other_port = free_port()
            other = Pop("127.0.0.1", other_port, "127.0.0.1")
            edges = (("127.0.0.1", v4.port), ("127.0.0.1", v6.port), ("127.0.0.1", other_port))
            chooser = PopChooser(edges, busy=lambda: {v4: "fra-1"})
            chooser.learn(v6, "fra-1")
            assert await chooser.free_pop(v6) is None  # the only other address is fra-1's
            chooser.learn(v6, "")  # an older edge there: addresses are PoPs again
            assert await chooser.free_pop(v6) is None  # v4 is busy by address
            assert await chooser.free_pop(v4) == v6
            chooser.learn(v6, "fra-1")
            assert await chooser.free_pop(v4) is None  # v6 is here, by name
            with listener(other_port):
                assert await chooser.free_pop(v6) == other
                assert await chooser.free_pop(v4) == other

    asyncio.run(scenario())


def test_a_name_learned_is_forgotten_when_an_edge_stops_telling_it() -> None:
    chooser = PopChooser((("127.0.0.1", 1),))
    a, b = Pop("127.0.0.1", 1, "x"), Pop("::1", 1, "x")
    assert not chooser.same(a, b)
    chooser.learn(a, "p")
    chooser.learn(b, "p")
    assert chooser.same(a, b) and chooser.same(b, a) and chooser.same(a, a)
    chooser.learn(b, "")
    assert not chooser.same(a, b)
    chooser.learn(b, "q")
    assert not chooser.same(a, b)


def test_names_are_remembered_for_a_bounded_number_of_addresses() -> None:
    chooser = PopChooser((("127.0.0.1", 1),))
    pops = [Pop("127.0.0.1", port, "x") for port in range(1, MAX_NAMES + 11)]
    for pop in pops:
        chooser.learn(pop, "p")
    assert not chooser.same(pops[0], pops[-1])  # the oldest went first
    assert chooser.same(pops[10], pops[-1])
    assert len(chooser._names) == MAX_NAMES


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (("v4", ""), ("v4", ""), True),  # one address
        (("v4", "fra-1"), ("v4", ""), True),
        (("v4", "fra-1"), ("v6", "fra-1"), True),  # one name told at both
        (("v4", "fra-1"), ("v6", "ams-1"), False),
        (("v4", ""), ("v6", ""), False),  # older edges: addresses are PoPs
        (("v4", "fra-1"), ("v6", ""), False),
    ],
)
def test_two_places_are_one_pop_by_address_or_by_a_name_both_told(
    a: tuple[str, str], b: tuple[str, str], same: bool
) -> None:
    first = Place(Pop(a[0], 7000, "e"), 0, a[1])
    second = Place(Pop(b[0], 7000, "e"), 1, b[1])
    assert first.same_pop(second) is same and second.same_pop(first) is same
