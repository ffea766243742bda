from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.haproxy import run_haproxy
from tests.e2e.origin import NamedOrigin, Origin
from tests.e2e.procs import Agent, EchoServer, Edge, Proc


@pytest.fixture
def named() -> Iterator[list[NamedOrigin]]:
    """Origins that answer with their own name (tests/e2e/origin.py), closed afterwards."""
    made: list[NamedOrigin] = []
    try:
        yield made
    finally:
        for origin in made:
            origin.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    server = Edge(tmp_path / "edge").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Agents a test starts go in this list; all are stopped by PID afterwards."""
    started: list[Agent] = []
    try:
        yield started
    finally:
        for agent in started:
            agent.proc.stop()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts go in this list; each is stopped by PID afterwards (the last
    started first), also when the test fails."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture
def origin() -> Iterator[Origin]:
    """The web origin of tests/e2e/origin.py (HTTP and WebSocket), stopped afterwards."""
    server = Origin()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def haproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """HAProxy with accept-proxy that answers with the addresses it was told (its port)."""
    yield from run_haproxy(tmp_path_factory.mktemp("haproxy"))


@pytest.fixture
def edge_of_two_workers(tmp_path: Path) -> Iterator[Edge]:
    """``relay edge --workers 2``, stopped afterwards."""
    server = Edge(tmp_path / "edge", workers=2).start()
    try:
        yield server
    finally:
        server.stop()
