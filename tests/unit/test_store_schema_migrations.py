"""The store's schema comes from Alembic migrations: a new database gets exactly the
tables the code describes, a database made before migrations (by 32581c6's
``create_all``) is taken forward with every token and audit event intact, and a database
from a newer relay is refused. On SQLite and on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from relay.control import schema, tokens
from relay.control.audit import append_event, audit_metadata
from relay.control.store import Store, metadata, tokens_table
from relay.errors import DataDirError

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


def make_pre_migration_database(url: str) -> list[str]:
    """A database as 32581c6 left it: its tables, no ``alembic_version``, three tokens
    (one revoked) and their audit events, written as that code wrote them. Returns the
    tokens' plaintexts."""
    engine = sa.create_engine(url)
    plaintexts = []
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                for statement in SCHEMA_32581C6_SQLITE.split(";"):
                    if statement.strip():
                        conn.exec_driver_sql(statement)
            else:  # 32581c6's create_all, on PostgreSQL (its metadata is this one)
                metadata.create_all(conn)
                audit_metadata.create_all(conn)
            for i in range(3):
                plaintext, token_id, secret = tokens.generate_token()
                salt = tokens.new_salt()
                conn.execute(
                    tokens_table.insert().values(
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
    finally:
        engine.dispose()
    return plaintexts


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


def test_a_database_from_before_migrations_loses_nothing(database_url: str) -> None:
    plaintexts = make_pre_migration_database(database_url)
    store = Store.open(database_url)
    try:
        records = store.list_tokens()
        assert sorted(r.description for r in records) == ["old 0", "old 1", "old 2"]
        assert store.verify_token(plaintexts[0], pepper=PEPPER).description == "old 0"
        assert store.verify_token(plaintexts[1], pepper=PEPPER).description == "old 1"
        with pytest.raises(Exception, match="revoked"):
            store.verify_token(plaintexts[2], pepper=PEPPER)
        # The three old events and the failed use (successes are not audited), one chain.
        assert store.audit.verify() == 4
        with store.engine.connect() as conn:
            assert schema.current(conn) == schema.head()
    finally:
        store.close()
    Store.open(database_url).close()  # opening again changes nothing


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
