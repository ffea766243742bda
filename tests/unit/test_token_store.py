"""Token store: create / list / revoke / verify, expiry, bind ACLs, and the error codes."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relay.control.tokens as tokens_mod
import relay.errors as errors_mod
from relay.control.store import Store, TokenRecord, token_allows_bind, validate_bind_acl
from relay.control.tokens import generate_token, load_or_create_pepper, parse_token
from relay.errors import (
    ERROR_CODES,
    AuthError,
    BindError,
    ConfigError,
    DataDirError,
    ExpiredToken,
    InvalidToken,
    NotFound,
    RelayError,
    RevokedToken,
    error_from_code,
)
from tests import postgres
from tests.store_clock import FakeClock

T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


# -- create / list -----------------------------------------------------------------------


def test_created_token_verifies_and_record_holds_what_was_asked(
    store: Store, pepper: bytes
) -> None:
    expires = T0 + timedelta(days=30)
    record, plaintext = store.create_token(
        description="ci runner", expires_at=expires, bind_acl=["tcp:20000-20100"], pepper=pepper
    )
    token_id, _ = parse_token(plaintext)
    assert record.id == token_id
    assert record.description == "ci runner"
    assert record.created_at == T0
    assert record.expires_at == expires
    assert record.revoked_at is None and record.last_used_at is None
    assert record.bind_acl == ("tcp:20000-20100",)
    assert record.status_at(T0) == "active"

    verified = store.verify_token(plaintext, pepper=pepper)
    assert verified.id == token_id


def test_default_bind_acl_allows_everything(store: Store, pepper: bytes) -> None:
    record, _ = store.create_token(pepper=pepper)
    assert record.bind_acl == ("*",)


def test_token_record_exposes_no_secret_material() -> None:
    names = {f.name for f in fields(TokenRecord)}
    assert names == {
        "id",
        "description",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "bind_acl",
        "account_id",
        "last_used_addr",
        "account_role",  # as of a verification: what the edge limits by
    }


def test_plaintext_secret_is_never_written_to_disk(
    tmp_path: Path, database_url: str, store: Store, pepper: bytes
) -> None:
    record, plaintext = store.create_token(description="d", pepper=pepper)
    store.verify_token(plaintext, pepper=pepper)
    _, secret = parse_token(plaintext)
    store.close()
    if database_url.startswith("sqlite"):
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert any(p.name == "relay.db" for p in files)
        stored = [(p.name, p.read_bytes()) for p in files]
    else:
        stored = [("pg_dump", postgres.dump(database_url))]
    for name, data in stored:
        if name in ("relay.db", "pg_dump"):
            assert record.id.encode() in data, name  # the database holds the token's row...
        assert secret.encode() not in data, name  # ...but nowhere its secret
        assert plaintext.encode() not in data, name


def test_list_tokens_returns_all_oldest_first(
    store: Store, pepper: bytes, clock: FakeClock
) -> None:
    a, _ = store.create_token(description="a", pepper=pepper)
    clock.advance(timedelta(seconds=1))
    b, _ = store.create_token(description="b", pepper=pepper)
    assert [r.id for r in store.list_tokens()] == [a.id, b.id]
    assert store.list_tokens()[0] == a


def test_records_survive_reopen_with_aware_utc_times(
    database_url: str, store: Store, pepper: bytes
) -> None:
    record, plaintext = store.create_token(
        expires_at=T0 + timedelta(hours=1), bind_acl=["*.example.com"], pepper=pepper
    )
    store.close()
    reopened = Store.open(database_url, clock=lambda: T0)
    try:
        (again,) = reopened.list_tokens()
        assert again == record
        assert again.created_at.tzinfo is not None and again.created_at.utcoffset() == timedelta()
        assert reopened.verify_token(plaintext, pepper=pepper).id == record.id
    finally:
        reopened.close()


def test_non_utc_expiry_is_stored_as_the_same_instant(store: Store, pepper: bytes) -> None:
    from datetime import timezone

    plus2 = timezone(timedelta(hours=2))
    local = (T0 + timedelta(days=1)).astimezone(plus2)
    record, _ = store.create_token(expires_at=local, pepper=pepper)
    (listed,) = store.list_tokens()
    assert listed.expires_at == local == record.expires_at
    assert listed.expires_at is not None and listed.expires_at.utcoffset() == timedelta()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"expires_at": datetime(2031, 1, 1)},  # naive
        {"expires_at": T0 - timedelta(seconds=1)},  # already expired
        {"expires_at": T0},
        {"description": "x" * 257},
        {"bind_acl": ["tcp:0-10"]},
        {"bind_acl": ["tcp:100-50"]},
        {"bind_acl": ["tcp:70000"]},
        {"bind_acl": ["udp:*"]},
        {"bind_acl": ["*.*.example.com"]},
        {"bind_acl": ["exa mple.com"]},
        {"bind_acl": ["-bad.example.com"]},
        {"bind_acl": [""]},
        {"bind_acl": "*"},  # a string, not a list
        {"bind_acl": ["*"] * 65},
    ],
)
def test_create_token_rejects_bad_arguments(
    store: Store, pepper: bytes, kwargs: dict[str, object]
) -> None:
    with pytest.raises(ConfigError):
        store.create_token(pepper=pepper, **kwargs)  # type: ignore[arg-type]
    assert store.list_tokens() == []
    assert store.audit.verify() == 0  # nothing audited for a grant that did not happen


# -- verify ------------------------------------------------------------------------------


def test_last_used_is_written_again_only_when_a_minute_old_or_from_another_address(
    store: Store, pepper: bytes, clock: FakeClock
) -> None:
    record, plaintext = store.create_token(pepper=pepper)
    store.verify_token(plaintext, pepper=pepper, address="192.0.2.1")
    clock.advance(timedelta(seconds=59))
    store.verify_token(plaintext, pepper=pepper, address="192.0.2.1")  # kept: a minute's precision
    assert store.get_token(record.id).last_used_at == T0
    store.verify_token(plaintext, pepper=pepper, address="192.0.2.2")  # another address: written
    got = store.get_token(record.id)
    assert (got.last_used_at, got.last_used_addr) == (T0 + timedelta(seconds=59), "192.0.2.2")
    clock.advance(timedelta(seconds=60))
    assert store.verify_token(plaintext, pepper=pepper, address="192.0.2.2").last_used_at == (
        T0 + timedelta(seconds=119)
    )
    assert store.get_token(record.id).last_used_at == T0 + timedelta(seconds=119)


def test_verify_updates_last_used_at(store: Store, pepper: bytes, clock: FakeClock) -> None:
    record, plaintext = store.create_token(pepper=pepper)
    clock.advance(timedelta(minutes=5))
    verified = store.verify_token(plaintext, pepper=pepper)
    assert verified.last_used_at == T0 + timedelta(minutes=5)
    assert store.get_token(record.id).last_used_at == T0 + timedelta(minutes=5)


def _with_other_secret(plaintext: str) -> str:
    token_id, _ = parse_token(plaintext)
    _, _, other_secret = generate_token()
    return f"rly_{token_id}_{other_secret}"


def test_wrong_secret_unknown_id_and_wrong_pepper_look_identical(
    store: Store, pepper: bytes
) -> None:
    _, plaintext = store.create_token(pepper=pepper)
    unknown, _, _ = generate_token()
    cases = [_with_other_secret(plaintext), unknown]
    messages = set()
    for bad in cases:
        with pytest.raises(InvalidToken) as exc_info:
            store.verify_token(bad, pepper=pepper)
        messages.add((type(exc_info.value), str(exc_info.value), exc_info.value.code))
    with pytest.raises(InvalidToken) as exc_info:
        store.verify_token(plaintext, pepper=b"\x00" * 32)
    messages.add((type(exc_info.value), str(exc_info.value), exc_info.value.code))
    assert messages == {(InvalidToken, "invalid authtoken", "RLY_101")}


def test_unknown_id_still_computes_an_hmac(
    store: Store, pepper: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = tokens_mod.verify_secret

    def spy(secret: str, salt: bytes, pep: bytes, expected: bytes) -> bool:
        calls.append(secret)
        return real(secret, salt, pep, expected)

    monkeypatch.setattr(tokens_mod, "verify_secret", spy)
    unknown, _, secret = generate_token()
    with pytest.raises(InvalidToken):
        store.verify_token(unknown, pepper=pepper)
    assert calls == [secret]


def test_revoked_token_is_refused(store: Store, pepper: bytes, clock: FakeClock) -> None:
    record, plaintext = store.create_token(pepper=pepper)
    clock.advance(timedelta(hours=1))
    revoked = store.revoke_token(record.id)
    assert revoked.revoked_at == T0 + timedelta(hours=1)
    assert revoked.status == "revoked"
    with pytest.raises(RevokedToken) as exc_info:
        store.verify_token(plaintext, pepper=pepper)
    assert exc_info.value.code == "RLY_102"
    assert isinstance(exc_info.value, AuthError)


def test_revocation_is_only_revealed_to_the_secret_holder(store: Store, pepper: bytes) -> None:
    record, plaintext = store.create_token(pepper=pepper)
    store.revoke_token(record.id)
    with pytest.raises(InvalidToken):
        store.verify_token(_with_other_secret(plaintext), pepper=pepper)


def test_revoke_is_idempotent(store: Store, pepper: bytes, clock: FakeClock) -> None:
    record, _ = store.create_token(pepper=pepper)
    first = store.revoke_token(record.id)
    clock.advance(timedelta(days=1))
    second = store.revoke_token(record.id)
    assert second.revoked_at == first.revoked_at == T0


def test_revoke_unknown_id_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as exc_info:
        store.revoke_token("abcdefgh2345")
    assert exc_info.value.code == "RLY_601"
    with pytest.raises(NotFound):
        store.get_token("abcdefgh2345")


def test_expired_token_is_refused(store: Store, pepper: bytes, clock: FakeClock) -> None:
    record, plaintext = store.create_token(expires_at=T0 + timedelta(hours=1), pepper=pepper)
    clock.advance(timedelta(minutes=59))
    store.verify_token(plaintext, pepper=pepper)
    clock.advance(timedelta(minutes=1))  # expiry instant itself counts as expired
    with pytest.raises(ExpiredToken) as exc_info:
        store.verify_token(plaintext, pepper=pepper)
    assert exc_info.value.code == "RLY_103"
    assert store.get_token(record.id).status_at(clock.now) == "expired"
    # A failed use does not count as a use.
    assert store.get_token(record.id).last_used_at == T0 + timedelta(minutes=59)


def test_revocation_wins_over_expiry(store: Store, pepper: bytes, clock: FakeClock) -> None:
    record, plaintext = store.create_token(expires_at=T0 + timedelta(hours=1), pepper=pepper)
    store.revoke_token(record.id)
    clock.advance(timedelta(hours=2))
    with pytest.raises(RevokedToken):
        store.verify_token(plaintext, pepper=pepper)


def test_status_property_uses_real_time() -> None:
    now = datetime.now(UTC)
    rec = TokenRecord(
        "abcdefgh2345", "", now, now - timedelta(seconds=1), None, None, ("*",), "acc_x", None
    )
    assert rec.status == "expired"
    active = TokenRecord("abcdefgh2345", "", now, None, None, None, ("*",), "acc_x", None)
    assert active.status == "active"


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, bytes, str]]:
    d = tmp_path_factory.mktemp("shared")
    s = Store.open(f"sqlite:///{d}/relay.db")
    pep = load_or_create_pepper(d)
    _, plaintext = s.create_token(pepper=pep)
    yield s, pep, plaintext
    s.close()


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=250), st.binary(max_size=250).map(lambda b: b.decode("latin-1"))))
def test_verify_arbitrary_input_only_raises_invalid_token(
    shared_store: tuple[Store, bytes, str], text: str
) -> None:
    s, pep, plaintext = shared_store
    if text == plaintext:
        return
    with pytest.raises(InvalidToken):
        s.verify_token(text, pepper=pep)


@settings(deadline=None, max_examples=100)
@given(st.integers(0, 59), st.characters(codec="ascii"))
def test_verify_one_char_changes_only_raise_invalid_token(
    shared_store: tuple[Store, bytes, str], pos: int, ch: str
) -> None:
    s, pep, plaintext = shared_store
    mutated = plaintext[:pos] + ch + plaintext[pos + 1 :]
    if mutated == plaintext:
        return
    with pytest.raises(InvalidToken):
        s.verify_token(mutated, pepper=pep)


# -- audit trail of token operations ----------------------------------------------------


def test_token_operations_are_audited_without_secrets(store: Store, pepper: bytes) -> None:
    record, plaintext = store.create_token(description="laptop", pepper=pepper, actor="alice")
    store.verify_token(plaintext, pepper=pepper)  # success: not audited (last_used_at records it)
    store.revoke_token(record.id, actor="bob")
    with pytest.raises(RevokedToken):
        store.verify_token(plaintext, pepper=pepper, actor="agent@192.0.2.7:4711")
    with pytest.raises(InvalidToken):
        store.verify_token("garbage", pepper=pepper, actor="agent@192.0.2.8:1")

    events = store.audit.events()
    summary = [(e.actor, e.action, e.target, dict(e.detail)) for e in events]
    assert summary == [
        (
            "alice",
            "token.create",
            record.id,
            {
                "description": "laptop",
                "expires_at": None,
                "bind_acl": ["*"],
                "account_id": store.default_account().id,
            },
        ),
        ("bob", "token.revoke", record.id, {"already_revoked": False}),
        ("agent@192.0.2.7:4711", "auth.fail", record.id, {"reason": "revoked"}),
        ("agent@192.0.2.8:1", "auth.fail", "", {"reason": "malformed"}),
    ]
    _, secret = parse_token(plaintext)
    assert all(secret not in repr(e) for e in events)
    assert store.audit.verify() == 4


def test_auth_fail_reasons_are_distinguished_in_the_audit_log(store: Store, pepper: bytes) -> None:
    _, plaintext = store.create_token(pepper=pepper)
    unknown, unknown_id, _ = generate_token()
    for bad in (_with_other_secret(plaintext), unknown):
        with pytest.raises(InvalidToken):
            store.verify_token(bad, pepper=pepper)
    fails = [
        (e.target, e.detail["reason"]) for e in store.audit.events() if e.action == "auth.fail"
    ]
    assert fails == [(parse_token(plaintext)[0], "bad_secret"), (unknown_id, "unknown_id")]


def test_concurrent_writers_keep_the_audit_chain_whole(database_url: str, pepper: bytes) -> None:
    stores = [Store.open(database_url) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def work(s: Store) -> None:
        barrier.wait()
        try:
            for _ in range(10):
                record, plaintext = s.create_token(pepper=pepper)
                s.verify_token(plaintext, pepper=pepper)
                s.revoke_token(record.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        assert len(stores[0].list_tokens()) == 40
        assert stores[0].audit.verify() == 80
    finally:
        for s in stores:
            s.close()


# -- opening -----------------------------------------------------------------------------


def test_in_memory_store_works(pepper: bytes) -> None:
    s = Store.open("sqlite://")
    try:
        _, plaintext = s.create_token(pepper=pepper)
        assert s.verify_token(plaintext, pepper=pepper).status == "active"
    finally:
        s.close()


def test_bad_database_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Store.open("not a url")


def test_unopenable_database_is_a_data_dir_error(tmp_path: Path) -> None:
    with pytest.raises(DataDirError):
        Store.open(f"sqlite:///{tmp_path}/missing/dir/relay.db")


# -- bind ACLs ---------------------------------------------------------------------------


def _rec(*acl: str) -> TokenRecord:
    return TokenRecord(
        "abcdefgh2345", "", T0, None, None, None, validate_bind_acl(acl), "acc_x", None
    )


@pytest.mark.parametrize(
    ("acl", "kind", "port", "hostname", "allowed"),
    [
        (["*"], "tcp", 22, None, True),
        (["*"], "https", None, "anything.example.org", False),  # not under the base domain
        (["tcp:*"], "tcp", 1, None, True),
        (["tcp:*"], "tcp", None, None, True),
        (["tcp:*"], "http", None, "a.example.com", False),
        (["tcp:20000-20100"], "tcp", 20000, None, True),
        (["tcp:20000-20100"], "tcp", 20100, None, True),
        (["tcp:20000-20100"], "tcp", 19999, None, False),
        (["tcp:20000-20100"], "tcp", 20101, None, False),
        (["tcp:20000-20100"], "tcp", None, None, False),  # edge must pick the port first
        (["tcp:22"], "tcp", 22, None, True),
        (["tcp:22"], "tcp", 23, None, False),
        (["*.example.com"], "http", None, "app.example.com", True),
        (["*.example.com"], "https", None, "APP.Example.COM.", True),
        (["*.example.com"], "tls", None, "app.example.com", True),
        (["*.example.com"], "tcp", 22, None, False),
        (["*.example.com"], "http", None, "example.com", False),
        (["*.example.com"], "http", None, "a.b.example.com", False),
        (["*.example.com"], "http", None, "evilexample.com", False),
        (["*.example.com"], "http", None, "app.example.com.evil.net", False),
        (["*.example.com"], "http", None, None, False),
        (["app.example.com"], "http", None, "app.example.com", True),
        (["app.example.com"], "http", None, "other.example.com", False),
        (["https:*.example.com"], "https", None, "a.example.com", True),
        (["https:*.example.com"], "http", None, "a.example.com", False),
        (["http:*"], "http", None, "whatever.test", False),
        (["http:*"], "tls", None, "whatever.test", False),
        (["*.example.com"], "https", None, "*.example.com", True),  # the wildcard it names
        (["*.example.com"], "https", None, "*.a.example.com", False),
        (["app.example.com"], "https", None, "*.example.com", False),
        (["*.example.com"], "http", None, "127.0.0.1", False),
        (["tcp:22", "*.example.com"], "http", None, "a.example.com", True),
        (["tcp:22", "*.example.com"], "tcp", 22, None, True),
        ([], "tcp", 22, None, False),
        (["*"], "udp", 53, None, False),  # unknown kind never allowed
    ],
)
def test_token_allows_bind(
    acl: list[str], kind: str, port: int | None, hostname: str | None, allowed: bool
) -> None:
    assert token_allows_bind(_rec(*acl), kind, port=port, hostname=hostname) is allowed


@pytest.mark.parametrize(
    ("acl", "kind", "hostname", "allowed"),
    [
        (["*"], "https", "app.relay.test", True),
        (["*"], "http", "APP.Relay.Test.", True),
        (["*"], "tls", "a.b.relay.test", True),
        (["*"], "https", "relay.test", False),  # the base domain itself is not under it
        (["*"], "https", "*.relay.test", False),  # a wildcard needs its own entry
        (["*"], "https", "www.google.com", False),  # so does a custom domain
        (["*"], "http", "evilrelay.test", False),
        (["http:*"], "http", "app.relay.test", True),
        (["http:*"], "https", "app.relay.test", False),
        (["tcp:*"], "http", "app.relay.test", False),
        (["*", "*.relay.test"], "https", "*.relay.test", True),
        (["*", "www.google.com"], "https", "www.google.com", True),
        (["*.example.com"], "https", "app.relay.test", False),
    ],
)
def test_catch_alls_cover_only_names_under_the_base_domain(
    acl: list[str], kind: str, hostname: str, allowed: bool
) -> None:
    record = _rec(*acl)
    assert token_allows_bind(record, kind, hostname=hostname, base_domain="relay.test") is allowed


def test_inactive_tokens_names_revoked_expired_and_unknown_ids(
    store: Store, pepper: bytes, clock: FakeClock
) -> None:
    live, _ = store.create_token(pepper=pepper)
    revoked, _ = store.create_token(pepper=pepper)
    expiring, _ = store.create_token(pepper=pepper, expires_at=clock() + timedelta(minutes=5))
    store.revoke_token(revoked.id)
    ids = {live.id, revoked.id, expiring.id, "unknown12345"}
    assert store.inactive_tokens(ids) == {revoked.id: "revoked", "unknown12345": "revoked"}
    clock.advance(timedelta(minutes=6))
    assert store.inactive_tokens(ids) == {
        revoked.id: "revoked",
        expiring.id: "expired",
        "unknown12345": "revoked",
    }
    many = {live.id} | {f"x{i:011d}" for i in range(1200)}  # more than one query's worth
    assert len(store.inactive_tokens(many)) == 1200


def test_acl_patterns_are_normalized_to_lowercase() -> None:
    assert validate_bind_acl(["*.Example.COM", " TCP:22 "]) == ("*.example.com", "tcp:22")


# -- error codes (what the agent sees) ---------------------------------------------------


def test_error_string_code_and_one_line() -> None:
    err = RevokedToken("authtoken has been revoked")
    assert str(err) == "authtoken has been revoked"
    assert err.code == "RLY_102"
    assert err.one_line() == "error RLY_102: authtoken has been revoked"
    assert RelayError("x", code="RLY_999").code == "RLY_999"
    assert RelayError("x").code == "RLY_000"


def test_error_code_table_is_consistent() -> None:
    for code, cls in ERROR_CODES.items():
        assert cls.code == code
        assert issubclass(cls, RelayError)
    assert ERROR_CODES["RLY_101"] is InvalidToken
    assert {c for c in ERROR_CODES if c.startswith("RLY_2")} == {
        "RLY_201",
        "RLY_202",
        "RLY_203",
        "RLY_204",
        "RLY_205",
        "RLY_206",
        "RLY_207",
        "RLY_208",
    }
    # Every error class in relay.errors is reachable: its code maps to it or to a subclass.
    classes = [v for v in vars(errors_mod).values() if isinstance(v, type)]
    classes = [c for c in classes if issubclass(c, RelayError)]
    # 39, + NameReserved (RLY_207), + ControlUnavailable (RLY_504), + RegionPinned (RLY_208),
    # + CertificateQuota (RLY_807), + TooManySessions (RLY_505).
    assert len(classes) == 44
    for cls in classes:
        assert issubclass(ERROR_CODES[cls.code], cls)


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_error_from_code_rebuilds_the_same_class(code: str) -> None:
    err = error_from_code(code, "message from edge")
    assert type(err) is ERROR_CODES[code]
    assert err.code == code
    assert str(err) == "message from edge"


def test_error_from_code_keeps_unknown_codes_and_families() -> None:
    err = error_from_code("RLY_299", "new bind failure")
    assert type(err) is RelayError and err.code == "RLY_299"
    assert isinstance(error_from_code("RLY_205", "no"), BindError)
    assert isinstance(error_from_code("RLY_101", "no"), AuthError)
    weird = error_from_code("\x1b[31mpwned", "m")
    assert weird.code == "RLY_000"


def test_errors_pickle_with_their_code() -> None:
    err = pickle.loads(pickle.dumps(RelayError("x", code="RLY_999")))
    assert (type(err), str(err), err.code) == (RelayError, "x", "RLY_999")
    err2 = pickle.loads(pickle.dumps(ExpiredToken("gone")))
    assert (type(err2), err2.code) == (ExpiredToken, "RLY_103")
