"""A wildcard endpoint never serves a name under it reserved with a pin to another region,
whether or not that name's own agent is connected anywhere, with a cluster or without:
the bind asks the control plane once for the reservations under the wildcard pinned
elsewhere (Store.pins_under, reduced by relay/control/reserved.py ``decisive_pins``) and
keeps them on the endpoint (HostEndpoint.pins); the route lookup refuses those names
(HostRoutes.find), and the fronts answer as for a name held in another region: HTTP 421
RLY_631 naming the region, a TLS ``unrecognized_name`` alert on the TLS port.

The reviewer's case: ``app.example.com`` pinned to eu, ``*.example.com`` bound on a us
edge, the eu agent offline. Before, the us wildcard served app.example.com.
"""

from __future__ import annotations

import asyncio
import socket
import types
from collections.abc import Iterator

import pytest

from relay.control.reserved import decisive_pins
from relay.control.store import Store
from relay.edge.http import HttpFront
from relay.edge.registry import Holder
from relay.edge.routes import HostEndpoint, HostRoutes
from relay.edge.tls_front import ALERT_UNRECOGNIZED_NAME, TlsFront

PEER = ("198.51.100.9", 5555)


def wildcard(kind: str, pins: dict[str, str | None]) -> tuple[HostRoutes[HostEndpoint], object]:
    """A front's routes with ``*.example.com`` served by a live agent (its link), bound
    with ``pins`` as the edge's bind sets them."""
    link = object()
    session = types.SimpleNamespace(accepting_visitors=True, link=link)
    routes: HostRoutes[HostEndpoint] = HostRoutes()
    endpoint = HostEndpoint(
        "ep_wild", kind, "*.example.com", Holder("tok_x", "a_1", session), "x", pins=pins
    )
    routes.add(endpoint)
    return routes, link


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    made = asyncio.new_event_loop()
    yield made
    made.close()


def front(routes: HostRoutes[HostEndpoint], loop: asyncio.AbstractEventLoop) -> HttpFront:
    return HttpFront(
        routes,
        loop=loop,
        max_head=8192,
        max_headers=100,
        max_body=0,
        header_timeout=5,
        idle_timeout=5,
    )


def test_the_decisive_pins_are_those_that_change_the_answer_above_them() -> None:
    covered: dict[str, str | None] = {
        "app.example.com": "eu",  # pinned elsewhere: refused
        "local.example.com": "us",  # pinned here: served, as the wildcard would
        "free.example.com": None,  # unpinned: served
        "*.eu.example.com": "eu",  # every name under it refused...
        "back.eu.example.com": None,  # ...but this one, servable anywhere again
        "also.eu.example.com": "ap",  # pinned elsewhere too: another region named
        "same.eu.example.com": "eu",  # as the wildcard above it says: pruned
    }
    assert decisive_pins(covered, "*.example.com", "us") == {
        "app.example.com": "eu",
        "*.eu.example.com": "eu",
        "back.eu.example.com": None,
        "also.eu.example.com": "ap",
    }
    # Nothing pinned elsewhere: nothing kept (the usual wildcard costs an empty dict).
    assert (
        decisive_pins({"a.example.com": None, "*.b.example.com": "us"}, "*.example.com", "us") == {}
    )


def test_the_route_lookup_refuses_what_the_pins_say_and_serves_the_rest() -> None:
    pins = {"app.example.com": "eu", "*.eu.example.com": "eu", "back.eu.example.com": None}
    routes, _ = wildcard("http", pins)
    endpoint = routes.get("*.example.com")
    assert routes.find("app.example.com") == (None, "eu")
    assert routes.find("x.eu.example.com") == (None, "eu")
    assert routes.find("deep.x.eu.example.com") == (None, "eu")
    assert routes.find("back.eu.example.com") == (endpoint, None)
    assert routes.find("www.example.com") == (endpoint, None)
    assert routes.find("app.example.org") == (None, None)
    # Whoever else looks the name up (a visitor another node carried here) finds nothing.
    assert routes.lookup("app.example.com") is None
    assert routes.lookup("www.example.com") is endpoint
    # An exact endpoint of its own wins before any wildcard (bound only in its region).
    session = types.SimpleNamespace(accepting_visitors=True, link=object())
    exact = HostEndpoint("ep_app", "http", "app.example.com", Holder("t", "a_2", session), "y")
    routes.add(exact)
    assert routes.find("app.example.com") == (exact, None)


def test_without_a_cluster_the_http_front_refuses_421_rly_631_naming_the_region(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The reviewer's reproduction, with no cluster at all: no presence says where the
    pinned name is, and no agent of it is connected anywhere."""
    routes, link = wildcard("http", {"app.example.com": "eu"})
    http = front(routes, loop)
    refused = http.route("app.example.com", b"/", "http", PEER, None, None, False)
    assert refused == (
        421,
        "RLY_631",
        "app.example.com is served in region eu, not this one",
        None,
        0,
    )
    served = http.route("www.example.com", b"/", "http", PEER, None, None, False)
    assert served[0] == 0 and served[1] is link, served
    # On the TLS port, a Host of the pinned name inside www's TLS connection: the
    # region's refusal, not served and not RLY_630.
    tls_routes, _ = wildcard("https", {"app.example.com": "eu"})
    https = front(tls_routes, loop)
    inside = https.route("app.example.com", b"/", "https", PEER, None, "ep_wild", False)
    assert inside[:2] == (421, "RLY_631"), inside


def test_the_tls_port_refuses_a_pinned_name_with_an_unrecognized_name_alert(
    loop: asyncio.AbstractEventLoop,
) -> None:
    for kind in ("https", "tls"):
        routes, _ = wildcard(kind, {"app.example.com": "eu"})
        tls = TlsFront(
            routes,
            front(routes, loop),
            context_for=lambda name: None,
            acme_context_for=None,
            hello_timeout=5,
        )
        tls.loop = loop
        ours, theirs = socket.socketpair()
        with theirs:
            tls.dispatch(ours, "app.example.com", (), 0)
            theirs.settimeout(5)
            # The same alert a name held in another region gets, then the end.
            assert theirs.recv(64) == ALERT_UNRECOGNIZED_NAME, kind
            assert theirs.recv(64) == b"", kind


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def test_the_store_answers_the_pins_under_a_wildcard_in_one_query(store: Store) -> None:
    account = store.create_account("acme", actor="test")
    store.reserve_domain(account.id, "*.example.com", actor="test")
    store.reserve_domain(account.id, "app.example.com", region="eu", actor="test")
    store.reserve_domain(account.id, "us.example.com", region="us", actor="test")
    store.reserve_domain(account.id, "*.eu.example.com", region="eu", actor="test")
    store.reserve_domain(account.id, "back.eu.example.com", actor="test")
    store.reserve_domain(account.id, "other.example.org", region="eu", actor="test")
    assert store.pins_under("*.example.com", "us") == {
        "app.example.com": "eu",
        "*.eu.example.com": "eu",
        "back.eu.example.com": None,
    }
    assert store.pins_under("*.example.com", "eu") == {"us.example.com": "us"}
    # Under a narrower wildcard only what differs from that wildcard's own answer counts.
    assert store.pins_under("*.eu.example.com", "us") == {}
    assert store.pins_under("*.example.org", "us") == {"other.example.org": "eu"}
    assert store.pins_under("app.example.com", "us") == {}  # not a wildcard
