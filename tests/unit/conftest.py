"""Fixtures the store suites share: a hand-moved clock starting at the test module's
``T0``, the data directory's pepper, and a store on each database (``database_url``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.control.store import Store
from relay.control.tokens import load_or_create_pepper
from tests.store_clock import FakeClock


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> FakeClock:
    return FakeClock(request.module.T0)


@pytest.fixture
def pepper(tmp_path: Path) -> bytes:
    return load_or_create_pepper(tmp_path)


@pytest.fixture
def store(database_url: str, clock: FakeClock) -> Iterator[Store]:
    s = Store.open(database_url, clock=clock)
    yield s
    s.close()
