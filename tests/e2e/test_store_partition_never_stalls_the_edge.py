"""An edge whose store is PostgreSQL, cut off from it without a word (the network
between them drops every packet: no RST, no FIN, as in a partition): the edge's byte
path and event loop never wait for the store. Live sessions keep serving with their
usual latency, the admin listener answers (not ready: the store does not answer), new
agents are told RLY_504 within a bounded time, and everything heals when the network
is back. The REST API, whether an edge serves it or `relay control` does, answers 503
RLY_504 after its bound and never holds the loop meanwhile.

PostgreSQL runs in a network namespace of its own; the partition is its veth set down
(packets to it vanish). The edge and the agent run beside the test, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.errors import ControlUnavailable
from tests.e2e.api_calls import Answer, ServesApi, call
from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, free_port, payload
from tests.e2e.test_cluster_in_namespaces import NsPostgres
from tests.e2e.test_edge_with_remote_control_plane import Control
from tests.netns import Network, _ip, network  # noqa: F401
from tests.postgres import unavailable as postgres_unavailable

pytestmark = pytest.mark.timeout(240)

#: The most a visitor's round trip through a live session may take while the store is
#: cut off (its usual is a millisecond; a loop waiting on the store stalls for seconds).
STALL_LIMIT = 0.5
#: The most an API call may take to be told the store is away: the store call's 5 s
#: bound, and slack for a loaded machine.
API_LIMIT = 7.0


@contextlib.contextmanager
def partitioned(space_veth: str) -> Iterator[None]:
    """Every packet to and from the namespace behind ``space_veth`` dropped meanwhile."""
    _ip("link", "set", space_veth, "down")
    try:
        yield
    finally:
        _ip("link", "set", space_veth, "up")


def readyz(edge: ServesApi) -> tuple[int, float]:
    started = time.monotonic()
    url = f"http://{edge.host}:{edge.admin_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            status = answer.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, time.monotonic() - started


def admin_key(url: str, data_dir: Path) -> str:
    """An admin API key of the default (operator) account, made in the store at ``url``
    with the pepper of the process whose data directory is ``data_dir``."""
    from relay.control.store import Store
    from relay.control.tokens import load_or_create_pepper

    store = Store.open(url)
    try:
        owner = store.default_account().id
        _, key = store.create_api_key(
            owner, scopes=["admin"], pepper=load_or_create_pepper(data_dir)
        )
        return key
    finally:
        store.close()


class ApiCaller:
    """API calls made one after another on a thread of their own, until stopped: each
    answer and how long it took."""

    def __init__(self, ask: Any) -> None:
        self.ask = ask
        self.answers: list[tuple[int, str | None, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ApiCaller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(API_LIMIT + 5)
        assert not self._thread.is_alive(), "an API call never came back"

    def _run(self) -> None:
        for _ in range(20):  # bounded: each call takes the store's bound, about 5 s
            if self._stop.is_set():
                return
            started = time.monotonic()
            answer: Answer = self.ask()
            self.answers.append((answer.status, answer.code, time.monotonic() - started))


@pytest.fixture
def store_url(network: Network) -> Iterator[tuple[str, str]]:  # noqa: F811
    why = postgres_unavailable()
    if why:
        pytest.skip(why)
    space = network.add("pg")
    postgres = NsPostgres(space, str(network.subnet))
    try:
        postgres.start()
        url = postgres.database().replace("postgresql+psycopg://", "postgresql://")
        yield url, space.veth
    finally:
        postgres.stop()


def test_a_silent_store_never_stalls_live_sessions(
    tmp_path: Path, store_url: tuple[str, str], echo: EchoServer, agents: list[Agent]
) -> None:
    url, veth = store_url
    edge = Edge(tmp_path / "edge", extra=["--store", url]).start()
    try:
        assert edge.proc is not None
        _, token = edge.token("--store", url)
        agent = Agent(edge, token, echo.port)
        agents.append(agent)
        port = agent.wait_bound()
        assert echo_roundtrip(port, b"before") == b"before"
        key = admin_key(url, edge.data_dir)
        assert call(edge, "GET", "/api/v1/accounts", key).status == 200
        with (
            partitioned(veth),
            ApiCaller(lambda: call(edge, "GET", "/api/v1/accounts", key)) as api,
        ):
            # The credential watch asks the store every second, readiness every two, a
            # new agent at once, the API on every call: none of it may hold a visitor of
            # a live session.
            newcomer = Agent(edge, token, echo.port)
            agents.append(newcomer)
            worst, n = 0.0, 0
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                data = payload(n, 20_000)
                started = time.monotonic()
                got = echo_roundtrip(port, data, timeout=30)
                worst = max(worst, time.monotonic() - started)
                assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
                n += 1
                time.sleep(0.05)
            assert n > 50 and worst < STALL_LIMIT, f"a visitor waited {worst:.2f} s ({n} sent)"
        # Every API call was told why, within the bound.
        assert api.answers, "no API call came back during the partition"
        for status, code, took in api.answers:
            assert (status, code) == (503, "RLY_504") and took < API_LIMIT, api.answers
        with partitioned(veth):
            status, took = readyz(edge)
            assert status == 503 and took < 1.0, (status, took)
            # The new agent was told why (within the store call's bound) and retries.
            newcomer.proc.wait_line("RLY_504", timeout=2)
            assert "the store did not answer" in newcomer.proc.text(), newcomer.proc.text()
            assert newcomer.proc.proc.poll() is None
            edge.proc.wait_line("credentials cannot be checked", timeout=2)
        # Back: the live session still serves, the newcomer binds, readiness comes back.
        assert echo_roundtrip(port, b"after") == b"after"
        newcomer.wait_bound(timeout=40)
        deadline = time.monotonic() + 15
        while readyz(edge)[0] != 200:
            assert time.monotonic() < deadline, "the edge never became ready again"
            time.sleep(0.2)
        assert call(edge, "GET", "/api/v1/accounts", key).status == 200
        assert "Traceback" not in edge.proc.text()
    finally:
        edge.stop()


def test_control_plane_process_answers_while_its_store_is_silent(
    tmp_path: Path, store_url: tuple[str, str]
) -> None:
    """`relay control` on the same PostgreSQL, cut off: while API calls wait for the
    store, its loop still answers /healthz and /readyz at once (not ready); each call is
    503 RLY_504 within the bound; after the heal the API answers again."""
    url, veth = store_url
    control = Control(tmp_path / "control", free_port(), store=url).start()
    try:
        key = admin_key(url, control.data_dir)

        def accounts() -> Answer:
            return call(control, "GET", "/api/v1/accounts", key)

        assert accounts().status == 200
        with partitioned(veth), ApiCaller(accounts) as api:
            time.sleep(3)  # the pinger notices; a call is waiting on the store
            for _ in range(5):
                status, took = readyz(control)
                assert status == 503 and took < 1.0, (status, took)
                time.sleep(0.5)
            time.sleep(API_LIMIT - 3)
        assert api.answers, "no API call came back during the partition"
        for status, code, took in api.answers:
            assert (status, code) == (503, "RLY_504") and took < API_LIMIT, api.answers
        deadline = time.monotonic() + 15
        while readyz(control)[0] != 200:
            assert time.monotonic() < deadline, "the control plane never became ready again"
            time.sleep(0.2)
        assert accounts().status == 200
        assert control.proc is not None and "Traceback" not in control.proc.text()
    finally:
        control.stop()


def test_audit_events_made_while_the_store_is_silent_are_written_when_it_is_back(
    store_url: tuple[str, str],
) -> None:
    """The edge's LocalControl on the same PostgreSQL: recording an event during the
    partition returns at once; the event is in the hash-chained log once it heals, after
    the one recorded before, and the chain verifies."""
    from relay.control.for_edge import LocalControl
    from relay.control.store import Store

    url, veth = store_url

    async def scenario() -> None:
        store = Store.open(url)
        control = LocalControl(store, b"p" * 32)
        control.start(asyncio.get_running_loop())
        try:
            control.audit("test", "before.partition", "t1")
            await wait_for(lambda: actions(store) == ["before.partition"], 10)
            with partitioned(veth):
                started = time.monotonic()
                control.audit("test", "during.partition", "t2", {"n": 2})
                assert time.monotonic() - started < 0.01
                with pytest.raises(ControlUnavailable):
                    await control.inactive_tokens({"tok_x"})
                await asyncio.sleep(3)  # the pinger notices
                with pytest.raises(ConnectionError):
                    control.ping()
            await wait_for(lambda: actions(store) == ["before.partition", "during.partition"], 40)
            control.ping()
            assert store.audit.verify() >= 2  # raises on a broken chain
        finally:
            await control.close()

    asyncio.run(scenario())


def actions(store: Any) -> list[str]:
    try:
        return [e.action for e in store.audit.events() if e.actor == "test"]
    except Exception:
        return []


async def wait_for(check: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.2)
