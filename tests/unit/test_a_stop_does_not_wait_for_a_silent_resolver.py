"""An agent stopped while it resolves its PoPs' names ends at once: a resolver that does
not answer holds each name for up to RESOLVE_TIMEOUT (5 s), and Ctrl-C must not wait for
it (relay/agent/client.py ``Agent._unless_stopped``). The resolver that never answers
stands in for relay/agent/pops.py's ``_addresses`` (its real bound is that timeout)."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from relay.agent.client import Agent, AgentOptions
from relay.agent.pops import RESOLVE_TIMEOUT, Pop

pytestmark = pytest.mark.timeout(30)


def test_a_stop_while_resolving_ends_the_agent_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    async def silent_resolver(host: str, port: int) -> list[Pop]:
        asked.append(host)
        await asyncio.sleep(RESOLVE_TIMEOUT)
        return [Pop(host, port, host)]

    monkeypatch.setattr("relay.agent.pops._addresses", silent_resolver)
    options = AgentOptions(
        "edge.invalid", 7000, "rly_x", (), edges=(("a.invalid", 7000), ("b.invalid", 7000))
    )
    agent = Agent(options, status=lambda _: None)

    async def main() -> float:
        run = asyncio.ensure_future(agent.run())
        while not asked:
            await asyncio.sleep(0.01)
        stopped = time.monotonic()
        agent.stop(now=True)
        await asyncio.wait_for(run, RESOLVE_TIMEOUT * 2)
        return time.monotonic() - stopped

    took = uvloop.run(main())
    assert sorted(asked) == ["a.invalid", "b.invalid"]
    assert took < 1.0, f"the stop waited {took:.2f}s for the resolver"
