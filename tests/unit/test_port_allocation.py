"""TCP endpoint ports: a configured range, no double booking, clear errors."""

from __future__ import annotations

import pytest

from relay.edge.ports import PortAllocator, PortRange
from relay.edge.registry import Holder, InMemoryRegistry
from relay.errors import ConfigError, EndpointAlreadyBound, PortRangeExhausted, PortUnavailable


@pytest.mark.parametrize("text", ["", "abc", "0-10", "10-5", "70000", "1-70000", "5--6"])
def test_bad_ranges_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        PortRange.parse(text)


def test_range_parses_single_port_and_span() -> None:
    assert PortRange.parse("20000") == PortRange(20000, 20000)
    assert len(PortRange.parse("20000-20009")) == 10


def test_reserve_refuses_outside_the_range_and_twice() -> None:
    alloc = PortAllocator(PortRange(20000, 20001))
    with pytest.raises(PortUnavailable):
        alloc.reserve(19999)
    alloc.reserve(20000)
    with pytest.raises(PortUnavailable):
        alloc.reserve(20000)
    assert alloc.candidates() == [20001]
    alloc.reserve(20001)
    with pytest.raises(PortRangeExhausted):
        alloc.candidates()
    alloc.release(20000)
    assert alloc.candidates() == [20000]


def test_registry_hands_an_endpoint_back_only_to_its_owner() -> None:
    registry = InMemoryRegistry()
    live = Holder("tok1", "agentA", session=object())
    registry.claim("tcp:1", live)
    # Another token never takes it.
    with pytest.raises(EndpointAlreadyBound):
        registry.claim("tcp:1", Holder("tok2", "agentA", object()))
    # The same token from another agent process cannot take a live endpoint...
    with pytest.raises(EndpointAlreadyBound):
        registry.claim("tcp:1", Holder("tok1", "agentB", object()))
    # ...but the same agent instance (a reconnect) can.
    again = Holder("tok1", "agentA", object())
    assert registry.claim("tcp:1", again) is live
    # Once orphaned, any agent with the same token may take it back.
    again.session = None
    restarted = Holder("tok1", "agentC", object())
    assert registry.claim("tcp:1", restarted) is again
    assert not registry.release("tcp:1", again)
    assert registry.release("tcp:1", restarted)
    assert registry.keys() == []
