"""The store goes away under a live edge, as docs/scaling.md promises ("the control plane
(or PostgreSQL): live sessions keep serving. New agents get RLY_504 and retry.
Revocations cannot be learned until it is back (each PoP says so once)"):

* a transfer in flight through a live TCP endpoint completes across the outage, and new
  visitors to that endpoint are served meanwhile (sha256 end to end);
* an agent that dials in during the outage is refused with RLY_504 within
  ``REFUSED_WITHIN`` and keeps retrying (it does not exit, it does not hang);
* the edge says once that live sessions' credentials cannot be checked;
* when the store is back, a new agent binds within ``BACK_WITHIN``, the agent that was
  refused binds within its backoff's ceiling, the old session still serves, and a
  revocation ends the old session again within 2 s.

Three set-ups, all on a real PostgreSQL (its own server, stopped by its pid and started
again on the same data directory and port): an edge on ``--store postgresql://``; an
edge on a remote `relay control` whose process is stopped; and one whose control plane
stays up while the PostgreSQL behind it is stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relay.agent.backoff import Backoff
from tests import postgres
from tests.e2e.procs import RELAY, Agent, EchoServer, Edge, echo_roundtrip, payload
from tests.e2e.test_edge_with_remote_control_plane import Control
from tests.ports import free_port

#: From an agent's start (a fresh Python process) to the edge's RLY_504 in its output.
REFUSED_WITHIN = 10.0
#: From the store accepting connections again to a new agent's "Forwarding" line (our
#: bound: the docs give none; the agent's first attempt is immediate).
BACK_WITHIN = 10.0
#: An agent refused during the outage waits at most its backoff's ceiling, then dials.
RETRIED_WITHIN = Backoff().maximum + 5.0
#: The edge checks live sessions' credentials once a second (docs: within 2 s).
CREDENTIAL_CHECK = 2.0
SLACK = 1.0

#: The in-flight transfer: half before the outage, the rest during it.
TRANSFER_BYTES = 48 << 20
CANNOT_BE_CHECKED = "live sessions' credentials cannot be checked"
CHECKED_AGAIN = "live sessions' credentials are checked again"


class RestartablePostgres(postgres.PostgresServer):
    """The tests' PostgreSQL (tests/postgres.py), whose server can be stopped by its pid
    and started again on the same data directory and port."""

    def stop_keeping_data(self) -> None:
        self._stop_server()  # SIGINT by pid ("fast shutdown"), SIGKILL past its deadline

    def start_again(self) -> None:
        assert self.proc is not None and self.proc.poll() is not None
        with (self.root / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                self.proc.args,  # the same binary, data directory, port and settings
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._as_user,  # type: ignore[call-overload]
            )
        self._wait_ready()


@pytest.fixture
def own_postgres() -> Iterator[RestartablePostgres]:
    """A PostgreSQL server of this test's own (the session's is shared: not ours to stop)."""
    why = postgres.unavailable()
    if why:
        pytest.skip(why)
    server = RestartablePostgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def relay_cli(*args: str) -> str:
    return subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout


class EchoTransfer:
    """One visitor's upload through an echo endpoint, read back and hashed as it comes:
    ``first`` bytes are sent at once, the rest after :meth:`send_the_rest`."""

    def __init__(self, port: int, data: bytes, first: int) -> None:
        self.data = data
        self.first = first
        self.received = 0
        self.digest = hashlib.sha256()
        self.errors: list[BaseException] = []
        self._go_on = threading.Event()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._sender.start()
        self._reader.start()

    def _send(self) -> None:
        try:
            view = memoryview(self.data)
            self.sock.sendall(view[: self.first])
            if not self._go_on.wait(120):
                raise TimeoutError("never told to send the rest")
            for i in range(self.first, len(view), 1 << 20):
                self.sock.sendall(view[i : i + (1 << 20)])
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # surfaced by finish()
            self.errors.append(exc)

    def _read(self) -> None:
        try:
            # Bounded: the socket's timeout, and no more bytes than were sent.
            while self.received <= len(self.data):
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return
                self.digest.update(chunk)
                self.received += len(chunk)
        except BaseException as exc:  # surfaced by finish()
            self.errors.append(exc)

    def wait_received(self, size: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.received < size and not self.errors:
            assert time.monotonic() < deadline, f"only {self.received} of {size} bytes back"
            time.sleep(0.02)
        assert not self.errors, self.errors

    def send_the_rest(self) -> None:
        self._go_on.set()

    def close(self) -> None:
        """Ends the visitor (its threads end on the closed socket), also on a failure."""
        self._go_on.set()
        self.sock.close()

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        """Bytes read back and their sha256, once the echo half-closed."""
        self._sender.join(timeout)
        self._reader.join(timeout)
        self.close()
        assert not self._sender.is_alive() and not self._reader.is_alive(), "transfer stuck"
        assert not self.errors, self.errors
        return self.received, self.digest.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def visitors_are_served(port: int, count: int, seed: int) -> None:
    for i in range(count):
        data = payload(seed + i, 1 << 20)
        assert sha256(echo_roundtrip(port, data, timeout=30)) == sha256(data)


@dataclass
class StoreSetUp:
    """An edge in front of a store, and how the store goes away and comes back."""

    edge: Edge
    tokens: list[tuple[str, str]]  # (id, token), made before the outage
    go_away: Callable[[], object]
    come_back: Callable[[], object]
    revoke: Callable[[str], None]
    stopped: list[Callable[[], object]] = field(default_factory=list)


def edge_on_postgresql(tmp_path: Path, server: RestartablePostgres) -> StoreSetUp:
    url = server.database().replace("postgresql+psycopg://", "postgresql://")
    edge = Edge(tmp_path / "edge", extra=["--store", url]).start()
    try:
        tokens = [edge.token("--store", url) for _ in range(3)]
    except BaseException:
        edge.stop()
        raise

    def revoke(token_id: str) -> None:
        relay_cli("token", "revoke", "--data-dir", str(edge.data_dir), "--store", url, token_id)

    go_away, come_back = server.stop_keeping_data, server.start_again
    return StoreSetUp(edge, tokens, go_away, come_back, revoke, [edge.stop])


def edge_on_a_control_plane(
    tmp_path: Path, server: RestartablePostgres, *, what_fails: str
) -> StoreSetUp:
    url = server.database().replace("postgresql+psycopg://", "postgresql://")
    control = Control(tmp_path / "control", free_port(), url)
    control.start()
    stopped: list[Callable[[], object]] = [control.stop]
    try:
        bootstrap = relay_cli(
            "api-keys", "bootstrap", "--data-dir", str(control.data_dir), "--store", url, "-o",
            "json",
        )  # fmt: skip
        admin = str(json.loads(bootstrap)["key"])
        edge = control.edge(admin, tmp_path)
        stopped.insert(0, edge.stop)
        tokens = []
        for _ in range(3):
            made = control.api(admin, "POST", "/credentials", {"description": "outage"})
            tokens.append((str(made["id"]), str(made["token"])))
    except BaseException:
        for stop in stopped:
            stop()
        raise

    def revoke(token_id: str) -> None:
        control.api(admin, "DELETE", f"/credentials/{token_id}")

    if what_fails == "control plane":
        return StoreSetUp(edge, tokens, control.stop, control.start, revoke, stopped)
    return StoreSetUp(edge, tokens, server.stop_keeping_data, server.start_again, revoke, stopped)


SET_UPS = ["edge on postgresql", "control plane", "postgresql behind the control plane"]


@pytest.fixture(params=SET_UPS)
def set_up(
    request: pytest.FixtureRequest, tmp_path: Path, own_postgres: RestartablePostgres
) -> Iterator[StoreSetUp]:
    if request.param == "edge on postgresql":
        made = edge_on_postgresql(tmp_path, own_postgres)
    else:
        made = edge_on_a_control_plane(tmp_path, own_postgres, what_fails=request.param)
    try:
        yield made
    finally:
        for stop in made.stopped:
            stop()


def started_agent(edge: Edge, token: str, echo: EchoServer, agents: list[Agent]) -> Agent:
    agent = Agent(edge, token, echo.port)
    agents.append(agent)
    return agent


@pytest.mark.timeout(240)
def test_live_sessions_keep_serving_and_new_agents_get_rly_504_until_the_store_is_back(
    set_up: StoreSetUp, echo: EchoServer, agents: list[Agent]
) -> None:
    edge = set_up.edge
    assert edge.proc is not None
    (live_id, live_token), (_, refused_token), (_, later_token) = set_up.tokens
    live = started_agent(edge, live_token, echo, agents)
    port = live.wait_bound(timeout=30)
    visitors_are_served(port, 1, seed=10)

    # A transfer in flight: half of it through before the store goes away.
    data = payload(7, TRANSFER_BYTES)
    with contextlib.closing(EchoTransfer(port, data, first=TRANSFER_BYTES // 2)) as transfer:
        transfer.wait_received(TRANSFER_BYTES // 4, timeout=60)
        set_up.go_away()
        # The edge finds out (its once-a-second credential check) with the transfer open.
        edge.proc.wait_line(CANNOT_BE_CHECKED, timeout=CREDENTIAL_CHECK + SLACK)
        transfer.send_the_rest()
        assert transfer.finish() == (TRANSFER_BYTES, sha256(data))
    visitors_are_served(port, 4, seed=20)

    # A new agent is refused with RLY_504, in bounded time, and retries.
    dialled = time.monotonic()
    refused = started_agent(edge, refused_token, echo, agents)
    line = refused.proc.wait_line("RLY_504", timeout=REFUSED_WITHIN)
    assert time.monotonic() - dialled < REFUSED_WITHIN
    assert "; reconnecting in " in line, line
    refused.proc.wait_line("RLY_504", timeout=REFUSED_WITHIN)  # its retry: refused again
    assert refused.proc.proc.poll() is None, refused.proc.text()
    assert "Forwarding" not in refused.proc.text()

    # The old session is untouched by all that, and the edge said so once.
    visitors_are_served(port, 2, seed=30)
    assert live.proc.proc.poll() is None, live.proc.text()
    assert edge.proc.text().count(CANNOT_BE_CHECKED) == 1, edge.proc.text()

    # The store comes back: a new agent binds in bounded time, the refused one too.
    set_up.come_back()
    back = time.monotonic()
    later = started_agent(edge, later_token, echo, agents)
    later_port = later.wait_bound(timeout=BACK_WITHIN)
    assert time.monotonic() - back < BACK_WITHIN
    visitors_are_served(later_port, 2, seed=40)
    refused_port = refused.wait_bound(timeout=RETRIED_WITHIN)
    visitors_are_served(refused_port, 1, seed=50)
    visitors_are_served(port, 2, seed=60)
    edge.proc.wait_line(CHECKED_AGAIN, timeout=CREDENTIAL_CHECK + SLACK)

    # Revocations are learned again: the old session ends within 2 s of one.
    set_up.revoke(live_id)
    revoked = time.monotonic()
    assert live.proc.wait(CREDENTIAL_CHECK + 30) == 3, live.proc.text()
    assert time.monotonic() - revoked < CREDENTIAL_CHECK + SLACK
    assert "RLY_102" in live.proc.text(), live.proc.text()
    visitors_are_served(later_port, 1, seed=70)  # the others' sessions go on

    assert edge.proc.proc.poll() is None
    assert "Traceback" not in edge.proc.text(), edge.proc.text()
