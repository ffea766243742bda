"""Fixtures shared by every suite: the store's databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    why = postgres.unavailable()
    if why:
        pytest.skip(why)
    server = postgres.PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for one test: SQLite in its temporary directory, or a new
    database on the session's real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/relay.db"
    server: postgres.PostgresServer = request.getfixturevalue("postgres_server")
    return server.database()
