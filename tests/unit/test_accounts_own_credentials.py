"""Accounts own credentials: names are checked and unique, suspension and resumption are
audited and idempotent, every authtoken belongs to an account (the ``default`` operator
account when none is named), and a suspended account's tokens stop working — revealed
only to a caller with the right secret. On SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
from dataclasses import fields
from datetime import UTC, datetime, timedelta

import pytest

from relay.control.store import AccountRecord, Store
from relay.control.tokens import parse_token
from relay.errors import (
    AccountSuspended,
    AuthError,
    ConfigError,
    Conflict,
    ExpiredToken,
    InvalidToken,
    NotFound,
    RevokedToken,
    error_from_code,
)
from tests.store_clock import FakeClock

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def actions(store: Store) -> list[tuple[str, str, str, dict[str, object]]]:
    return [(e.actor, e.action, e.target, dict(e.detail)) for e in store.audit.events()]


# -- accounts ------------------------------------------------------------------------------


def test_an_account_is_created_active_and_found_by_id_and_name(store: Store) -> None:
    acme = store.create_account("acme-corp", actor="alice")
    assert acme.id.startswith("acc_") and len(acme.id) == 16
    assert acme.id[4:].isalnum() and acme.id[4:] == acme.id[4:].lower()
    assert (acme.name, acme.role, acme.status) == ("acme-corp", "member", "active")
    assert (acme.created_at, acme.suspended_at) == (T0, None)
    assert store.get_account(acme.id) == acme == store.get_account_by_name("acme-corp")
    ops = store.create_account("ops", role="operator")
    assert ops.role == "operator"
    assert actions(store) == [
        ("alice", "account.create", acme.id, {"name": "acme-corp", "role": "member"}),
        ("admin", "account.create", ops.id, {"name": "ops", "role": "operator"}),
    ]
    assert store.audit.verify() == 2


def test_account_records_hold_exactly_what_the_interface_names() -> None:
    assert [f.name for f in fields(AccountRecord)] == [
        "id",
        "name",
        "role",
        "status",
        "created_at",
        "suspended_at",
    ]


def test_a_taken_name_is_a_conflict_and_changes_nothing(store: Store) -> None:
    store.create_account("acme")
    with pytest.raises(Conflict) as exc_info:
        store.create_account("acme", role="operator")
    assert exc_info.value.code == "RLY_602"
    with pytest.raises(Conflict):
        store.create_account("default")  # the migration's account holds its name too
    assert [a.name for a in store.list_accounts() if a.name == "acme"] == ["acme"]
    assert store.audit.verify() == 1


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-acme",
        "acme-",
        "Acme",
        "ac me",
        "ac_me",
        "acme.example",
        "a" * 64,
        "ａcme",  # a full-width look-alike  # noqa: RUF001
        "acme\n",
    ],
)
def test_bad_account_names_are_config_errors(store: Store, name: str) -> None:
    with pytest.raises(ConfigError):
        store.create_account(name)
    assert len(store.list_accounts()) == 1  # only default
    assert store.audit.verify() == 0


@pytest.mark.parametrize("name", ["a", "0", "a-b", "a--b", "x" * 63, "1st-team"])
def test_good_account_names_are_taken_as_given(store: Store, name: str) -> None:
    assert store.create_account(name).name == name


def test_a_bad_role_is_a_config_error(store: Store) -> None:
    with pytest.raises(ConfigError):
        store.create_account("acme", role="root")  # type: ignore[arg-type]


def test_unknown_accounts_are_not_found(store: Store) -> None:
    for lookup in (store.get_account, store.get_account_by_name):
        with pytest.raises(NotFound) as exc_info:
            lookup("acc_aaaaaaaaaaaa")
        assert exc_info.value.code == "RLY_601"
    with pytest.raises(NotFound):
        store.set_account_status("acc_aaaaaaaaaaaa", "suspended")
    long = "x" * 10_000
    with pytest.raises(NotFound) as exc_info:
        store.get_account(long)
    assert len(str(exc_info.value)) < 100  # a long id is not echoed whole


def test_accounts_are_listed_by_id_a_page_at_a_time(store: Store) -> None:
    for i in range(5):
        store.create_account(f"team-{i}")
    everyone = store.list_accounts()
    assert [a.id for a in everyone] == sorted(a.id for a in everyone)
    assert len(everyone) == 6
    first = store.list_accounts(limit=4)
    rest = store.list_accounts(after=first[-1].id, limit=4)
    assert first + rest == everyone
    assert store.list_accounts(after=everyone[-1].id) == []
    with pytest.raises(ConfigError):
        store.list_accounts(limit=0)


def test_the_default_account_is_an_operator(store: Store) -> None:
    default = store.default_account()
    assert (default.name, default.role, default.status) == ("default", "operator", "active")


def test_suspension_and_resumption_are_idempotent_and_audited(
    store: Store, clock: FakeClock
) -> None:
    acme = store.create_account("acme")
    clock.now = T0 + timedelta(minutes=1)
    suspended = store.set_account_status(acme.id, "suspended", actor="bob")
    assert (suspended.status, suspended.suspended_at) == ("suspended", clock.now)
    clock.now = T0 + timedelta(minutes=2)
    again = store.set_account_status(acme.id, "suspended")
    assert again.suspended_at == T0 + timedelta(minutes=1)  # the first suspension's time
    resumed = store.set_account_status(acme.id, "active", actor="carol")
    assert (resumed.status, resumed.suspended_at) == ("active", None)
    assert store.set_account_status(acme.id, "active") == resumed
    assert actions(store)[1:] == [
        ("bob", "account.suspend", acme.id, {"already": False}),
        ("admin", "account.suspend", acme.id, {"already": True}),
        ("carol", "account.resume", acme.id, {"already": False}),
        ("admin", "account.resume", acme.id, {"already": True}),
    ]
    assert store.audit.verify() == 5
    with pytest.raises(ConfigError):
        store.set_account_status(acme.id, "deleted")  # type: ignore[arg-type]


def test_two_creators_of_one_name_get_one_account_and_one_conflict_each(
    database_url: str,
) -> None:
    stores = [Store.open(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def create(s: Store) -> None:
        barrier.wait()
        try:
            s.create_account("race")
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")
        except BaseException as exc:  # reported by the assertion below
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(outcomes) == ["conflict", "conflict", "conflict", "created"]
        assert [a.name for a in stores[0].list_accounts()].count("race") == 1
        assert stores[0].audit.verify() == 1
    finally:
        for s in stores:
            s.close()


# -- authtokens belong to accounts ---------------------------------------------------------


def test_a_token_belongs_to_the_account_named_or_to_default(store: Store, pepper: bytes) -> None:
    acme = store.create_account("acme")
    own, plaintext = store.create_token(pepper=pepper, account_id=acme.id, actor="alice")
    theirs, _ = store.create_token(pepper=pepper)
    assert own.account_id == acme.id
    assert theirs.account_id == store.default_account().id
    assert store.verify_token(plaintext, pepper=pepper).account_id == acme.id
    assert store.list_tokens(account_id=acme.id) == [store.get_token(own.id)]
    created = [e for e in store.audit.events() if e.action == "token.create"]
    assert [e.detail["account_id"] for e in created] == [acme.id, store.default_account().id]


def test_no_token_for_an_unknown_or_suspended_account(store: Store, pepper: bytes) -> None:
    with pytest.raises(NotFound):
        store.create_token(pepper=pepper, account_id="acc_aaaaaaaaaaaa")
    acme = store.create_account("acme")
    store.set_account_status(acme.id, "suspended")
    with pytest.raises(AccountSuspended) as exc_info:
        store.create_token(pepper=pepper, account_id=acme.id)
    assert exc_info.value.code == "RLY_104"
    assert store.list_tokens() == []
    assert [e.action for e in store.audit.events()] == ["account.create", "account.suspend"]


def test_tokens_page_by_id_and_list_oldest_first_without_paging(
    store: Store, pepper: bytes, clock: FakeClock
) -> None:
    made = []
    for i in range(5):
        clock.now = T0 + timedelta(seconds=i)
        made.append(store.create_token(pepper=pepper)[0])
    assert store.list_tokens() == made  # oldest first, as before accounts
    by_id = sorted(made, key=lambda r: r.id)
    first = store.list_tokens(limit=3)
    assert first == by_id[:3]
    assert store.list_tokens(after=first[-1].id, limit=3) == by_id[3:]
    assert store.list_tokens(after=by_id[-1].id) == []


def test_a_suspended_accounts_token_is_refused_only_to_its_secret_holder(
    store: Store, pepper: bytes
) -> None:
    acme = store.create_account("acme")
    record, plaintext = store.create_token(pepper=pepper, account_id=acme.id)
    store.set_account_status(acme.id, "suspended")
    with pytest.raises(AccountSuspended) as exc_info:
        store.verify_token(plaintext, pepper=pepper, actor="agent@192.0.2.7:4711")
    assert isinstance(exc_info.value, AuthError)
    assert str(exc_info.value) == "the authtoken's account is suspended"
    # A guesser with the id but not the secret learns nothing about the account.
    token_id, secret = parse_token(plaintext)
    wrong = f"rly_{token_id}_{'A' * 43}"
    with pytest.raises(InvalidToken) as invalid:
        store.verify_token(wrong, pepper=pepper)
    assert str(invalid.value) == "invalid authtoken"
    fails = [
        (e.target, e.detail["reason"]) for e in store.audit.events() if e.action == "auth.fail"
    ]
    assert fails == [(record.id, "account_suspended"), (record.id, "bad_secret")]
    assert store.get_token(record.id).last_used_at is None  # a refused use is not a use
    store.set_account_status(acme.id, "active")
    assert store.verify_token(plaintext, pepper=pepper).id == record.id
    assert store.audit.verify() == 6
    assert secret not in repr(store.audit.events())


def test_revocation_and_expiry_are_named_before_suspension(
    store: Store, pepper: bytes, clock: FakeClock
) -> None:
    acme = store.create_account("acme")
    revoked, revoked_text = store.create_token(pepper=pepper, account_id=acme.id)
    _, expiring_text = store.create_token(
        pepper=pepper, account_id=acme.id, expires_at=T0 + timedelta(minutes=5)
    )
    store.revoke_token(revoked.id)
    store.set_account_status(acme.id, "suspended")
    clock.now = T0 + timedelta(minutes=6)
    with pytest.raises(RevokedToken):
        store.verify_token(revoked_text, pepper=pepper)
    with pytest.raises(ExpiredToken):
        store.verify_token(expiring_text, pepper=pepper)


def test_inactive_tokens_names_suspended_accounts_tokens(
    store: Store, pepper: bytes, clock: FakeClock
) -> None:
    acme = store.create_account("acme")
    other = store.create_account("other")
    live, _ = store.create_token(pepper=pepper, account_id=acme.id)
    revoked, _ = store.create_token(pepper=pepper, account_id=acme.id)
    expiring, _ = store.create_token(
        pepper=pepper, account_id=acme.id, expires_at=T0 + timedelta(minutes=5)
    )
    bystander, _ = store.create_token(pepper=pepper, account_id=other.id)
    store.revoke_token(revoked.id)
    ids = {live.id, revoked.id, expiring.id, bystander.id, "unknown12345"}
    assert store.inactive_tokens(ids) == {revoked.id: "revoked", "unknown12345": "revoked"}
    store.set_account_status(acme.id, "suspended")
    assert store.inactive_tokens(ids) == {
        live.id: "suspended",
        expiring.id: "suspended",
        revoked.id: "revoked",  # revocation wins: resuming would not bring it back
        "unknown12345": "revoked",
    }
    clock.now = T0 + timedelta(minutes=6)
    assert store.inactive_tokens(ids)[expiring.id] == "expired"
    store.set_account_status(acme.id, "active")
    assert store.inactive_tokens(ids) == {
        revoked.id: "revoked",
        expiring.id: "expired",
        "unknown12345": "revoked",
    }


def test_verify_records_where_a_token_was_last_used(
    store: Store, pepper: bytes, clock: FakeClock
) -> None:
    record, plaintext = store.create_token(pepper=pepper)
    assert record.last_used_addr is None
    clock.now = T0 + timedelta(seconds=30)
    used = store.verify_token(plaintext, pepper=pepper, address="2001:db8::7")
    assert (used.last_used_at, used.last_used_addr) == (clock.now, "2001:db8::7")
    assert store.get_token(record.id).last_used_addr == "2001:db8::7"


# -- the new error codes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "name", "family"),
    [
        ("RLY_104", "AccountSuspended", AuthError),
        ("RLY_111", "InvalidApiKey", AuthError),
        ("RLY_112", "RevokedApiKey", AuthError),
        ("RLY_113", "ExpiredApiKey", AuthError),
        ("RLY_120", "Forbidden", None),
        ("RLY_121", "RateLimited", None),
        ("RLY_602", "Conflict", None),
    ],
)
def test_new_codes_round_trip(code: str, name: str, family: type[AuthError] | None) -> None:
    err = error_from_code(code, "from the edge")
    assert (type(err).__name__, err.code, str(err)) == (name, code, "from the edge")
    if family is not None:
        assert isinstance(err, family)
    else:
        assert not isinstance(err, AuthError)


def test_a_verified_token_carries_its_account_s_role_to_the_edge(
    store: Store, pepper: bytes
) -> None:
    """The edge limits what a member account holds, not an operator's
    (relay/edge/account_limits.py): the role comes with the verification, in process and
    over the API; a control plane that sends none leaves the edge limiting no one."""
    from relay.control.api.models import VerifiedCredential
    from relay.control.for_edge import token_record

    member = store.create_account("acme")
    _, member_token = store.create_token(pepper=pepper, account_id=member.id)
    _, operator_token = store.create_token(pepper=pepper)  # the default account's
    verified = store.verify_token(member_token, pepper=pepper)
    assert verified.account_role == "member"
    assert store.verify_token(operator_token, pepper=pepper).account_role == "operator"
    assert store.get_token(verified.id).account_role is None  # not looked up outside verify
    wire = VerifiedCredential.verified(verified).model_dump(mode="json")
    assert token_record(wire).account_role == "member"
    assert token_record({**wire, "account_role": "root"}).account_role is None
    older = {k: v for k, v in wire.items() if k != "account_role"}
    assert token_record(older).account_role is None
