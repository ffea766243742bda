"""What an edge reads to apply reservations to its live endpoints (relay/edge/
live_reservations.py): the domains and ports reserved or released after a mark, read from
the audit log in commit order, a page at a time, whatever else was audited in between;
and, for many names and ports at once, the reservation that decides each, exactly as a
bind's question would. On SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relay.control.reserved import MAX_ASKED
from relay.control.store import Store
from relay.errors import ConfigError


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def test_the_feed_names_each_change_after_the_mark_and_nothing_before(store: Store) -> None:
    first = store.reservation_changes(None, 100)
    assert first.everything and not first.domains and not first.ports  # no mark yet
    mark = first.mark
    assert store.reservation_changes(mark, 100).domains == ()  # nothing since
    acc = store.create_account("acme", actor="test")
    held = store.reserve_domain(acc.id, "App.Example.com", region="eu", actor="test")
    store.audit.append("test", "something.else", "", {"domain": "noise.example.com"})
    port = store.reserve_addr(acc.id, 20022, actor="test")
    store.release_domain(held.id, actor="test")
    changes = store.reservation_changes(mark, 100)
    assert not changes.everything and not changes.more
    assert changes.domains == ("app.example.com",)  # reserved then released: once
    assert changes.ports == (20022,)
    assert changes.mark > mark
    # From the new mark: nothing, though other events follow.
    store.audit.append("test", "auth.fail", "", {})
    after = store.reservation_changes(changes.mark, 100)
    assert (after.domains, after.ports, after.everything) == ((), (), False)
    store.release_addr(port.id, actor="test")
    assert store.reservation_changes(after.mark, 100).ports == (20022,)


def test_the_feed_is_read_a_page_at_a_time(store: Store) -> None:
    mark = store.reservation_changes(None, 10).mark
    acc = store.create_account("acme", actor="test")
    names = [f"n{i}.example.com" for i in range(7)]
    for name in names:
        store.reserve_domain(acc.id, name, actor="test")
    seen: list[str] = []
    pages = 0
    while True:
        page = store.reservation_changes(mark, 3)
        seen += page.domains
        mark = page.mark
        pages += 1
        if not page.more:
            break
    assert seen == names and pages == 3


def test_a_mark_past_the_newest_event_means_everything(store: Store) -> None:
    """Another database (restored, replaced): the edge cannot know what changed."""
    newest = store.reservation_changes(None, 10).mark
    assert store.reservation_changes(newest + 1000, 10).everything


def test_owners_are_decided_as_a_bind_decides_them(store: Store) -> None:
    a = store.create_account("a", actor="test")
    b = store.create_account("b", actor="test")
    store.reserve_domain(a.id, "*.example.com", region="eu", actor="test")
    store.reserve_domain(a.id, "open.example.com", actor="test")
    store.reserve_domain(b.id, "b.example.org", actor="test")
    store.reserve_addr(b.id, 20022, region="us", actor="test")
    asked = ["x.y.example.com", "open.example.com", "b.example.org", "free.example.net"]
    names, ports = store.reservation_owners(asked, [20022, 20023])
    assert set(names) == {"x.y.example.com", "open.example.com", "b.example.org"}
    for name in names:
        bind = store.bind_owner("http", name)
        assert bind is not None and names[name] == bind
    assert names["x.y.example.com"].domain == "*.example.com"  # the nearest wildcard
    assert names["open.example.com"].region is None  # its own reservation beats the pin
    assert set(ports) == {20022} and ports[20022].region == "us"
    with pytest.raises(ConfigError):
        store.reservation_owners([f"n{i}.example.com" for i in range(MAX_ASKED + 1)], [])


def test_the_feed_tells_an_operators_changes_from_a_members(store: Store) -> None:
    """Only an operator's change may end another account's live endpoint at once: an
    operator account's API key, or a writer of the store itself (`relay control`'s CLI);
    never a member's key (relay/control/api/auth.py names a key ``api_key:ID``)."""
    mark = store.reservation_changes(None, 10).mark
    ops = store.create_account("ops", role="operator", actor="test")
    b = store.create_account("b", actor="test")
    operator_key, _ = store.create_api_key(ops.id, scopes=["admin"], pepper=b"p" * 32)
    member_key, _ = store.create_api_key(b.id, scopes=["reserved:write"], pepper=b"p" * 32)
    store.reserve_domain(b.id, "by-member.example.com", actor=f"api_key:{member_key.id}")
    store.reserve_addr(b.id, 20030, actor=f"api_key:{member_key.id}")
    store.reserve_domain(b.id, "by-operator.example.com", actor=f"api_key:{operator_key.id}")
    store.reserve_addr(b.id, 20031, actor="cli")
    store.reserve_domain(b.id, "unknown-key.example.com", actor="api_key:nosuchkey")
    changes = store.reservation_changes(mark, 100)
    assert changes.domains == (
        "by-member.example.com",
        "by-operator.example.com",
        "unknown-key.example.com",
    )
    assert changes.ports == (20030, 20031)
    assert changes.operator_domains == ("by-operator.example.com",)
    assert changes.operator_ports == (20031,)
