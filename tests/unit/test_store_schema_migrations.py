"""The store's schema comes from Alembic migrations: a new database gets exactly the
tables the code describes, a database made before migrations (by 32581c6's
``create_all``) or at revision 0001 is taken forward with every token and audit event
intact (the tokens now the ``default`` operator account's), and a database from a newer
relay is refused. On SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from relay.control import schema, tokens
from relay.control.audit import append_event, audit_metadata
from relay.control.store import Store, UTCDateTime, metadata
from relay.errors import DataDirError, RevokedToken

#: The tables as 32581c6 made them on SQLite (``sqlite3 relay.db .schema``).
SCHEMA_32581C6_SQLITE = """
CREATE TABLE tokens (
    id VARCHAR(12) NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    description TEXT NOT NULL,
    created_at DATETIME NOT NULL,
    expires_at DATETIME,
    revoked_at DATETIME,
    last_used_at DATETIME,
    bind_acl JSON NOT NULL,
    PRIMARY KEY (id)
);
CREATE TABLE audit_events (
    seq INTEGER NOT NULL,
    at VARCHAR(40) NOT NULL,
    actor TEXT NOT NULL,
    action VARCHAR(64) NOT NULL,
    target TEXT NOT NULL,
    detail JSON NOT NULL,
    prev_hash VARCHAR(64) NOT NULL,
    hash VARCHAR(64) NOT NULL,
    PRIMARY KEY (seq)
);
"""
PEPPER = b"p" * 32
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

#: 32581c6's tokens table, as its code described it (and create_all made it on PostgreSQL).
METADATA_32581C6 = sa.MetaData()
TOKENS_32581C6 = sa.Table(
    "tokens",
    METADATA_32581C6,
    sa.Column("id", sa.String(12), primary_key=True),
    sa.Column("salt", sa.LargeBinary(16), nullable=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    sa.Column("bind_acl", sa.JSON, nullable=False),
)


def add_old_tokens(conn: sa.Connection) -> list[str]:
    """Three tokens (one revoked) and their audit events, written as 32581c6 wrote them.
    Returns their plaintexts."""
    plaintexts = []
    for i in range(3):
        plaintext, token_id, secret = tokens.generate_token()
        salt = tokens.new_salt()
        conn.execute(
            TOKENS_32581C6.insert().values(
                id=token_id,
                salt=salt,
                hash=tokens.hash_secret(secret, salt, PEPPER),
                description=f"old {i}",
                created_at=T0,
                revoked_at=T0 if i == 2 else None,
                bind_acl=["*"],
            )
        )
        append_event(conn, at=T0, actor="admin", action="token.create", target=token_id)
        plaintexts.append(plaintext)
    return plaintexts


def make_pre_migration_database(url: str) -> list[str]:
    """A database as 32581c6 left it: its tables, no ``alembic_version``, three tokens
    (one revoked) and their audit events. Returns the tokens' plaintexts."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                for statement in SCHEMA_32581C6_SQLITE.split(";"):
                    if statement.strip():
                        conn.exec_driver_sql(statement)
            else:  # 32581c6's create_all, on PostgreSQL
                METADATA_32581C6.create_all(conn)
                audit_metadata.create_all(conn)
            return add_old_tokens(conn)
    finally:
        engine.dispose()


def make_revision_0001_database(url: str) -> list[str]:
    """A database as the relays between 626f1c3 and accounts left it: migrated to 0001,
    holding three tokens. Returns their plaintexts."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(schema._config(conn), "0001")
            return add_old_tokens(conn)
    finally:
        engine.dispose()


def test_a_new_database_has_exactly_the_tables_the_code_describes(database_url: str) -> None:
    Store.open(database_url).close()
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert schema.current(conn) == schema.head()
            described = sa.MetaData()
            for table in (*metadata.tables.values(), *audit_metadata.tables.values()):
                table.to_metadata(described)
            diff = compare_metadata(MigrationContext.configure(conn), described)
            assert [
                d for d in diff if d[0] != "remove_table" or d[1].name != "alembic_version"
            ] == []
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "make", [make_pre_migration_database, make_revision_0001_database], ids=["32581c6", "0001"]
)
def test_an_older_database_loses_nothing_and_its_tokens_go_to_default(
    database_url: str, make: Callable[[str], list[str]]
) -> None:
    plaintexts = make(database_url)
    store = Store.open(database_url)
    try:
        default = store.default_account()
        assert (default.name, default.role, default.status) == ("default", "operator", "active")
        assert store.list_accounts() == [default]
        records = store.list_tokens()
        assert sorted(r.description for r in records) == ["old 0", "old 1", "old 2"]
        assert {r.account_id for r in records} == {default.id}
        assert all(r.last_used_addr is None for r in records)
        assert store.list_tokens(account_id=default.id) == records
        verified = store.verify_token(plaintexts[0], pepper=PEPPER, address="192.0.2.1")
        assert (verified.description, verified.account_id) == ("old 0", default.id)
        assert verified.last_used_addr == "192.0.2.1"
        assert store.verify_token(plaintexts[1], pepper=PEPPER).description == "old 1"
        with pytest.raises(RevokedToken):
            store.verify_token(plaintexts[2], pepper=PEPPER)
        # The three old events and the failed use (successes are not audited), one chain:
        # the migration's default account is schema, not an audited act.
        assert store.audit.verify() == 4
        with store.engine.connect() as conn:
            assert schema.current(conn) == schema.head() == "0003"
    finally:
        store.close()
    store = Store.open(database_url)  # opening again changes nothing
    try:
        assert store.list_accounts() == [default]
        assert len(store.list_tokens()) == 3
    finally:
        store.close()


def test_a_new_database_has_the_default_operator_account_and_nothing_else(
    database_url: str,
) -> None:
    store = Store.open(database_url)
    try:
        (default,) = store.list_accounts()
        assert (default.name, default.role, default.status) == ("default", "operator", "active")
        assert default.id.startswith("acc_") and len(default.id) == 16
        assert store.list_tokens() == [] and store.list_api_keys() == []
        assert store.audit.verify() == 0
    finally:
        store.close()


def test_a_database_from_a_newer_relay_is_refused(database_url: str) -> None:
    Store.open(database_url).close()
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    finally:
        engine.dispose()
    with pytest.raises(DataDirError, match=r"revision 9999.*newer relay"):
        Store.open(database_url)


def test_a_revision_0002_database_gains_empty_reservation_tables_and_can_go_back(
    database_url: str,
) -> None:
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            command.upgrade(schema._config(conn), "0002")
    finally:
        engine.dispose()
    store = Store.open(database_url)  # 0002 → head
    try:
        default = store.default_account()
        assert store.list_reserved_domains() == [] and store.list_reserved_addrs() == []
        assert store.reserved_ports() == set()
        store.reserve_domain(default.id, "app.example.com")
        store.reserve_addr(default.id, 2222)
    finally:
        store.close()
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            command.downgrade(schema._config(conn), "0002")
            tables = set(sa.inspect(conn).get_table_names())
            assert {"reserved_domains", "reserved_addrs"}.isdisjoint(tables)
            assert {"accounts", "tokens", "api_keys"} <= tables
    finally:
        engine.dispose()
