"""Alembic migrations of the store's schema (run by relay.control.schema)."""
