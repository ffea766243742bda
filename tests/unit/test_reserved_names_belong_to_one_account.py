"""Reserved domains and TCP addresses belong to one account: a name is reserved once,
lowercased and checked; a wildcard decides every name under it unless a name of its own
does (exact first, then the nearest wildcard, as the edge routes); no account can reserve
into or over another account's names; suspended accounts reserve nothing; every change is
audited in its own transaction. On SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from relay.control.reserved import shared_domain_covered
from relay.control.store import (
    AccountRecord,
    ReservedAddrRecord,
    ReservedDomainRecord,
    Store,
    TokenRecord,
    token_allows_bind,
)
from relay.errors import AccountSuspended, ConfigError, Conflict, NotFound

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url, clock=lambda: T0)
    yield s
    s.close()


@pytest.fixture
def alice(store: Store) -> AccountRecord:
    return store.create_account("alice", actor="test")


@pytest.fixture
def bob(store: Store) -> AccountRecord:
    return store.create_account("bob", actor="test")


def events(store: Store, prefix: str) -> list[tuple[str, str, str, dict[str, object]]]:
    return [
        (e.actor, e.action, e.target, dict(e.detail))
        for e in store.audit.events()
        if e.action.startswith(prefix)
    ]


# -- domains -------------------------------------------------------------------------------


def test_a_domain_is_reserved_lowercased_for_its_account_and_audited(
    store: Store, alice: AccountRecord
) -> None:
    made = store.reserve_domain(alice.id, " App.Example.COM. ", actor="api_key:k1")
    assert made.id.startswith("rd_") and len(made.id) == 15
    assert made.id[3:].isalnum() and made.id[3:] == made.id[3:].lower()
    assert (made.account_id, made.domain, made.certificate_mode, made.region) == (
        alice.id,
        "app.example.com",
        "auto",
        None,
    )
    assert made.created_at == T0
    assert store.get_reserved_domain(made.id) == made
    wild = store.reserve_domain(
        alice.id, "*.example.org", certificate_mode="manual", region="eu", actor="api_key:k1"
    )
    assert (wild.domain, wild.certificate_mode, wild.region) == ("*.example.org", "manual", "eu")
    assert events(store, "reserved_domain.") == [
        (
            "api_key:k1",
            "reserved_domain.create",
            made.id,
            {
                "account_id": alice.id,
                "domain": "app.example.com",
                "certificate_mode": "auto",
                "region": None,
            },
        ),
        (
            "api_key:k1",
            "reserved_domain.create",
            wild.id,
            {
                "account_id": alice.id,
                "domain": "*.example.org",
                "certificate_mode": "manual",
                "region": "eu",
            },
        ),
    ]
    assert store.audit.verify() == 3  # alice's account, then the two reservations


def test_a_reservation_without_an_account_is_the_default_accounts(store: Store) -> None:
    made = store.reserve_domain(None, "mine.example.com")
    assert made.account_id == store.default_account().id
    port = store.reserve_addr(None, 2222)
    assert port.account_id == store.default_account().id


@pytest.mark.parametrize(
    "domain",
    [
        "",
        "com",  # one label: a TLD is nobody's
        "*.com",
        "*",
        "a..example.com",
        "-a.example.com",
        "a-.example.com",
        "a_b.example.com",
        "exa mple.com",
        "*.*.example.com",
        "a.*.example.com",
        "1.2.3.4",
        "ünicode.example.com",
        "x" * 64 + ".example.com",
        ("a" * 60 + ".") * 5 + "com",  # longer than 253
    ],
    ids=repr,
)
def test_a_malformed_domain_is_refused_and_nothing_is_written(
    store: Store, alice: AccountRecord, domain: str
) -> None:
    with pytest.raises(ConfigError):
        store.reserve_domain(alice.id, domain)
    assert store.list_reserved_domains() == []
    assert events(store, "reserved_") == []


def test_a_bad_certificate_mode_region_or_type_is_refused(
    store: Store, alice: AccountRecord
) -> None:
    with pytest.raises(ConfigError, match="certificate_mode"):
        store.reserve_domain(alice.id, "a.example.com", certificate_mode="acme")  # type: ignore[arg-type]
    for region in ("", "EU", "eu_west", "-eu", "e" * 33):
        with pytest.raises(ConfigError, match="region"):
            store.reserve_domain(alice.id, "a.example.com", region=region)
        with pytest.raises(ConfigError, match="region"):
            store.reserve_addr(alice.id, 2222, region=region)
    with pytest.raises(ConfigError):
        store.reserve_domain(alice.id, 42)  # type: ignore[arg-type]
    for port in (0, 65536, -1, True, "22"):
        with pytest.raises(ConfigError, match="1 to 65535"):
            store.reserve_addr(alice.id, port)  # type: ignore[arg-type]
    assert store.list_reserved_domains() == [] and store.list_reserved_addrs() == []


def test_a_name_is_reserved_once_whoever_asks_again(
    store: Store, alice: AccountRecord, bob: AccountRecord
) -> None:
    store.reserve_domain(alice.id, "shop.example.com")
    for account, name in ((alice, "shop.example.com"), (bob, "SHOP.example.com.")):
        with pytest.raises(Conflict, match="already reserved") as caught:
            store.reserve_domain(account.id, name)
        assert caught.value.code == "RLY_602"
    store.reserve_addr(alice.id, 2222)
    with pytest.raises(Conflict, match="already reserved"):
        store.reserve_addr(bob.id, 2222)
    assert len(store.list_reserved_domains()) == 1 and len(store.list_reserved_addrs()) == 1
    assert len(events(store, "reserved_")) == 2  # a refusal writes nothing


def test_no_account_reserves_under_or_over_another_accounts_names(
    store: Store, alice: AccountRecord, bob: AccountRecord
) -> None:
    store.reserve_domain(alice.id, "*.example.com")
    store.reserve_domain(alice.id, "api.example.org")
    # Under alice's wildcard, at any depth, or a nearer wildcard there: alice's names.
    for name in ("x.example.com", "a.b.example.com", "*.b.example.com"):
        with pytest.raises(Conflict, match=r"falls under \*\.example\.com"):
            store.reserve_domain(bob.id, name)
    # A wildcard over alice's exact name would take every name beside it.
    with pytest.raises(Conflict, match=r"would cover api\.example\.org"):
        store.reserve_domain(bob.id, "*.example.org")
    # The apex is not under the wildcard, and other domains are free.
    assert store.reserve_domain(bob.id, "example.com").account_id == bob.id
    assert store.reserve_domain(bob.id, "www.example.org").account_id == bob.id
    # Alice may refine her own names: an exact name or a nearer wildcard under hers.
    assert store.reserve_domain(alice.id, "x.example.com").account_id == alice.id
    assert store.reserve_domain(alice.id, "*.b.example.com").account_id == alice.id


def test_a_suspended_or_unknown_account_reserves_nothing(
    store: Store, alice: AccountRecord
) -> None:
    store.set_account_status(alice.id, "suspended")
    with pytest.raises(AccountSuspended) as caught:
        store.reserve_domain(alice.id, "a.example.com")
    assert caught.value.code == "RLY_104"
    with pytest.raises(AccountSuspended):
        store.reserve_addr(alice.id, 2222)
    with pytest.raises(NotFound):
        store.reserve_domain("acc_nosuchaccount", "a.example.com")
    with pytest.raises(NotFound):
        store.reserve_addr("acc_nosuchaccount", 2222)
    assert store.list_reserved_domains() == [] and store.list_reserved_addrs() == []
    # What a suspended account holds stays its own: nobody else takes it meanwhile.
    store.set_account_status(alice.id, "active")
    store.reserve_domain(alice.id, "a.example.com")
    store.set_account_status(alice.id, "suspended")
    owner = store.bind_owner("http", "a.example.com")
    assert owner is not None and owner.account_id == alice.id


def test_released_names_are_free_again_and_the_release_is_audited(
    store: Store, alice: AccountRecord, bob: AccountRecord
) -> None:
    domain = store.reserve_domain(alice.id, "*.example.com")
    addr = store.reserve_addr(alice.id, 2222, region="us-cal-1")
    assert store.release_domain(domain.id, actor="cli") == domain
    assert store.release_addr(addr.id, actor="cli") == addr
    for release, rid in ((store.release_domain, domain.id), (store.release_addr, addr.id)):
        with pytest.raises(NotFound):
            release(rid)
    with pytest.raises(NotFound):
        store.get_reserved_domain(domain.id)
    with pytest.raises(NotFound):
        store.get_reserved_addr(addr.id)
    assert store.bind_owner("https", "a.example.com") is None
    assert store.bind_owner("tcp", 2222) is None
    assert store.reserve_domain(bob.id, "a.example.com").account_id == bob.id
    assert store.reserve_addr(bob.id, 2222).account_id == bob.id
    assert [(a, t, d) for _, a, t, d in events(store, "reserved_") if "release" in a] == [
        (
            "reserved_domain.release",
            domain.id,
            {"account_id": alice.id, "domain": "*.example.com"},
        ),
        ("reserved_addr.release", addr.id, {"account_id": alice.id, "port": 2222}),
    ]
    assert store.audit.verify() == len(store.audit.events())


# -- what the edge asks --------------------------------------------------------------------


def test_the_owner_of_a_name_is_its_own_reservation_else_the_nearest_wildcard(
    store: Store, alice: AccountRecord, bob: AccountRecord
) -> None:
    wide = store.reserve_domain(alice.id, "*.example.com")
    near = store.reserve_domain(alice.id, "*.eu.example.com")
    exact = store.reserve_domain(alice.id, "shop.eu.example.com")
    other = store.reserve_domain(bob.id, "example.net")

    def owner(kind: str, name: str) -> ReservedDomainRecord | ReservedAddrRecord | None:
        return store.bind_owner(kind, name)

    for kind in ("http", "https", "tls"):  # one name across the three
        assert owner(kind, "shop.eu.example.com") == exact
        assert owner(kind, "Shop.EU.example.com.") == exact
        assert owner(kind, "cart.eu.example.com") == near
        assert owner(kind, "a.b.eu.example.com") == near
        assert owner(kind, "*.eu.example.com") == near
        assert owner(kind, "www.example.com") == wide
        assert owner(kind, "a.b.c.example.com") == wide
        assert owner(kind, "*.x.example.com") == wide
        assert owner(kind, "example.net") == other
    assert owner("http", "example.com") is None  # a wildcard does not cover its apex
    assert owner("http", "www.example.net") is None  # an exact name covers nothing under it
    assert owner("http", "unrelated.test") is None


def test_the_owner_of_a_port_and_the_set_the_edge_skips(
    store: Store, alice: AccountRecord, bob: AccountRecord
) -> None:
    assert store.reserved_ports() == set()
    ssh = store.reserve_addr(alice.id, 2222)
    db = store.reserve_addr(bob.id, 5432, region="eu")
    assert store.bind_owner("tcp", 2222) == ssh
    assert store.bind_owner("tcp", 5432) == db
    assert store.bind_owner("tcp", 2223) is None
    assert store.reserved_ports() == {2222, 5432}
    # A port is not a name, nor a name a port.
    with pytest.raises(ConfigError):
        store.bind_owner("tcp", "2222")
    with pytest.raises(ConfigError):
        store.bind_owner("http", 2222)
    with pytest.raises(ConfigError):
        store.bind_owner("udp", 2222)


def test_lists_page_by_id_and_filter_by_account(
    store: Store, alice: AccountRecord, bob: AccountRecord
) -> None:
    mine = [store.reserve_domain(alice.id, f"n{i}.example.com") for i in range(5)]
    theirs = store.reserve_domain(bob.id, "b.example.net")
    everything = store.list_reserved_domains()
    assert [r.id for r in everything] == sorted(r.id for r in [*mine, theirs])
    assert store.list_reserved_domains(account_id=alice.id) == sorted(mine, key=lambda r: r.id)
    pages: list[ReservedDomainRecord] = []
    after = None
    while page := store.list_reserved_domains(account_id=alice.id, after=after, limit=2):
        assert len(page) <= 2
        pages += page
        after = page[-1].id
    assert pages == sorted(mine, key=lambda r: r.id)
    ports = [store.reserve_addr(alice.id, 3000 + i) for i in range(3)]
    store.reserve_addr(bob.id, 4000)
    assert store.list_reserved_addrs(account_id=alice.id) == sorted(ports, key=lambda r: r.id)
    assert len(store.list_reserved_addrs(limit=3)) == 3
    with pytest.raises(ConfigError):
        store.list_reserved_addrs(limit=0)


def race(database_url: str, attempts: list[Callable[[Store], object]]) -> list[str]:
    """Run each attempt at once on a store of its own; "ok" or the error's class name."""
    stores = [Store.open(database_url) for _ in attempts]
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def run(s: Store, attempt: Callable[[Store], object]) -> None:
        barrier.wait()
        try:
            attempt(s)
            outcomes.append("ok")
        except BaseException as exc:  # reported by the caller's assertion
            outcomes.append(type(exc).__name__)

    pairs = zip(stores, attempts, strict=True)
    threads = [threading.Thread(target=run, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    return sorted(outcomes)


def test_racing_reservers_get_one_reservation_and_conflicts(database_url: str) -> None:
    setup = Store.open(database_url)
    accounts = [setup.create_account(f"racer-{i}") for i in range(4)]
    setup.close()
    same_name = [lambda s, a=a: s.reserve_domain(a.id, "race.example.com") for a in accounts]
    assert race(database_url, same_name) == ["Conflict", "Conflict", "Conflict", "ok"]
    same_port = [lambda s, a=a: s.reserve_addr(a.id, 7000) for a in accounts]
    assert race(database_url, same_port) == ["Conflict", "Conflict", "Conflict", "ok"]
    # Overlapping, not equal: a wildcard and names under it, each for another account.
    overlapping = [
        lambda s: s.reserve_domain(accounts[0].id, "*.overlap.example.com"),
        lambda s: s.reserve_domain(accounts[1].id, "a.overlap.example.com"),
        lambda s: s.reserve_domain(accounts[2].id, "b.c.overlap.example.com"),
    ]
    outcomes = race(database_url, overlapping)
    check = Store.open(database_url)
    try:
        held = {
            r.account_id
            for r in check.list_reserved_domains()
            if r.domain.endswith("overlap.example.com")
        }
        # One account holds the overlap: the wildcard alone, or the names without it.
        assert held in ({accounts[0].id}, {accounts[1].id, accounts[2].id}), outcomes
        assert outcomes in (["Conflict", "Conflict", "ok"], ["Conflict", "ok", "ok"])
        assert check.audit.verify() == len(check.audit.events())
    finally:
        check.close()


# -- the bind ACL narrows what a reservation grants ----------------------------------------


def token(acl: tuple[str, ...]) -> TokenRecord:
    return TokenRecord(
        id="t" * 12,
        description="",
        created_at=T0,
        expires_at=None,
        revoked_at=None,
        last_used_at=None,
        bind_acl=acl,
        account_id="acc_" + "a" * 12,
        last_used_addr=None,
    )


def test_the_catch_all_acl_covers_the_accounts_reserved_names_and_narrower_acls_restrict() -> None:
    base = "relay.example"
    everything = token(("*",))
    for name in ("app.example.com", "*.example.com", "*.relay.example"):
        assert not token_allows_bind(everything, "https", hostname=name, base_domain=base)
        assert token_allows_bind(
            everything, "https", hostname=name, base_domain=base, reserved=True
        )
    assert token_allows_bind(everything, "http", hostname="a.relay.example", base_domain=base)
    narrow = token(("tcp:*", "http:other.example.com"))
    assert not token_allows_bind(
        narrow, "https", hostname="app.example.com", base_domain=base, reserved=True
    )
    assert token_allows_bind(
        narrow, "http", hostname="other.example.com", base_domain=base, reserved=True
    )


@pytest.mark.parametrize(
    ("domain", "covered"),
    [
        ("*.edge.example.com", "edge.example.com"),
        ("*.example.com", "edge.example.com"),  # above it: every name under it too
        ("*.example.net", "pop.example.net"),
        ("*.team.edge.example.com", None),  # a part of its names, not all
        ("app.edge.example.com", None),  # one name
        ("*.xedge.example.com", None),  # labels, not letters
        ("*.other.org", None),
    ],
)
def test_only_a_wildcard_over_all_of_a_shared_domain_is_covered(
    domain: str, covered: str | None
) -> None:
    assert shared_domain_covered(domain, ("edge.example.com", "pop.example.net")) == covered
