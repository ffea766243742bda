"""The store's tables, as the code reads and writes them.

The database gets them from the migrations (``relay/control/migrations/versions/``), never
from ``create_all``: a test compares the two and must find them identical, so a column
added here needs a migration that adds it too. Constraint and index names are explicit
because a migration must name what it creates on SQLite (batch mode) and PostgreSQL alike.

The audit log's table lives with its code (:mod:`relay.control.audit`), the bottom floor.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import DateTime, TypeDecorator

__all__ = [
    "UTCDateTime",
    "accounts_table",
    "api_keys_table",
    "metadata",
    "reserved_addrs_table",
    "reserved_domains_table",
    "tokens_table",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python, naive UTC in the database.

    SQLite has no timezone type and returns naive datetimes; normalizing at this boundary keeps
    every datetime the rest of relay sees aware. Naive input is a bug and is refused.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime passed to the store; use timezone-aware UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()

accounts_table = Table(
    "accounts",
    metadata,
    Column("id", String(16), primary_key=True),  # "acc_" + 12 base32 characters
    Column("name", Text, nullable=False),
    Column("role", String(16), nullable=False),  # "operator" | "member"
    Column("status", String(16), nullable=False),  # "active" | "suspended"
    Column("created_at", UTCDateTime, nullable=False),
    Column("suspended_at", UTCDateTime, nullable=True),
    UniqueConstraint("name", name="uq_accounts_name"),
)

tokens_table = Table(
    "tokens",
    metadata,
    Column("id", String(12), primary_key=True),  # public token id
    Column("salt", LargeBinary(16), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("bind_acl", JSON, nullable=False),
    Column(
        "account_id",
        String(16),
        ForeignKey("accounts.id", name="fk_tokens_account_id_accounts"),
        nullable=False,
    ),
    Column("last_used_addr", Text, nullable=True),
    Index("ix_tokens_account_id", "account_id"),
)

api_keys_table = Table(
    "api_keys",
    metadata,
    Column("id", String(12), primary_key=True),  # public key id
    Column(
        "account_id",
        String(16),
        ForeignKey("accounts.id", name="fk_api_keys_account_id_accounts"),
        nullable=False,
    ),
    Column("salt", LargeBinary(16), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("description", Text, nullable=False),
    Column("scopes", JSON, nullable=False),  # sorted list of scope names
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("last_used_addr", Text, nullable=True),
    Index("ix_api_keys_account_id", "account_id"),
)

reserved_domains_table = Table(
    "reserved_domains",
    metadata,
    Column("id", String(15), primary_key=True),  # "rd_" + 12 base32 characters
    Column(
        "account_id",
        String(16),
        ForeignKey("accounts.id", name="fk_reserved_domains_account_id_accounts"),
        nullable=False,
    ),
    Column("domain", Text, nullable=False),  # lowercase: "app.example.com" or "*.example.com"
    Column("certificate_mode", String(16), nullable=False),  # "auto" | "manual"
    Column("region", Text, nullable=True),  # pinned region; None: any
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("domain", name="uq_reserved_domains_domain"),
    Index("ix_reserved_domains_account_id", "account_id"),
)

reserved_addrs_table = Table(
    "reserved_addrs",
    metadata,
    Column("id", String(15), primary_key=True),  # "ra_" + 12 base32 characters
    Column(
        "account_id",
        String(16),
        ForeignKey("accounts.id", name="fk_reserved_addrs_account_id_accounts"),
        nullable=False,
    ),
    Column("port", Integer, nullable=False),
    Column("region", Text, nullable=True),  # pinned region; None: any
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("port", name="uq_reserved_addrs_port"),
    CheckConstraint("port >= 1 AND port <= 65535", name="ck_reserved_addrs_port"),
    Index("ix_reserved_addrs_account_id", "account_id"),
)
