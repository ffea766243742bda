"""A reservation made or released is applied only to the live endpoints it can decide
(relay/edge/live_reservations.py ``affected``): the name itself, names and narrower
wildcards under a changed wildcard, a changed port; and the wildcard endpoints above a
changed name get their pins asked again. One rule decides a bind and a live endpoint
(``reservation_refusal``)."""

from __future__ import annotations

from relay.control.for_edge import Reservation
from relay.edge.live_reservations import affected, reservation_refusal
from relay.edge.registry import Holder
from relay.edge.routes import HostEndpoint
from relay.edge.tcp import TcpEndpoint


def host(name: str) -> HostEndpoint:
    return HostEndpoint(f"ep_{name}", "http", name, Holder("tok", "a_1", None), f"http://{name}")


def tcp(port: int) -> TcpEndpoint:
    return TcpEndpoint(f"ep_{port}", port, Holder("tok", "a_1", None), "127.0.0.1", None)


LIVE = [
    host("app.example.com"),
    host("other.example.com"),
    host("*.example.com"),
    host("*.b.example.com"),
    host("x.b.example.com"),
    host("elsewhere.example.org"),
    tcp(20022),
    tcp(20023),
]


def ids(endpoints: list[HostEndpoint] | list[HostEndpoint | TcpEndpoint]) -> set[str]:
    return {e.endpoint_id for e in endpoints}


def test_an_exact_name_decides_itself_and_refreshes_the_wildcards_above_it() -> None:
    hit, wild = affected(LIVE, ["app.example.com"], [])
    assert ids(hit) == {"ep_app.example.com"}
    assert ids(wild) == {"ep_*.example.com"}


def test_a_wildcard_decides_every_name_under_it_and_itself() -> None:
    hit, wild = affected(LIVE, ["*.b.example.com"], [])
    assert ids(hit) == {"ep_*.b.example.com", "ep_x.b.example.com"}
    assert ids(wild) == {"ep_*.example.com"}  # its pins cover *.b.example.com's names
    hit, _ = affected(LIVE, ["*.example.com"], [])
    assert ids(hit) == {
        "ep_app.example.com",
        "ep_other.example.com",
        "ep_*.example.com",
        "ep_*.b.example.com",
        "ep_x.b.example.com",
    }


def test_a_port_decides_its_port_only_and_unrelated_names_nothing() -> None:
    hit, wild = affected(LIVE, [], [20023])
    assert ids(hit) == {"ep_20023"} and wild == []
    assert affected(LIVE, ["nothing.example.net"], [1]) == ([], [])


def test_the_refusal_is_the_binds() -> None:
    assert reservation_refusal("http", "a.example.com", None, "acc_a", "us") is None
    mine = Reservation("acc_a", None)
    assert reservation_refusal("http", "a.example.com", mine, "acc_a", "us") is None
    theirs = reservation_refusal("tcp", 20022, Reservation("acc_b"), "acc_a", "us")
    assert theirs is not None and theirs.code == "RLY_207"
    assert str(theirs) == "tcp port 20022 is reserved by another account"
    pinned = reservation_refusal("http", "a.example.com", Reservation("acc_a", "eu"), "acc_a", "us")
    assert pinned is not None and pinned.code == "RLY_208"
    assert str(pinned).startswith("a.example.com is pinned to region eu; this edge is in region us")
    assert (
        reservation_refusal("http", "a.example.com", Reservation("acc_a", "us"), "acc_a", "us")
        is None
    )
