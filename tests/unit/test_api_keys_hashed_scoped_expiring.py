"""API keys: shown once, stored only as a salted HMAC, scoped (``admin`` for operator
accounts only), revocable and expiring; a wrong secret and an unknown id look the same;
revocation, expiry and a suspended account are revealed only to the secret's holder; every
failure is audited without the secret and the chain still verifies. On SQLite and on a
real PostgreSQL; the parser is fuzzed with Hypothesis."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

import relay.control.tokens as tokens_mod
from relay.control.scopes import SCOPE_MEANINGS, SCOPES, grants, validate_scopes
from relay.control.store import AccountRecord, ApiKeyRecord, Store
from relay.control.tables import api_keys_table
from relay.control.tokens import generate_api_key, parse_api_key
from relay.errors import (
    AccountSuspended,
    AuthError,
    ConfigError,
    ExpiredApiKey,
    InvalidApiKey,
    InvalidToken,
    NotFound,
    RevokedApiKey,
)
from tests import postgres
from tests.store_clock import FakeClock

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def member(store: Store) -> AccountRecord:
    return store.create_account("acme")


def fails(store: Store) -> list[tuple[str, str, str]]:
    return [
        (e.actor, e.target, str(e.detail["reason"]))
        for e in store.audit.events()
        if e.action == "api_key.auth_fail"
    ]


def with_other_secret(plaintext: str) -> str:
    key_id, _ = parse_api_key(plaintext)
    return f"rlk_{key_id}_{generate_api_key()[2]}"


# -- creation ------------------------------------------------------------------------------


def test_a_created_key_verifies_and_holds_what_was_asked(
    store: Store, member: AccountRecord, pepper: bytes
) -> None:
    expires = T0 + timedelta(days=90)
    record, plaintext = store.create_api_key(
        member.id,
        scopes=["sessions:read", "credentials:read", "sessions:read"],
        description="grafana",
        expires_at=expires,
        pepper=pepper,
        actor="alice",
    )
    assert plaintext.startswith("rlk_") and len(plaintext) == 4 + 12 + 1 + 43
    key_id, _ = parse_api_key(plaintext)
    assert record == ApiKeyRecord(
        id=key_id,
        account_id=member.id,
        description="grafana",
        scopes=("credentials:read", "sessions:read"),  # sorted, deduplicated
        created_at=T0,
        expires_at=expires,
        revoked_at=None,
        last_used_at=None,
        last_used_addr=None,
    )
    assert record.status_at(T0) == "active"
    key, account = store.verify_api_key(plaintext, pepper=pepper)
    assert (key.id, account) == (record.id, member)
    (event,) = [e for e in store.audit.events() if e.action == "api_key.create"]
    assert (event.actor, event.target, dict(event.detail)) == (
        "alice",
        record.id,
        {
            "account_id": member.id,
            "description": "grafana",
            "scopes": ["credentials:read", "sessions:read"],
            "expires_at": expires.isoformat(),
        },
    )


def test_api_key_records_expose_no_secret_material() -> None:
    assert [f.name for f in fields(ApiKeyRecord)] == [
        "id",
        "account_id",
        "description",
        "scopes",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "last_used_addr",
    ]


def test_the_plaintext_is_never_in_the_database(
    tmp_path: Path, database_url: str, store: Store, member: AccountRecord, pepper: bytes
) -> None:
    record, plaintext = store.create_api_key(member.id, scopes=["audit:read"], pepper=pepper)
    store.verify_api_key(plaintext, pepper=pepper, address="192.0.2.1")
    with pytest.raises(InvalidApiKey):
        store.verify_api_key(with_other_secret(plaintext), pepper=pepper)
    _, secret = parse_api_key(plaintext)
    store.close()
    if database_url.startswith("sqlite"):
        files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith("relay.db")]
        stored = b"".join(p.read_bytes() for p in files)
    else:
        stored = postgres.dump(database_url)
    assert record.id.encode() in stored  # the row is there...
    assert secret.encode() not in stored  # ...its secret is not
    assert plaintext.encode() not in stored
    reopened = Store.open(database_url)
    try:
        with reopened.engine.connect() as conn:
            salt, digest = conn.execute(
                sa.select(api_keys_table.c.salt, api_keys_table.c.hash).where(
                    api_keys_table.c.id == record.id
                )
            ).one()
    finally:
        reopened.close()
    # What is stored is exactly HMAC(pepper, salt || secret), with a 16-byte salt.
    assert len(salt) == 16
    assert tokens_mod.hash_secret(secret, bytes(salt), pepper) == bytes(digest)


@pytest.mark.parametrize(
    "scopes", [[], ["root"], ["sessions:read", "Sessions:Read"], "admin", [7], ["x" * 1000]]
)
def test_scopes_are_validated(
    store: Store, member: AccountRecord, pepper: bytes, scopes: object
) -> None:
    with pytest.raises(ConfigError) as exc_info:
        store.create_api_key(member.id, scopes=scopes, pepper=pepper)  # type: ignore[arg-type]
    assert len(str(exc_info.value)) < 400
    assert store.list_api_keys() == []
    assert [e.action for e in store.audit.events()] == ["account.create"]


def test_an_unknown_scope_is_named(store: Store, member: AccountRecord, pepper: bytes) -> None:
    with pytest.raises(ConfigError, match="'sessions:delete'"):
        store.create_api_key(member.id, scopes=["sessions:read", "sessions:delete"], pepper=pepper)


def test_admin_scope_only_for_an_operator_account(
    store: Store, member: AccountRecord, pepper: bytes
) -> None:
    with pytest.raises(ConfigError, match="operator"):
        store.create_api_key(member.id, scopes=["admin"], pepper=pepper)
    ops = store.create_account("ops", role="operator")
    record, _ = store.create_api_key(ops.id, scopes=["admin"], pepper=pepper)
    assert record.scopes == ("admin",)
    default, _ = store.create_api_key(
        store.default_account().id, scopes=("admin", "audit:read"), pepper=pepper
    )
    assert default.scopes == ("admin", "audit:read")


def test_keys_come_from_a_generator_of_scopes_too(
    store: Store, member: AccountRecord, pepper: bytes
) -> None:
    record, _ = store.create_api_key(
        member.id, scopes=(s for s in ["endpoints:read"]), pepper=pepper
    )
    assert record.scopes == ("endpoints:read",)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"expires_at": datetime(2031, 1, 1)},  # naive
        {"expires_at": T0},  # not in the future
        {"description": "x" * 257},
    ],
)
def test_bad_arguments_grant_nothing(
    store: Store, member: AccountRecord, pepper: bytes, kwargs: dict[str, object]
) -> None:
    with pytest.raises(ConfigError):
        store.create_api_key(
            member.id,
            scopes=["audit:read"],
            pepper=pepper,
            **kwargs,  # type: ignore[arg-type]
        )
    assert store.list_api_keys() == []


def test_no_key_for_an_unknown_or_suspended_account(
    store: Store, member: AccountRecord, pepper: bytes
) -> None:
    with pytest.raises(NotFound):
        store.create_api_key("acc_aaaaaaaaaaaa", scopes=["audit:read"], pepper=pepper)
    store.set_account_status(member.id, "suspended")
    with pytest.raises(AccountSuspended):
        store.create_api_key(member.id, scopes=["audit:read"], pepper=pepper)
    assert store.list_api_keys() == []


def test_keys_are_listed_by_id_per_account_a_page_at_a_time(
    store: Store, member: AccountRecord, pepper: bytes
) -> None:
    mine = [store.create_api_key(member.id, scopes=["audit:read"], pepper=pepper)[0]]
    mine += [store.create_api_key(member.id, scopes=["audit:read"], pepper=pepper)[0]]
    other = store.create_api_key(store.default_account().id, scopes=["audit:read"], pepper=pepper)[
        0
    ]
    assert store.list_api_keys() == sorted([*mine, other], key=lambda r: r.id)
    assert store.list_api_keys(account_id=member.id) == sorted(mine, key=lambda r: r.id)
    first = store.list_api_keys(limit=2)
    assert first + store.list_api_keys(after=first[-1].id) == store.list_api_keys()
    assert store.get_api_key(other.id) == other
    with pytest.raises(NotFound):
        store.get_api_key("aaaaaaaaaaaa")


# -- verification --------------------------------------------------------------------------


def test_wrong_secret_unknown_id_and_malformed_look_identical(
    store: Store, member: AccountRecord, pepper: bytes
) -> None:
    record, plaintext = store.create_api_key(member.id, scopes=["audit:read"], pepper=pepper)
    unknown, unknown_id, _ = generate_api_key()
    seen = set()
    for bad in (with_other_secret(plaintext), unknown, "rlk_nope", plaintext + "\n", ""):
        with pytest.raises(InvalidApiKey) as exc_info:
            store.verify_api_key(bad, pepper=pepper, address="192.0.2.9")
        seen.add((type(exc_info.value), str(exc_info.value), exc_info.value.code))
    with pytest.raises(InvalidApiKey) as exc_info:
        store.verify_api_key(plaintext, pepper=b"\x00" * 32)  # another server's pepper
    seen.add((type(exc_info.value), str(exc_info.value), exc_info.value.code))
    assert seen == {(InvalidApiKey, "invalid API key", "RLY_111")}
    assert fails(store) == [
        ("api@192.0.2.9", record.id, "bad_secret"),
        ("api@192.0.2.9", unknown_id, "unknown_id"),
        ("api@192.0.2.9", "", "malformed"),
        ("api@192.0.2.9", "", "malformed"),
        ("api@192.0.2.9", "", "malformed"),
        ("api", record.id, "bad_secret"),
    ]
    assert store.get_api_key(record.id).last_used_at is None


def test_an_authtoken_is_not_an_api_key(store: Store, pepper: bytes) -> None:
    _, token = store.create_token(pepper=pepper)
    with pytest.raises(InvalidApiKey):
        store.verify_api_key(token, pepper=pepper)
    _, key = store.create_api_key(store.default_account().id, scopes=["audit:read"], pepper=pepper)
    with pytest.raises(InvalidToken):
        store.verify_token(key, pepper=pepper)


def test_an_unknown_id_still_computes_an_hmac(
    store: Store, pepper: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = tokens_mod.verify_secret

    def spy(secret: str, salt: bytes, pep: bytes, expected: bytes) -> bool:
        calls.append(secret)
        return real(secret, salt, pep, expected)

    monkeypatch.setattr(tokens_mod, "verify_secret", spy)
    unknown, _, secret = generate_api_key()
    with pytest.raises(InvalidApiKey):
        store.verify_api_key(unknown, pepper=pepper)
    assert calls == [secret]


def test_success_records_when_and_from_where(
    store: Store, member: AccountRecord, pepper: bytes, clock: FakeClock
) -> None:
    record, plaintext = store.create_api_key(member.id, scopes=["audit:read"], pepper=pepper)
    clock.now = T0 + timedelta(minutes=3)
    key, _ = store.verify_api_key(plaintext, pepper=pepper, address="198.51.100.4")
    assert (key.last_used_at, key.last_used_addr) == (clock.now, "198.51.100.4")
    assert store.get_api_key(record.id) == key
    assert fails(store) == []  # a success is recorded on the key, not in the audit log


def test_last_use_is_written_again_only_when_a_minute_old_or_from_another_address(
    store: Store, member: AccountRecord, pepper: bytes, clock: FakeClock
) -> None:
    record, plaintext = store.create_api_key(member.id, scopes=["audit:read"], pepper=pepper)
    store.verify_api_key(plaintext, pepper=pepper, address="198.51.100.4")
    clock.advance(timedelta(seconds=59))
    key, _ = store.verify_api_key(plaintext, pepper=pepper, address="198.51.100.4")
    assert key.last_used_at == T0 == store.get_api_key(record.id).last_used_at
    key, _ = store.verify_api_key(plaintext, pepper=pepper, address="198.51.100.5")
    assert (key.last_used_at, key.last_used_addr) == (clock.now, "198.51.100.5")
    clock.advance(timedelta(seconds=60))
    key, _ = store.verify_api_key(plaintext, pepper=pepper, address="198.51.100.5")
    assert key.last_used_at == clock.now == store.get_api_key(record.id).last_used_at


def test_revocation_is_idempotent_and_revealed_only_to_the_secret_holder(
    store: Store, member: AccountRecord, pepper: bytes, clock: FakeClock
) -> None:
    record, plaintext = store.create_api_key(member.id, scopes=["audit:read"], pepper=pepper)
    clock.now = T0 + timedelta(hours=1)
    revoked = store.revoke_api_key(record.id, actor="bob")
    assert (revoked.revoked_at, revoked.status) == (clock.now, "revoked")
    clock.now = T0 + timedelta(hours=2)
    assert store.revoke_api_key(record.id).revoked_at == T0 + timedelta(hours=1)
    with pytest.raises(RevokedApiKey) as exc_info:
        store.verify_api_key(plaintext, pepper=pepper)
    assert (exc_info.value.code, isinstance(exc_info.value, AuthError)) == ("RLY_112", True)
    with pytest.raises(InvalidApiKey):
        store.verify_api_key(with_other_secret(plaintext), pepper=pepper)
    with pytest.raises(NotFound):
        store.revoke_api_key("aaaaaaaaaaaa")
    revokes = [
        (e.actor, dict(e.detail)) for e in store.audit.events() if e.action == "api_key.revoke"
    ]
    assert revokes == [("bob", {"already_revoked": False}), ("admin", {"already_revoked": True})]
    assert [r for _, _, r in fails(store)] == ["revoked", "bad_secret"]


def test_a_key_expires_at_its_expiry_instant(
    store: Store, member: AccountRecord, pepper: bytes, clock: FakeClock
) -> None:
    record, plaintext = store.create_api_key(
        member.id, scopes=["audit:read"], pepper=pepper, expires_at=T0 + timedelta(hours=1)
    )
    clock.now = T0 + timedelta(minutes=59)
    store.verify_api_key(plaintext, pepper=pepper)
    clock.now = T0 + timedelta(hours=1)
    with pytest.raises(ExpiredApiKey) as exc_info:
        store.verify_api_key(plaintext, pepper=pepper)
    assert exc_info.value.code == "RLY_113"
    assert store.get_api_key(record.id).status_at(clock.now) == "expired"
    assert store.get_api_key(record.id).last_used_at == T0 + timedelta(minutes=59)
    store.revoke_api_key(record.id)
    with pytest.raises(RevokedApiKey):  # revocation wins over expiry
        store.verify_api_key(plaintext, pepper=pepper)


def test_a_suspended_accounts_key_is_refused_until_resumed(
    store: Store, member: AccountRecord, pepper: bytes
) -> None:
    record, plaintext = store.create_api_key(member.id, scopes=["audit:read"], pepper=pepper)
    store.set_account_status(member.id, "suspended")
    with pytest.raises(AccountSuspended) as exc_info:
        store.verify_api_key(plaintext, pepper=pepper)
    assert exc_info.value.code == "RLY_104"
    with pytest.raises(InvalidApiKey):
        store.verify_api_key(with_other_secret(plaintext), pepper=pepper)
    store.set_account_status(member.id, "active")
    key, account = store.verify_api_key(plaintext, pepper=pepper)
    assert (key.id, account.status) == (record.id, "active")
    assert [r for _, _, r in fails(store)] == ["account_suspended", "bad_secret"]


def test_every_failure_is_audited_without_the_secret_and_the_chain_verifies(
    store: Store, member: AccountRecord, pepper: bytes, clock: FakeClock
) -> None:
    _, plaintext = store.create_api_key(
        member.id, scopes=["audit:read"], pepper=pepper, expires_at=T0 + timedelta(hours=1)
    )
    _, secret = parse_api_key(plaintext)
    attempts = [with_other_secret(plaintext), generate_api_key()[0], secret, plaintext[:-1]]
    for bad in attempts:
        with pytest.raises(InvalidApiKey):
            store.verify_api_key(bad, pepper=pepper)
    clock.now = T0 + timedelta(hours=2)
    with pytest.raises(ExpiredApiKey):
        store.verify_api_key(plaintext, pepper=pepper)
    assert len(fails(store)) == 5
    events = store.audit.events()
    assert all(secret not in repr(e) for e in events)
    assert store.audit.verify() == len(events) == 1 + 1 + 5  # account, key, failures


# -- the parser, fuzzed --------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(
    st.one_of(
        st.text(max_size=250),
        st.binary(max_size=250).map(lambda b: b.decode("latin-1")),
        st.from_regex(r"rlk_[a-z2-7]{0,14}_[A-Za-z0-9_-]{0,45}\s?", fullmatch=True),
        st.none(),
        st.integers(),
        st.binary(max_size=80),
    )
)
def test_parse_of_anything_raises_only_invalid_api_key_and_never_echoes(value: object) -> None:
    try:
        key_id, secret = parse_api_key(value)
    except InvalidApiKey as exc:
        if isinstance(value, str) and len(value) >= 8:
            assert value not in str(exc)
        return
    assert value == f"rlk_{key_id}_{secret}"


@settings(deadline=None, max_examples=100)
@given(st.integers(0, 59), st.characters(codec="ascii"))
def test_a_one_character_change_raises_nothing_but_invalid_api_key(pos: int, ch: str) -> None:
    plaintext, _, _ = generate_api_key()
    mutated = plaintext[:pos] + ch + plaintext[pos + 1 :]
    if mutated == plaintext:
        return
    try:
        key_id, secret = parse_api_key(mutated)
    except InvalidApiKey:
        return
    # A change inside the id or secret alphabets still parses: the store then refuses it.
    assert (key_id, secret) != parse_api_key(plaintext)


def test_token_format_is_unchanged() -> None:
    plaintext, token_id, secret = tokens_mod.generate_token()
    assert plaintext == f"rly_{token_id}_{secret}"
    assert tokens_mod.parse_token(plaintext) == (token_id, secret)
    with pytest.raises(InvalidToken):
        tokens_mod.parse_token(generate_api_key()[0])


# -- scopes --------------------------------------------------------------------------------


def test_every_scope_has_a_meaning_and_admin_implies_them_all() -> None:
    assert SCOPES == (
        "accounts:read",
        "accounts:write",
        "credentials:read",
        "credentials:write",
        "endpoints:read",
        "reserved:read",
        "reserved:write",
        "sessions:read",
        "sessions:write",
        "audit:read",
        "edge",
        "admin",
    )
    assert set(SCOPE_MEANINGS) == set(SCOPES)
    assert all(SCOPE_MEANINGS[s].strip() for s in SCOPES)
    assert all(grants(("admin",), s) for s in SCOPES)
    assert grants(("sessions:read",), "sessions:read")
    assert not grants(("sessions:read",), "sessions:write")
    assert not grants((), "sessions:read")


def test_validate_scopes_sorts_and_deduplicates() -> None:
    assert validate_scopes(iter(["audit:read", "admin", "audit:read"])) == (
        "admin",
        "audit:read",
    )
    with pytest.raises(ConfigError, match="'nope'"):
        validate_scopes(["audit:read", "nope"])
