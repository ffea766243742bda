"""Alembic's environment for relay's store: always run by :mod:`relay.control.schema` on
a connection it passes in (no alembic.ini, no URL of its own)."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
