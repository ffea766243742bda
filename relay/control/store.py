"""The control-plane store: accounts, authtokens and API keys (later: everything else) in
SQLAlchemy 2.

SQLite is the embedded default; the same code runs on PostgreSQL. Every method is one short
transaction, because the edge calls :meth:`Store.verify_token` straight from the event loop —
an indexed primary-key lookup plus one small write on SQLite is well under a millisecond.

Secrets never touch this module's storage or logs: a token's plaintext is returned once by
:meth:`Store.create_token`, and only ``HMAC(pepper, salt || secret)`` is kept. The pepper is
passed in by the caller (see :func:`relay.control.tokens.load_or_create_pepper`) rather than
stored here, so a copy of the database alone can't be used to check guesses.

Every grant, revocation and failed use is written to the audit log in the same transaction.

Accounts and API keys' rules and transaction steps are in :mod:`relay.control.accounts`,
reserved domains' and addresses' in :mod:`relay.control.reserved`, the tables in
:mod:`relay.control.tables`; every operation is a method here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from relay.control import accounts, reserved, schema, tokens
from relay.control.accounts import (
    DEFAULT_ACCOUNT,
    MAX_DESCRIPTION,
    AccountRecord,
    AccountStatus,
    ApiKeyRecord,
    ApiKeyStatus,
    Refused,
    Role,
)
from relay.control.audit import AuditLog, append_event
from relay.control.reserved import (
    CertificateMode,
    ReservationChanges,
    ReservationRecord,
    ReservedAddrRecord,
    ReservedDomainRecord,
)
from relay.control.tables import (
    UTCDateTime,
    accounts_table,
    api_keys_table,
    metadata,
    reserved_addrs_table,
    reserved_domains_table,
    tokens_table,
)
from relay.errors import (
    AccountSuspended,
    ConfigError,
    DataDirError,
    ExpiredToken,
    InvalidApiKey,
    InvalidToken,
    NotFound,
    RevokedToken,
)

__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_BIND_ACL",
    "MAX_DESCRIPTION",
    "AccountRecord",
    "AccountStatus",
    "ApiKeyRecord",
    "ApiKeyStatus",
    "CertificateMode",
    "InactiveStatus",
    "ReservationRecord",
    "ReservedAddrRecord",
    "ReservedDomainRecord",
    "Role",
    "Store",
    "TokenRecord",
    "TokenStatus",
    "UTCDateTime",
    "metadata",
    "token_allows_bind",
    "tokens_table",
    "validate_bind_acl",
]

T = TypeVar("T")
TokenStatus = Literal["active", "revoked", "expired"]
#: Why a token may no longer be used (:meth:`Store.inactive_tokens`).
InactiveStatus = Literal["revoked", "expired", "suspended"]

DEFAULT_BIND_ACL: tuple[str, ...] = ("*",)
MAX_ACL_PATTERNS = 64
_WRITE_RETRIES = 5


@dataclass(frozen=True)
class TokenRecord:
    """What the store knows about a token, minus anything secret."""

    id: str
    description: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    bind_acl: tuple[str, ...]
    account_id: str
    last_used_addr: str | None
    #: Its account's role ("operator" or "member") as of a verification
    #: (:meth:`Store.verify_token`); None where it was not looked up.
    account_role: str | None = None

    def status_at(self, now: datetime) -> TokenStatus:
        return accounts.credential_status(self.revoked_at, self.expires_at, now)

    @property
    def status(self) -> TokenStatus:
        return self.status_at(datetime.now(UTC))


def _record(m: Any) -> TokenRecord:
    return TokenRecord(
        id=m["id"],
        description=m["description"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        revoked_at=m["revoked_at"],
        last_used_at=m["last_used_at"],
        bind_acl=tuple(m["bind_acl"]),
        account_id=m["account_id"],
        last_used_addr=m["last_used_addr"],
    )


#: libpq connection settings for PostgreSQL unless the URL gives its own: a connect
#: gives up after 5 s, data the server does not acknowledge within 5 s ends the
#: connection (``tcp_user_timeout``, ms), and an idle connection whose peer is gone is
#: noticed within about 20 s (keepalives).
POSTGRES_TIMEOUTS: dict[str, Any] = {
    "connect_timeout": 5,
    "tcp_user_timeout": 5000,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
}


class Store:
    """Control-plane storage. Create with :meth:`Store.open`."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self._clock = clock or (lambda: datetime.now(UTC))
        self.audit = AuditLog(self)
        # Compared against when a token id is unknown, so that "unknown id" and "wrong secret"
        # take the same time and an attacker can't enumerate ids by timing.
        self._dummy_salt = tokens.new_salt()
        self._dummy_hash = bytes(32)

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], datetime] | None = None) -> Store:
        """Open (and on first use create) the database at ``url``, e.g. ``sqlite:///relay.db``.

        ``clock`` returns the current aware UTC time; tests inject one to move time forward.
        """
        try:
            parsed = make_url(url)
        except Exception as exc:  # sqlalchemy raises ArgumentError/ValueError variants
            raise ConfigError(f"invalid database URL: {exc}") from exc
        if parsed.drivername == "postgresql":
            # SQLAlchemy's default PostgreSQL driver is psycopg2; relay ships psycopg 3.
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql":
            # A database that goes silent (a partition drops every packet) must fail a
            # call within seconds, not after TCP's minutes of retries: the edge's store
            # thread is blocked meanwhile. The URL's own settings win.
            connect_args = {k: v for k, v in POSTGRES_TIMEOUTS.items() if k not in parsed.query}
        engine = create_engine(parsed, connect_args=connect_args)
        if engine.dialect.name == "sqlite":
            _configure_sqlite(engine, memory=parsed.database in (None, "", ":memory:"))
        try:
            with engine.begin() as conn:
                schema.upgrade(conn)
        except DataDirError:
            engine.dispose()
            raise
        except OperationalError as exc:
            engine.dispose()
            raise DataDirError(f"cannot open database: {exc.orig}") from exc
        return cls(engine, clock=clock)

    def ping(self) -> None:
        """Raise unless the database answers a trivial query (readiness checks)."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        self.engine.dispose()

    def now(self) -> datetime:
        """Current time as the store sees it (aware UTC)."""
        return self._clock()

    def run_in_transaction(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one transaction, retrying a few times on a unique-key race.

        The race that matters is two writers appending audit event N+1 at once (or, with
        negligible probability, two new tokens drawing the same id): the loser's insert fails
        and its whole transaction is replayed on top of the winner's.
        """
        for attempt in range(_WRITE_RETRIES):
            try:
                with self.engine.begin() as conn:
                    return fn(conn)
            except IntegrityError:
                if attempt == _WRITE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    # -- accounts --------------------------------------------------------------------------

    def create_account(
        self, name: str, *, role: Role = "member", actor: str = "admin"
    ) -> AccountRecord:
        """Create an active account. :class:`~relay.errors.ConfigError` for a bad name or
        role, :class:`~relay.errors.Conflict` when the name is taken."""
        return self.run_in_transaction(
            lambda conn: accounts.create_account(conn, name, role=role, now=self.now(), actor=actor)
        )

    def get_account(self, account_id: str) -> AccountRecord:
        """The account ``account_id``; :class:`~relay.errors.NotFound` if there is none."""
        with self.engine.connect() as conn:
            return accounts.get_account(conn, account_id)

    def get_account_by_name(self, name: str) -> AccountRecord:
        """The account named ``name``; :class:`~relay.errors.NotFound` if there is none."""
        with self.engine.connect() as conn:
            return accounts.get_account_by_name(conn, name)

    def default_account(self) -> AccountRecord:
        """The operator account named ``default`` (made by migration 0002), which holds
        credentials created without naming an account."""
        return self.get_account_by_name(DEFAULT_ACCOUNT)

    def list_accounts(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[AccountRecord]:
        """Accounts ordered by id; ``after`` is a cursor (the last id of the previous page)."""
        stmt = accounts.paged(select(accounts_table), accounts_table.c.id, after, limit)
        with self.engine.connect() as conn:
            return [accounts.account_record(row._mapping) for row in conn.execute(stmt)]

    def set_account_status(
        self, account_id: str, status: AccountStatus, *, actor: str = "admin"
    ) -> AccountRecord:
        """Suspend (``"suspended"``) or resume (``"active"``) an account; idempotent, and
        audited as ``account.suspend`` / ``account.resume`` either way.

        A suspended account's credentials stop working: its tokens authenticate no agent
        (and the edge ends their live sessions, see :meth:`inactive_tokens`), its API keys
        no caller, and it is granted no new ones. Resuming gives them back unchanged.
        """
        return self.run_in_transaction(
            lambda conn: accounts.set_account_status(
                conn, account_id, status, now=self.now(), actor=actor
            )
        )

    # -- tokens ----------------------------------------------------------------------------

    def create_token(
        self,
        *,
        description: str = "",
        expires_at: datetime | None = None,
        bind_acl: Sequence[str] | None = None,
        pepper: bytes,
        actor: str = "admin",
        account_id: str | None = None,
    ) -> tuple[TokenRecord, str]:
        """Create a token for ``account_id`` (None: the default account); return its record
        and its plaintext (shown once, never stored). :class:`~relay.errors.NotFound` for an
        unknown account, :class:`~relay.errors.AccountSuspended` for a suspended one."""
        accounts.check_description(description)
        acl = validate_bind_acl(DEFAULT_BIND_ACL if bind_acl is None else bind_acl)
        now = self.now()
        expires_at = accounts.check_expiry(expires_at, now)

        def tx(conn: Connection) -> tuple[TokenRecord, str]:
            account = accounts.account_for_grant(conn, account_id)
            plaintext, token_id, secret = tokens.generate_token()
            salt = tokens.new_salt()
            conn.execute(
                tokens_table.insert().values(
                    id=token_id,
                    salt=salt,
                    hash=tokens.hash_secret(secret, salt, pepper),
                    description=description,
                    created_at=now,
                    expires_at=expires_at,
                    bind_acl=list(acl),
                    account_id=account.id,
                )
            )
            append_event(
                conn,
                at=now,
                actor=actor,
                action="token.create",
                target=token_id,
                detail={
                    "description": description,
                    "expires_at": None if expires_at is None else expires_at.isoformat(),
                    "bind_acl": list(acl),
                    "account_id": account.id,
                },
            )
            row = conn.execute(select(tokens_table).where(tokens_table.c.id == token_id)).one()
            return _record(row._mapping), plaintext

        return self.run_in_transaction(tx)

    def list_tokens(
        self,
        *,
        account_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[TokenRecord]:
        """Tokens (of ``account_id``, or all): oldest first; by id when paged with a cursor
        ``after`` (the last id of the previous page) or a ``limit``."""
        stmt = select(tokens_table)
        if account_id is not None:
            stmt = stmt.where(tokens_table.c.account_id == account_id)
        if after is None and limit is None:
            stmt = stmt.order_by(tokens_table.c.created_at, tokens_table.c.id)
        else:
            stmt = accounts.paged(stmt, tokens_table.c.id, after, limit)
        with self.engine.connect() as conn:
            return [_record(row._mapping) for row in conn.execute(stmt)]

    def get_token(self, token_id: str) -> TokenRecord:
        """The record for ``token_id``; :class:`~relay.errors.NotFound` if there is none."""
        with self.engine.connect() as conn:
            row = conn.execute(select(tokens_table).where(tokens_table.c.id == token_id)).first()
        if row is None:
            raise NotFound(f"no token with id {token_id!r}")
        return _record(row._mapping)

    def revoke_token(self, token_id: str, *, actor: str = "admin") -> TokenRecord:
        """Revoke a token. Idempotent: revoking twice keeps the first revocation time."""

        def tx(conn: Connection) -> TokenRecord:
            row = conn.execute(select(tokens_table).where(tokens_table.c.id == token_id)).first()
            if row is None:
                raise NotFound(f"no token with id {token_id!r}")
            already = row.revoked_at is not None
            now = self.now()
            if not already:
                conn.execute(
                    tokens_table.update()
                    .where(tokens_table.c.id == token_id)
                    .values(revoked_at=now)
                )
            append_event(
                conn,
                at=now,
                actor=actor,
                action="token.revoke",
                target=token_id,
                detail={"already_revoked": already},
            )
            row = conn.execute(select(tokens_table).where(tokens_table.c.id == token_id)).one()
            return _record(row._mapping)

        return self.run_in_transaction(tx)

    def inactive_tokens(self, token_ids: Collection[str]) -> dict[str, InactiveStatus]:
        """Which of ``token_ids`` may no longer be used, and why ("revoked", "expired",
        "suspended" — the token's account; an id the store does not know counts as
        revoked). Revocation and expiry win over suspension: resuming the account would not
        bring those tokens back. One indexed query per 500 ids: the edge asks this every
        second about its live sessions."""
        wanted = list(token_ids)
        now = self.now()
        found: dict[str, InactiveStatus | None] = {}
        joined = tokens_table.join(accounts_table, tokens_table.c.account_id == accounts_table.c.id)
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                rows = conn.execute(
                    select(
                        tokens_table.c.id,
                        tokens_table.c.revoked_at,
                        tokens_table.c.expires_at,
                        accounts_table.c.status,
                    )
                    .select_from(joined)
                    .where(tokens_table.c.id.in_(chunk))
                )
                for row in rows:
                    if row.revoked_at is not None:
                        found[row.id] = "revoked"
                    elif row.expires_at is not None and row.expires_at <= now:
                        found[row.id] = "expired"
                    elif row.status == "suspended":
                        found[row.id] = "suspended"
                    else:
                        found[row.id] = None
        inactive: dict[str, InactiveStatus] = {}
        for token_id in wanted:
            status = found.get(token_id, "revoked")
            if status is not None:
                inactive[token_id] = status
        return inactive

    def verify_token(
        self,
        plaintext: str,
        *,
        pepper: bytes,
        actor: str = "agent",
        address: str | None = None,
    ) -> TokenRecord:
        """Authenticate an authtoken; return its record with ``last_used_at`` and
        ``last_used_addr`` (``address``, the caller's host) updated.

        Raises :class:`~relay.errors.InvalidToken` (malformed, unknown id, or wrong secret — one
        message for all three), :class:`~relay.errors.RevokedToken`,
        :class:`~relay.errors.ExpiredToken` or :class:`~relay.errors.AccountSuspended`.
        Revocation, expiry and suspension are only revealed to a caller who presented the
        right secret. Each failure is audited as ``auth.fail`` with the token id when one
        could be parsed — never the secret. ``actor`` names the caller (e.g. the agent's
        address) for the audit log.
        """
        try:
            token_id, secret = tokens.parse_token(plaintext)
        except InvalidToken:
            # The parse error only describes the shape ("too long", "whitespace"), never the input.
            self.audit.append(actor, "auth.fail", "", {"reason": "malformed"})
            raise

        def tx(conn: Connection) -> TokenRecord | Refused:
            row = conn.execute(select(tokens_table).where(tokens_table.c.id == token_id)).first()
            now = self.now()
            refused: Refused | None = None
            if row is None:
                tokens.verify_secret(secret, self._dummy_salt, pepper, self._dummy_hash)
                refused = Refused("unknown_id", InvalidToken("invalid authtoken"))
            elif not tokens.verify_secret(secret, row.salt, pepper, row.hash):
                refused = Refused("bad_secret", InvalidToken("invalid authtoken"))
            else:
                status = _record(row._mapping).status_at(now)
                account = accounts.get_account(conn, row.account_id)
                if status == "revoked":
                    refused = Refused("revoked", RevokedToken("authtoken has been revoked"))
                elif status == "expired":
                    refused = Refused("expired", ExpiredToken("authtoken has expired"))
                elif account.status == "suspended":
                    refused = Refused(
                        "account_suspended",
                        AccountSuspended("the authtoken's account is suspended"),
                    )
            if refused is not None:
                append_event(
                    conn,
                    at=now,
                    actor=actor,
                    action="auth.fail",
                    target=token_id,
                    detail={"reason": refused.reason},
                )
                return refused
            assert row is not None
            if not accounts.last_use_is_recorded(
                row.last_used_at, row.last_used_addr, now, address
            ):
                conn.execute(
                    tokens_table.update()
                    .where(tokens_table.c.id == token_id)
                    .values(last_used_at=now, last_used_addr=address)
                )
                row = conn.execute(select(tokens_table).where(tokens_table.c.id == token_id)).one()
            return replace(_record(row._mapping), account_role=account.role)

        result = self.run_in_transaction(tx)
        if isinstance(result, Refused):
            raise result.error
        return result

    # -- API keys --------------------------------------------------------------------------

    def create_api_key(
        self,
        account_id: str,
        *,
        scopes: Iterable[str],
        description: str = "",
        expires_at: datetime | None = None,
        pepper: bytes,
        actor: str = "admin",
    ) -> tuple[ApiKeyRecord, str]:
        """Create an API key for ``account_id`` holding ``scopes``; return its record and
        its plaintext ``rlk_<id>_<secret>`` (shown once, never stored).

        :class:`~relay.errors.ConfigError` for unknown or no scopes, ``admin`` for a member
        account, a long description or an expiry not in the future;
        :class:`~relay.errors.NotFound` / :class:`~relay.errors.AccountSuspended` for the
        account.
        """
        # Materialized once: the transaction may be replayed, and a generator would be
        # empty the second time. (A lone string is left for validate_scopes to refuse.)
        scopes = scopes if isinstance(scopes, str) else list(scopes)
        return self.run_in_transaction(
            lambda conn: accounts.create_api_key(
                conn,
                account_id,
                scopes=scopes,
                description=description,
                expires_at=expires_at,
                pepper=pepper,
                now=self.now(),
                actor=actor,
            )
        )

    def get_api_key(self, key_id: str) -> ApiKeyRecord:
        """The record for ``key_id``; :class:`~relay.errors.NotFound` if there is none."""
        with self.engine.connect() as conn:
            return accounts.get_api_key(conn, key_id)

    def list_api_keys(
        self,
        *,
        account_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[ApiKeyRecord]:
        """API keys (of ``account_id``, or all) ordered by id; ``after`` is a cursor."""
        stmt = select(api_keys_table)
        if account_id is not None:
            stmt = stmt.where(api_keys_table.c.account_id == account_id)
        stmt = accounts.paged(stmt, api_keys_table.c.id, after, limit)
        with self.engine.connect() as conn:
            return [accounts.api_key_record(row._mapping) for row in conn.execute(stmt)]

    def revoke_api_key(self, key_id: str, *, actor: str = "admin") -> ApiKeyRecord:
        """Revoke an API key. Idempotent: revoking twice keeps the first revocation time."""
        return self.run_in_transaction(
            lambda conn: accounts.revoke_api_key(conn, key_id, now=self.now(), actor=actor)
        )

    def verify_api_key(
        self,
        plaintext: str,
        *,
        pepper: bytes,
        address: str | None = None,
        actor: str | None = None,
    ) -> tuple[ApiKeyRecord, AccountRecord]:
        """Authenticate an API key; return it (``last_used_at``/``last_used_addr`` updated)
        and its account.

        Raises :class:`~relay.errors.InvalidApiKey` — one message for a malformed key, an
        unknown id and a wrong secret, with an HMAC computed for an unknown id too — then,
        only to a caller who presented the right secret, :class:`~relay.errors.RevokedApiKey`,
        :class:`~relay.errors.ExpiredApiKey` or :class:`~relay.errors.AccountSuspended`.
        Every failure is audited as ``api_key.auth_fail`` (the key id when one could be
        parsed, never the secret) by ``actor``, by default ``api@<address>``.
        """
        who = actor if actor is not None else (f"api@{address}" if address else "api")
        try:
            key_id, secret = tokens.parse_api_key(plaintext)
        except InvalidApiKey:
            self.audit.append(who, "api_key.auth_fail", "", {"reason": "malformed"})
            raise InvalidApiKey(accounts.INVALID_API_KEY) from None
        result = self.run_in_transaction(
            lambda conn: accounts.verify_api_key(
                conn, key_id, secret, pepper=pepper, now=self.now(), address=address, actor=who
            )
        )
        if isinstance(result, Refused):
            raise result.error
        return result

    # -- reserved domains and TCP addresses ------------------------------------------------

    def reserve_domain(
        self,
        account_id: str | None,
        domain: str,
        *,
        certificate_mode: CertificateMode = "auto",
        region: str | None = None,
        actor: str = "admin",
    ) -> ReservedDomainRecord:
        """Reserve ``domain`` (``app.example.com`` or ``*.example.com``, lowercased) for
        ``account_id`` (None: the default account); audited as ``reserved_domain.create``.

        :class:`~relay.errors.ConfigError` for a bad domain, certificate mode or region;
        :class:`~relay.errors.Conflict` when it is reserved already, falls under another
        account's wildcard, or is a wildcard over another account's names;
        :class:`~relay.errors.NotFound` / :class:`~relay.errors.AccountSuspended` for the
        account.
        """
        return self.run_in_transaction(
            lambda conn: reserved.reserve_domain(
                conn,
                account_id,
                domain,
                certificate_mode=certificate_mode,
                region=region,
                now=self.now(),
                actor=actor,
            )
        )

    def list_reserved_domains(
        self,
        *,
        account_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[ReservedDomainRecord]:
        """Reserved domains (of ``account_id``, or all) ordered by id; ``after`` is a cursor."""
        stmt = select(reserved_domains_table)
        if account_id is not None:
            stmt = stmt.where(reserved_domains_table.c.account_id == account_id)
        stmt = accounts.paged(stmt, reserved_domains_table.c.id, after, limit)
        with self.engine.connect() as conn:
            return [reserved.domain_record(row._mapping) for row in conn.execute(stmt)]

    def get_reserved_domain(self, reservation_id: str) -> ReservedDomainRecord:
        """:class:`~relay.errors.NotFound` if there is no such reservation."""
        with self.engine.connect() as conn:
            return reserved.get_reserved_domain(conn, reservation_id)

    def release_domain(self, reservation_id: str, *, actor: str = "admin") -> ReservedDomainRecord:
        """Release a reserved domain (audited as ``reserved_domain.release``) and return it
        as it was; :class:`~relay.errors.NotFound` if there is no such reservation (a
        second release included). The next bind of the name follows the rules for an
        unreserved one; edges re-check their live endpoints under it at once
        (relay/edge/live_reservations.py): one is ended only if a reservation that still
        covers it (a wildcard above) refuses it."""
        return self.run_in_transaction(
            lambda conn: reserved.release_domain(conn, reservation_id, now=self.now(), actor=actor)
        )

    def reserve_addr(
        self,
        account_id: str | None,
        port: int,
        *,
        region: str | None = None,
        actor: str = "admin",
    ) -> ReservedAddrRecord:
        """Reserve TCP ``port`` (1 to 65535) for ``account_id`` (None: the default
        account); audited as ``reserved_addr.create``. :class:`~relay.errors.Conflict` when
        it is reserved already; otherwise as :meth:`reserve_domain`."""
        return self.run_in_transaction(
            lambda conn: reserved.reserve_addr(
                conn, account_id, port, region=region, now=self.now(), actor=actor
            )
        )

    def list_reserved_addrs(
        self,
        *,
        account_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[ReservedAddrRecord]:
        """Reserved TCP addresses (of ``account_id``, or all) ordered by id."""
        stmt = select(reserved_addrs_table)
        if account_id is not None:
            stmt = stmt.where(reserved_addrs_table.c.account_id == account_id)
        stmt = accounts.paged(stmt, reserved_addrs_table.c.id, after, limit)
        with self.engine.connect() as conn:
            return [reserved.addr_record(row._mapping) for row in conn.execute(stmt)]

    def get_reserved_addr(self, reservation_id: str) -> ReservedAddrRecord:
        """:class:`~relay.errors.NotFound` if there is no such reservation."""
        with self.engine.connect() as conn:
            return reserved.get_reserved_addr(conn, reservation_id)

    def release_addr(self, reservation_id: str, *, actor: str = "admin") -> ReservedAddrRecord:
        """Release a reserved TCP address (audited as ``reserved_addr.release``) and
        return it as it was; :class:`~relay.errors.NotFound` if there is none."""
        return self.run_in_transaction(
            lambda conn: reserved.release_addr(conn, reservation_id, now=self.now(), actor=actor)
        )

    def bind_owner(self, kind: str, name_or_port: str | int) -> ReservationRecord | None:
        """The reservation covering a bind (the edge asks before each one): for ``http``,
        ``https`` and ``tls`` the hostname's own reservation, else the nearest wildcard
        above it; for ``tcp`` the port's. None when nothing is reserved there. One
        indexed query."""
        with self.engine.connect() as conn:
            return reserved.bind_owner(conn, kind, name_or_port)

    def pins_under(self, wildcard: str, region: str) -> dict[str, str | None]:
        """What an endpoint of ``wildcard`` bound on an edge of ``region`` must refuse:
        the names (and narrower wildcards) under it reserved with a pin to another region
        (name → that region), and names under those that are servable here again (None).
        One query (relay/control/reserved.py ``pins_under``)."""
        with self.engine.connect() as conn:
            return reserved.pins_under(conn, wildcard, region)

    def reserved_ports(self) -> set[int]:
        """Every reserved TCP port, whoever holds it: the edge never hands one out at
        random."""
        with self.engine.connect() as conn:
            return reserved.reserved_ports(conn)

    def reservation_changes(self, after: int | None, limit: int) -> ReservationChanges:
        """The domains and ports reserved or released after audit event ``after`` (the
        ``mark`` of the previous answer; None at first), at most ``limit`` of the events:
        what an edge re-checks its live endpoints against (relay/control/reserved.py
        ``changes_after``)."""
        with self.engine.connect() as conn:
            return reserved.changes_after(conn, after, limit)

    def reservation_owners(
        self, hostnames: Collection[str], ports: Collection[int]
    ) -> tuple[dict[str, ReservedDomainRecord], dict[int, ReservedAddrRecord]]:
        """:meth:`bind_owner` for many live names and ports at once (the reserved ones
        only), at most ``reserved.MAX_ASKED`` of each."""
        with self.engine.connect() as conn:
            return reserved.owners_of(conn, hostnames, ports)


def _configure_sqlite(engine: Engine, *, memory: bool) -> None:
    """Make SQLite transactions real and serial.

    pysqlite's legacy mode opens transactions lazily (after our first SELECT), so two writers
    could read the same audit-chain head. ``BEGIN IMMEDIATE`` takes the write lock up front;
    WAL lets the event loop's readers proceed while a writer commits. This is the recipe from
    SQLAlchemy's SQLite dialect documentation.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        try:
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=5000")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


# -- bind ACLs -----------------------------------------------------------------------------

_HOST_KINDS = frozenset({"http", "https", "tls"})
_KINDS = _HOST_KINDS | {"tcp"}
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_PORT_RANGE_RE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")


def validate_bind_acl(patterns: Sequence[str]) -> tuple[str, ...]:
    """Check and normalize (lower-case) a bind ACL; :class:`ConfigError` on a bad pattern.

    Grammar::

        pattern  = "*"                      anything
                 | "tcp:" ports             tcp endpoints; ports = "*" | N | N-M
                 | kind ":" host            kind in http/https/tls; host as below
                 | host                     any hostname kind (http, https, tls)
        host     = "*" | "*." domain | domain

    ``*.example.com`` matches exactly one extra label (``a.example.com``, not
    ``a.b.example.com`` nor ``example.com``), the same rule as wildcard certificates: a grant
    never reaches further than a reader of the pattern would expect.
    """
    if isinstance(patterns, str):
        raise ConfigError("bind ACL must be a list of patterns, not a string")
    if len(patterns) > MAX_ACL_PATTERNS:
        raise ConfigError(f"bind ACL has more than {MAX_ACL_PATTERNS} patterns")
    out: list[str] = []
    for raw in patterns:
        if not isinstance(raw, str):
            raise ConfigError("bind ACL patterns must be strings")
        pat = raw.strip().lower()
        if not _pattern_ok(pat):
            raise ConfigError(f"invalid bind ACL pattern {raw!r}")
        out.append(pat)
    return tuple(out)


def _pattern_ok(pat: str) -> bool:
    if pat == "*":
        return True
    kind, sep, target = pat.partition(":")
    if not sep:
        return _host_pattern_ok(pat)
    if kind == "tcp":
        return target == "*" or _port_range(target) is not None
    if kind in _HOST_KINDS:
        return _host_pattern_ok(target)
    return False


def _host_pattern_ok(target: str) -> bool:
    if target == "*":
        return True
    name = target[2:] if target.startswith("*.") else target
    return len(name) <= 253 and _HOST_RE.fullmatch(name) is not None


def _port_range(target: str) -> tuple[int, int] | None:
    m = _PORT_RANGE_RE.fullmatch(target)
    if m is None:
        return None
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if not (1 <= lo <= hi <= 65535):
        return None
    return lo, hi


def _host_matches(pattern: str, hostname: str) -> bool:
    """An explicit host pattern: the exact name, or for ``*.suffix`` one label under it
    (or the very wildcard ``*.suffix``)."""
    if pattern == hostname:
        return True
    if pattern.startswith("*."):
        label, dot, rest = hostname.partition(".")
        return bool(dot) and bool(label) and rest == pattern[2:]
    return False


def token_allows_bind(
    record: TokenRecord,
    kind: str,
    port: int | None = None,
    hostname: str | None = None,
    *,
    base_domain: str | None = None,
    reserved: bool = False,
) -> bool:
    """Whether ``record``'s bind ACL allows binding a ``kind`` endpoint on ``port``/``hostname``.

    Pure ACL check (status is :meth:`Store.verify_token`'s job). A tcp port range pattern needs
    the concrete port: the edge picks a port first, then asks. Hostnames are compared
    case-insensitively, trailing dot ignored.

    The catch-alls (``*``, ``http:*``…) cover the names under the edge's ``base_domain``
    (``app.<base>``, the names the edge hands out) and, when ``reserved`` (the token's
    account holds a reservation covering ``hostname``: :meth:`Store.bind_owner`), that
    name too, custom domain or wildcard: ownership is the reservation's to say, and the
    ACL only narrows it. Any other custom domain (``www.google.com``) or wildcard
    (``*.example.com``, also ``*.<base>``) must be named by an entry of its own
    (``*.example.com`` grants that wildcard and the names it covers). Without a base
    domain the catch-alls cover only reserved names.
    """
    if kind not in _KINDS:
        return False
    host = None
    if hostname is not None:
        host = hostname.lower().rstrip(".")
        bare = host[2:] if host.startswith("*.") else host
        if not _is_hostname(bare):
            host = None
    base = base_domain.lower().rstrip(".") if base_domain else None
    by_catch_all = host is not None and (
        reserved or (base is not None and not host.startswith("*.") and host.endswith("." + base))
    )
    for pat in record.bind_acl:
        pkind, sep, target = pat.partition(":")
        if not sep:
            pkind, target = "", pat
        if pkind == "tcp" or (pat == "*" and kind == "tcp"):
            if kind != "tcp":
                continue
            if target == "*":
                return True
            rng = _port_range(target)
            if rng is not None and port is not None and rng[0] <= port <= rng[1]:
                return True
        elif kind in _HOST_KINDS and pkind in ("", kind):
            if target == "*":
                if by_catch_all:
                    return True
            elif host is not None and _host_matches(target, host):
                return True
    return False


def _is_hostname(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOST_RE.fullmatch(host) is not None
    return False
