"""A credential that ends makes the edge check its live sessions at once
(``Edge.credentials_ended``), whether it ended through this node's API or another node
says so through Redis. One check runs at a time: credentials that end while it runs get
one more check after it, so a bulk revocation (or a flood of ``credentials`` events) is
two control-plane queries per node, not one per credential, and none is missed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relay.edge.cluster import ClusterNode
from relay.edge.server import Edge

pytestmark = pytest.mark.timeout(20)


class _Session:
    authenticated = True
    token_id = "tok_1"


class _Control:
    """A control plane a round trip away; the token is revoked from ``revoked_from`` on
    (the query of that number and later ones see it)."""

    def __init__(self, revoked_from: int = 10**9) -> None:
        self.calls = 0
        self.revoked_from = revoked_from

    async def inactive_tokens(self, token_ids: Any) -> dict[str, str]:
        self.calls += 1
        call = self.calls
        await asyncio.sleep(0.05)
        return {"tok_1": "revoked"} if call >= self.revoked_from else {}


def _edge(control: _Control, ended: list[str]) -> Edge:
    edge = Edge.__new__(Edge)  # the parts a credential check uses, no listeners
    edge.sessions = {_Session()}  # type: ignore[assignment]
    edge.control = control  # type: ignore[assignment]
    edge.cluster = None
    edge._end_for_credential = lambda session, status: ended.append(status)  # type: ignore[method-assign]
    return edge


def test_a_burst_of_credential_events_is_one_check() -> None:
    async def main() -> None:
        control, ended = _Control(), []
        node = ClusterNode.__new__(ClusterNode)
        node.edge = _edge(control, ended)
        for _ in range(500):  # 500 revocations made through the API of other nodes
            node._event({"event": "credentials"})
        await asyncio.sleep(0.3)
        # All arrived before the check's query went: that one query covers them.
        assert control.calls == 1, f"{control.calls} control-plane queries for one burst"

    asyncio.run(main())


def test_a_credential_ended_during_a_check_is_checked_after_it() -> None:
    """What coalescing must not lose (the old code, a check per event, kept it too)."""

    async def main() -> None:
        control, ended = _Control(revoked_from=2), []
        edge = _edge(control, ended)
        edge.credentials_ended(announce=False)  # the first check begins, sees it valid
        await asyncio.sleep(0.01)
        edge.credentials_ended(announce=False)  # revoked meanwhile
        await asyncio.sleep(0.3)
        assert (control.calls, ended) == (2, ["revoked"])
        edge.credentials_ended(announce=False)  # later: a check of its own
        await asyncio.sleep(0.2)
        assert control.calls == 3

    asyncio.run(main())
