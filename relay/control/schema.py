"""The store's schema, brought to the newest version by Alembic migrations
(``relay/control/migrations/versions/``) each time a store is opened.

A database made before migrations existed (by ``create_all``: 32581c6 and the stops after
it) has the tables of revision 0001 and no ``alembic_version``: it is stamped 0001 and
then upgraded, so nothing in it is touched by a table being created again. A database
from a *newer* relay (a revision this code does not know) is refused: running on a schema
it does not understand could lose data.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from relay.errors import DataDirError

MIGRATIONS = Path(__file__).parent / "migrations"
#: The revision whose tables pre-migration databases hold.
BASELINE = "0001"
#: The PostgreSQL advisory lock key of a schema upgrade ("relaymig" as an integer).
MIGRATION_LOCK = int.from_bytes(b"relaymig", "big") & 0x7FFF_FFFF_FFFF_FFFF


class _OnlyUpgrades(logging.Filter):
    """Of Alembic's INFO lines only the migrations that ran are news to an operator; its
    plugin setup and dialect notes, on every start of every process, are not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or record.getMessage().startswith("Running ")


logging.getLogger("alembic.runtime.migration").addFilter(_OnlyUpgrades())


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this code knows."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    revision = ScriptDirectory.from_config(config).get_current_head()
    assert revision is not None
    return revision


def current(connection: Connection) -> str | None:
    """The database's revision; None before migrations (or for an empty database)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    row = connection.execute(text("SELECT version_num FROM alembic_version")).first()
    return None if row is None else str(row[0])


def upgrade(connection: Connection) -> None:
    """Bring the database on ``connection`` to :func:`head`, inside its transaction."""
    if connection.dialect.name == "postgresql":
        # Two edges starting at once upgrade one after the other (SQLite's writers are
        # serial already: BEGIN IMMEDIATE).
        connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
    config = _config(connection)
    known = {s.revision for s in ScriptDirectory.from_config(config).walk_revisions()}
    revision = current(connection)
    if revision is None and inspect(connection).has_table("tokens"):
        command.stamp(config, BASELINE)  # made by create_all before migrations
    elif revision is not None and revision not in known:
        raise DataDirError(
            f"the database is at schema revision {revision}, which this relay does not "
            f"know (it knows up to {head()}): it was written by a newer relay"
        )
    command.upgrade(config, "head")
