"""Accounts and their scoped API keys: records, rules, and the steps the store's
transactions are made of.

Every function here takes the caller's :class:`~sqlalchemy.Connection` and runs inside its
transaction; :class:`relay.control.store.Store` owns the transactions (one per method) and
is the only public face. Splitting them out keeps the store a module one can read in a
sitting; the rules (names, roles, who may hold ``admin``, what a failed key reveals) live
next to the records they govern.

An API key is an authtoken's sibling (:mod:`relay.control.tokens`: same shape, prefix
``rlk``, only ``HMAC(pepper, salt || secret)`` stored) that carries scopes
(:mod:`relay.control.scopes`) instead of a bind ACL, for the REST API instead of an agent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import Column, Connection, Select, select

from relay.control import tokens
from relay.control.audit import append_event
from relay.control.scopes import ADMIN, validate_scopes
from relay.control.tables import accounts_table, api_keys_table
from relay.errors import (
    AccountSuspended,
    ConfigError,
    Conflict,
    ExpiredApiKey,
    InvalidApiKey,
    NotFound,
    RelayError,
    RevokedApiKey,
)

__all__ = [
    "DEFAULT_ACCOUNT",
    "MAX_DESCRIPTION",
    "AccountRecord",
    "AccountStatus",
    "ApiKeyRecord",
    "ApiKeyStatus",
    "Refused",
    "Role",
    "validate_account_name",
]

Role = Literal["operator", "member"]
AccountStatus = Literal["active", "suspended"]
ApiKeyStatus = Literal["active", "revoked", "expired"]
ROLES: tuple[Role, ...] = get_args(Role)
ACCOUNT_STATUSES: tuple[AccountStatus, ...] = get_args(AccountStatus)

#: The operator account migration 0002 creates; credentials made without naming an
#: account (``relay token create``, data directories from before accounts) are its.
DEFAULT_ACCOUNT = "default"
MAX_DESCRIPTION = 256
MAX_NAME = 63
_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
ACCOUNT_ID_PREFIX = "acc_"
#: The one answer for a malformed key, an unknown id and a wrong secret: no oracle.
INVALID_API_KEY = "invalid API key"


@dataclass(frozen=True)
class AccountRecord:
    """An account: who credentials belong to. An operator's API keys may reach every
    account; a member's only its own."""

    id: str
    name: str
    role: Role
    status: AccountStatus
    created_at: datetime
    suspended_at: datetime | None


#: A credential's "last used" time is kept to this precision: it is written again only
#: when older than this, or when the address changed, so that an agent reconnecting in a
#: loop or a script calling the API does not cost a database write (a disk sync) each time.
LAST_USED_PRECISION = timedelta(seconds=60)


def last_use_is_recorded(
    last_used_at: datetime | None, last_used_addr: str | None, now: datetime, address: str | None
) -> bool:
    """Whether a use at ``now`` from ``address`` is already recorded closely enough."""
    return (
        last_used_at is not None
        and last_used_addr == address
        and timedelta(0) <= now - last_used_at < LAST_USED_PRECISION
    )


def credential_status(
    revoked_at: datetime | None, expires_at: datetime | None, now: datetime
) -> ApiKeyStatus:
    """An authtoken's or API key's status at ``now``; revocation wins over expiry (it was
    a deliberate act)."""
    if revoked_at is not None:
        return "revoked"
    if expires_at is not None and expires_at <= now:
        return "expired"
    return "active"


@dataclass(frozen=True)
class ApiKeyRecord:
    """What the store knows about an API key, minus anything secret."""

    id: str
    account_id: str
    description: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    last_used_addr: str | None

    def status_at(self, now: datetime) -> ApiKeyStatus:
        return credential_status(self.revoked_at, self.expires_at, now)

    @property
    def status(self) -> ApiKeyStatus:
        return self.status_at(datetime.now(UTC))


@dataclass(frozen=True)
class Refused:
    """A failed credential check, returned (not raised) from a transaction so that its
    audit event commits; the caller raises ``error`` afterwards."""

    reason: str
    error: RelayError


def validate_account_name(name: object) -> str:
    """An account name: 1 to 63 of ``a-z 0-9 -``, not starting or ending with ``-`` (a DNS
    label, so it can name things under a domain later); :class:`ConfigError` otherwise."""
    if not isinstance(name, str):
        raise ConfigError("an account name must be a string")
    if not 1 <= len(name) <= MAX_NAME:
        raise ConfigError(f"an account name has 1 to {MAX_NAME} characters")
    if _NAME_RE.fullmatch(name) is None:
        raise ConfigError(f"invalid account name {name!r}: use a-z, 0-9 and '-', not first or last")
    return name


def check_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION:
        raise ConfigError(f"description is longer than {MAX_DESCRIPTION} characters")


def check_expiry(expires_at: datetime | None, now: datetime) -> datetime | None:
    """A credential's expiry as aware UTC; :class:`ConfigError` if naive or not in the future."""
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        raise ConfigError("expires_at must be timezone-aware")
    expires_at = expires_at.astimezone(UTC)
    if expires_at <= now:
        raise ConfigError("expires_at is in the past")
    return expires_at


def paged(
    stmt: Select[Any], id_column: Column[Any], after: str | None, limit: int | None
) -> Select[Any]:
    """``stmt`` ordered by id, from just after the cursor ``after``, at most ``limit`` rows."""
    if limit is not None and limit < 1:
        raise ConfigError("limit must be at least 1")
    stmt = stmt.order_by(id_column)
    if after is not None:
        stmt = stmt.where(id_column > after)
    if limit is not None:
        stmt = stmt.limit(limit)
    return stmt


def _shown(value: str) -> str:
    """An id or name for a message: quoted, and cut if someone sent a long one."""
    return repr(value if len(value) <= 40 else value[:40] + "…")


# -- accounts ------------------------------------------------------------------------------


def account_record(m: Any) -> AccountRecord:
    return AccountRecord(
        id=m["id"],
        name=m["name"],
        role=m["role"],
        status=m["status"],
        created_at=m["created_at"],
        suspended_at=m["suspended_at"],
    )


def get_account(conn: Connection, account_id: str) -> AccountRecord:
    row = conn.execute(select(accounts_table).where(accounts_table.c.id == account_id)).first()
    if row is None:
        raise NotFound(f"no account with id {_shown(account_id)}")
    return account_record(row._mapping)


def get_account_by_name(conn: Connection, name: str) -> AccountRecord:
    row = conn.execute(select(accounts_table).where(accounts_table.c.name == name)).first()
    if row is None:
        raise NotFound(f"no account named {_shown(name)}")
    return account_record(row._mapping)


def create_account(
    conn: Connection, name: str, *, role: Role, now: datetime, actor: str
) -> AccountRecord:
    validate_account_name(name)
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}")
    taken = conn.execute(select(accounts_table.c.id).where(accounts_table.c.name == name)).first()
    if taken is not None:
        # A racing creator that passed this check too loses on the unique constraint; the
        # store replays its transaction, which then ends here.
        raise Conflict(f"the account name {name!r} is taken")
    account_id = ACCOUNT_ID_PREFIX + tokens.new_id()
    conn.execute(
        accounts_table.insert().values(
            id=account_id, name=name, role=role, status="active", created_at=now
        )
    )
    append_event(
        conn,
        at=now,
        actor=actor,
        action="account.create",
        target=account_id,
        detail={"name": name, "role": role},
    )
    return get_account(conn, account_id)


def set_account_status(
    conn: Connection, account_id: str, status: AccountStatus, *, now: datetime, actor: str
) -> AccountRecord:
    if status not in ACCOUNT_STATUSES:
        raise ConfigError(f"status must be one of {', '.join(ACCOUNT_STATUSES)}")
    before = get_account(conn, account_id)
    already = before.status == status
    if not already:
        conn.execute(
            accounts_table.update()
            .where(accounts_table.c.id == account_id)
            .values(status=status, suspended_at=now if status == "suspended" else None)
        )
    # Audited even when nothing changed, as token.revoke is: someone asked.
    append_event(
        conn,
        at=now,
        actor=actor,
        action="account.suspend" if status == "suspended" else "account.resume",
        target=account_id,
        detail={"already": already},
    )
    return get_account(conn, account_id)


def account_for_grant(conn: Connection, account_id: str | None) -> AccountRecord:
    """The account a new credential will belong to (``None``: the default account);
    :class:`NotFound`, or :class:`AccountSuspended` — a suspended account gets nothing new."""
    account = (
        get_account_by_name(conn, DEFAULT_ACCOUNT)
        if account_id is None
        else get_account(conn, account_id)
    )
    if account.status == "suspended":
        raise AccountSuspended(f"account {account.name!r} is suspended")
    return account


# -- API keys ------------------------------------------------------------------------------


def api_key_record(m: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=m["id"],
        account_id=m["account_id"],
        description=m["description"],
        scopes=tuple(m["scopes"]),
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        revoked_at=m["revoked_at"],
        last_used_at=m["last_used_at"],
        last_used_addr=m["last_used_addr"],
    )


def get_api_key(conn: Connection, key_id: str) -> ApiKeyRecord:
    row = conn.execute(select(api_keys_table).where(api_keys_table.c.id == key_id)).first()
    if row is None:
        raise NotFound(f"no API key with id {_shown(key_id)}")
    return api_key_record(row._mapping)


def create_api_key(
    conn: Connection,
    account_id: str,
    *,
    scopes: Iterable[str],
    description: str,
    expires_at: datetime | None,
    pepper: bytes,
    now: datetime,
    actor: str,
) -> tuple[ApiKeyRecord, str]:
    check_description(description)
    granted = validate_scopes(scopes)
    expires_at = check_expiry(expires_at, now)
    account = account_for_grant(conn, account_id)
    if ADMIN in granted and account.role != "operator":
        # A member's key reaches only its own account; "admin" would make it reach all.
        raise ConfigError("only an operator account's API key may have the admin scope")
    plaintext, key_id, secret = tokens.generate_api_key()
    salt = tokens.new_salt()
    conn.execute(
        api_keys_table.insert().values(
            id=key_id,
            account_id=account.id,
            salt=salt,
            hash=tokens.hash_secret(secret, salt, pepper),
            description=description,
            scopes=list(granted),
            created_at=now,
            expires_at=expires_at,
        )
    )
    append_event(
        conn,
        at=now,
        actor=actor,
        action="api_key.create",
        target=key_id,
        detail={
            "account_id": account.id,
            "description": description,
            "scopes": list(granted),
            "expires_at": None if expires_at is None else expires_at.isoformat(),
        },
    )
    return get_api_key(conn, key_id), plaintext


def revoke_api_key(conn: Connection, key_id: str, *, now: datetime, actor: str) -> ApiKeyRecord:
    before = get_api_key(conn, key_id)
    already = before.revoked_at is not None
    if not already:
        conn.execute(
            api_keys_table.update().where(api_keys_table.c.id == key_id).values(revoked_at=now)
        )
    append_event(
        conn,
        at=now,
        actor=actor,
        action="api_key.revoke",
        target=key_id,
        detail={"already_revoked": already},
    )
    return get_api_key(conn, key_id)


#: Compared against when a key id is unknown, so that "unknown id" and "wrong secret" take
#: the same time and ids can't be enumerated by timing.
_DUMMY_SALT = tokens.new_salt()
_DUMMY_HASH = bytes(32)


def verify_api_key(
    conn: Connection,
    key_id: str,
    secret: str,
    *,
    pepper: bytes,
    now: datetime,
    address: str | None,
    actor: str,
) -> tuple[ApiKeyRecord, AccountRecord] | Refused:
    """Check a parsed key. Revocation, expiry and suspension are revealed only after the
    secret matched; every refusal is audited (the key id, never the secret)."""
    row = conn.execute(select(api_keys_table).where(api_keys_table.c.id == key_id)).first()
    refused: Refused | None = None
    account: AccountRecord | None = None
    if row is None:
        tokens.verify_secret(secret, _DUMMY_SALT, pepper, _DUMMY_HASH)
        refused = Refused("unknown_id", InvalidApiKey(INVALID_API_KEY))
    elif not tokens.verify_secret(secret, row.salt, pepper, row.hash):
        refused = Refused("bad_secret", InvalidApiKey(INVALID_API_KEY))
    else:
        status = api_key_record(row._mapping).status_at(now)
        if status == "revoked":
            refused = Refused("revoked", RevokedApiKey("API key has been revoked"))
        elif status == "expired":
            refused = Refused("expired", ExpiredApiKey("API key has expired"))
        else:
            account = get_account(conn, row.account_id)
            if account.status == "suspended":
                refused = Refused(
                    "account_suspended", AccountSuspended("the API key's account is suspended")
                )
    if refused is not None:
        append_event(
            conn,
            at=now,
            actor=actor,
            action="api_key.auth_fail",
            target=key_id,
            detail={"reason": refused.reason},
        )
        return refused
    assert account is not None and row is not None
    if last_use_is_recorded(row.last_used_at, row.last_used_addr, now, address):
        return api_key_record(row._mapping), account
    conn.execute(
        api_keys_table.update()
        .where(api_keys_table.c.id == key_id)
        .values(last_used_at=now, last_used_addr=address)
    )
    return get_api_key(conn, key_id), account
