"""On a node of a cluster that runs workers, the HTTP front places a visitor from its
unparsed head only when another worker of the host holds the visitor's exact name as an
http endpoint (``HttpFront.handed_by_name``): no node can hold a better match, and of two holders as
good the worker wins (relay/edge/workers_then_nodes.py). Any other name is parsed first
and routed with the nodes (node links carry parsed visitors), and the nodes are never
asked from the bytes: their lookup takes a pool's turn.

The end-to-end case (a malformed head answered by the worker serving its name) is in
tests/e2e/test_cluster_nodes_with_workers.py.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Iterator
from typing import Any

import pytest

from relay._httpfront import PARSE_FIRST
from relay.edge.http import HttpFront
from relay.edge.registry import Holder
from relay.edge.routes import HostEndpoint, HostRoutes
from relay.edge.worker import RemoteEndpoint
from relay.edge.workers_then_nodes import WorkersThenNodes
from tests.unit.test_a_wildcard_never_serves_names_pinned_elsewhere import front as plain_front

NAME = "app.example.com"


class NodesNeverAsked:
    """The front's ``elsewhere`` on a node: any lookup from the bytes is a failure."""

    def http_holder(self, hostname: str) -> Any | None:
        raise AssertionError(f"the nodes were asked for {hostname} before the parse")

    def hand_off(self, transport: Any, carried: bytes, target: Any) -> bool:
        raise AssertionError("handed over by the table's test")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    made = asyncio.new_event_loop()
    yield made
    made.close()


def node_front(
    loop: asyncio.AbstractEventLoop,
    siblings: dict[str, RemoteEndpoint] | None,
    local: HostEndpoint | None = None,
) -> HttpFront:
    """A worker's front on a node of a cluster; ``siblings``: the names the host's other
    workers hold (None: a node without workers)."""
    routes: HostRoutes[HostEndpoint] = HostRoutes()
    if local is not None:
        routes.add(local)
    front = plain_front(routes, loop)
    front.serve_elsewhere(NodesNeverAsked())
    front.carrier = lambda target: None
    if siblings is not None:
        front.sibling_holder = siblings.get
    return front


def local_endpoint(hostname: str, live: bool = True) -> HostEndpoint:
    session = types.SimpleNamespace(accepting_visitors=True, link=object()) if live else None
    return HostEndpoint("ep_here", "http", hostname, Holder("t", "a_1", session), "x")


def test_a_sibling_holding_the_exact_name_takes_the_visitor_by_its_bytes(
    loop: asyncio.AbstractEventLoop,
) -> None:
    sibling = RemoteEndpoint("http", NAME, (1,))
    front = node_front(loop, {NAME: sibling})
    assert front.decides_by_name()
    assert front.handed_by_name(NAME) is sibling


def test_a_sibling_s_wildcard_waits_for_the_parse(loop: asyncio.AbstractEventLoop) -> None:
    """Another node may hold the exact name: that is for ``route`` to weigh."""
    wildcard = RemoteEndpoint("http", "*.example.com", (1,))
    front = node_front(loop, {NAME: wildcard})
    assert front.handed_by_name(NAME) is PARSE_FIRST


def test_a_name_no_sibling_holds_waits_for_the_parse(loop: asyncio.AbstractEventLoop) -> None:
    front = node_front(loop, {})
    assert front.handed_by_name(NAME) is PARSE_FIRST


def test_a_name_served_here_exactly_is_served_here(loop: asyncio.AbstractEventLoop) -> None:
    """Even while a sibling holds it too (a pool): this worker's member wins, as in
    ``route``, and nothing is looked up again after the parse."""
    front = node_front(loop, {NAME: RemoteEndpoint("http", NAME, (1,))}, local_endpoint(NAME))
    assert front.handed_by_name(NAME) is None


def test_a_sibling_wins_over_an_exact_name_here_that_takes_no_visitors(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Its agent gone (kept in grace): the sibling's live member serves the name."""
    sibling = RemoteEndpoint("http", NAME, (1,))
    front = node_front(loop, {NAME: sibling}, local_endpoint(NAME, live=False))
    assert front.handed_by_name(NAME) is sibling


def test_a_node_without_workers_parses_every_visitor_first(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """No sibling to hand to, and its node links carry visitors parsed: its visitors'
    heads are not scanned for their Host at all."""
    assert not node_front(loop, None).decides_by_name()


def test_workers_without_a_cluster_decide_by_name(loop: asyncio.AbstractEventLoop) -> None:
    front = node_front(loop, None)
    front.carrier = None
    assert front.decides_by_name()


def test_a_sibling_s_https_name_waits_for_the_parse(loop: asyncio.AbstractEventLoop) -> None:
    """The sibling would only redirect the visitor to https; another node's http
    endpoint for the name serves it instead (``WorkersThenNodes.http_holder``)."""
    front = node_front(loop, {NAME: RemoteEndpoint("sni", NAME, (1,))})
    assert front.handed_by_name(NAME) is PARSE_FIRST


class Holders:
    """One place's answer to ``http_holder``, for any name."""

    def __init__(self, found: Any | None) -> None:
        self.found = found

    def http_holder(self, hostname: str) -> Any | None:
        return self.found


@pytest.mark.parametrize(
    ("worker", "node", "chosen"),
    [
        # The sibling's http endpoint: the worker wins a tie, the more specific wins.
        (RemoteEndpoint("http", NAME, (1,)), "exact", "worker"),
        (RemoteEndpoint("http", "*.example.com", (1,)), "exact", "node"),
        # The sibling's https endpoint (a redirect): any http endpoint of a node first.
        (RemoteEndpoint("sni", NAME, (1,)), "exact", "node"),
        (RemoteEndpoint("sni", NAME, (1,)), "wildcard", "node"),
        (RemoteEndpoint("sni", NAME, (1,)), None, "worker"),
        (None, "exact", "node"),
    ],
)
def test_workers_then_nodes_put_an_http_endpoint_before_a_redirect(
    worker: RemoteEndpoint | None, node: str | None, chosen: str
) -> None:
    held = {"exact": NAME, "wildcard": "*.example.com"}
    remote = None if node is None else types.SimpleNamespace(hostname=held[node])
    both = WorkersThenNodes(Holders(worker), Holders(remote))  # type: ignore[arg-type]
    assert both.http_holder(NAME) is (worker if chosen == "worker" else remote)
