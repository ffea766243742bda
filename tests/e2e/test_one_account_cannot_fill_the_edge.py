"""One member account holds a bounded share of an edge (relay/edge/account_limits.py),
on a real edge with real tokens of two member accounts and the operator's ``default``
one, and raw agents speaking the wire protocol (and the real agent).

The edge runs with ``max_sessions_per_account: 2``, ``max_endpoints_per_account: 5`` and
``max_tcp_ports_per_account: 3``:

* account A's third session is refused after its auth with RLY_505 (its token is good:
  not counted as a failed authentication), an agent of protocol 2 with no code it would
  exit on; account B's session is admitted, and the operator's account is not limited;
  once one of A's sessions ends, A is admitted again;
* the same link of the same agent coming back at the limit ends its old session;
* A's fourth TCP port and sixth endpoint are refused with RLY_206 naming the limit, while
  B binds on; bytes pass through one of A's ports, hash-checked; an unbind gives a place
  back;
* an agent of A at its limit that reconnects takes back every endpoint it held (they were
  kept for it, so they count once);
* a reload lowers a limit for what comes next, and turning it off (0) admits again;
* the real agent, refused RLY_505, says so, retries, and serves once there is room.

Everything on 127.0.0.1; the edge is stopped by PID.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.control.store import Store
from relay.control.tokens import load_or_create_pepper
from relay.protocol import Auth, Bind, Unbind
from tests.e2e.agent_wire import authenticate, control_message, read_until_closed, tls_link
from tests.e2e.procs import Agent, EchoServer, Edge, echoed_whole
from tests.e2e.test_a_host_rewrite_is_one_host_header_value import replies

pytestmark = pytest.mark.timeout(120)

LIMITS = "max_sessions_per_account: 2\nmax_endpoints_per_account: 5\nmax_tcp_ports_per_account: 3\n"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(LIMITS + "reclaim_grace: 30\n")
    return path


@pytest.fixture
def edge(tmp_path: Path, config: Path) -> Iterator[Edge]:
    server = Edge(tmp_path / "edge", extra=["--config", str(config)]).start()
    try:
        yield server
    finally:
        server.stop()


def account_token(edge: Edge, name: str) -> str:
    """A token of a new account ``name``, made in the edge's own store."""
    store = Store.open(f"sqlite:///{edge.data_dir / 'relay.db'}")
    try:
        account = store.create_account(name, actor="test")
        _, token = store.create_token(
            pepper=load_or_create_pepper(edge.data_dir), account_id=account.id, actor="test"
        )
        return token
    finally:
        store.close()


def session(edge: Edge, token: str, agent_id: str) -> ssl.SSLSocket:
    """An admitted raw session of agent ``agent_id`` (link 0), speaking protocol 3."""
    link = tls_link(("127.0.0.1", edge.listen_port), edge.ca_file, alpn=("relay/3",))
    try:
        authenticate(link, token, agent_id=agent_id)
    except BaseException:
        link.close()
        raise
    return link


def refused(edge: Edge, token: str, agent_id: str, alpn: tuple[str, ...] = ("relay/3",)) -> bytes:
    """Every byte the edge sends a session it refuses after its auth, until it closes the
    link (a session admitted instead fails the test)."""
    with tls_link(("127.0.0.1", edge.listen_port), edge.ca_file, alpn=alpn) as link:
        auth = Auth(token=token, agent_id=agent_id, version="hostile/0")
        link.sendall(control_message(auth, syn=True))
        said = read_until_closed(link, timeout=10)
    assert b'"auth_ok"' not in said, said
    return said


def auth_failures(edge: Edge) -> float:
    """relay_auth_failures_total, every reason."""
    with urllib.request.urlopen(f"http://127.0.0.1:{edge.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(v) for v in re.findall(r"^relay_auth_failures_total\{[^}]*\} (\S+)$", text, re.M)
    )


def bind(link: ssl.SSLSocket, request_id: int, kind: str, **fields: object) -> bytes:
    link.sendall(control_message(Bind(request_id=request_id, kind=kind, **fields)))  # type: ignore[arg-type]
    return replies(link, 1, timeout=30)


def metric(edge: Edge, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{edge.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def reload(edge: Edge, config: Path, text: str) -> None:
    config.write_text(text)
    assert edge.proc is not None
    os.kill(edge.proc.pid, signal.SIGHUP)
    info = edge.proc.wait_line("INFO relay.edge: reloaded", timeout=10)
    assert "max_sessions_per_account" in info, info


def test_a_third_session_of_a_member_account_is_refused_while_others_are_admitted(
    edge: Edge,
) -> None:
    token_a, token_b = account_token(edge, "team-a"), account_token(edge, "team-b")
    _, operator = edge.token()  # the default account's: an operator's, not limited
    first, second = session(edge, token_a, "a_one"), session(edge, token_a, "a_two")
    try:
        said = refused(edge, token_a, "a_three")
        assert b'"code":"RLY_505"' in said and b"max_sessions_per_account" in said, said
        # An agent of protocol 2 would exit on a code it does not know: its link is
        # closed without one, and it reconnects as when the edge is full.
        older = refused(edge, token_a, "a_old", alpn=("relay/2", "relay/1"))
        assert b"RLY_505" not in older and b"auth_error" not in older, older
        # Another member account is not kept out, nor is the operator's, past 2.
        session(edge, token_b, "b_one").close()
        operators = [session(edge, operator, f"op_{i}") for i in range(3)]
        for link in operators:
            link.close()
    finally:
        first.close()
    # One of A's sessions ended: A is admitted again once the edge has read the close.
    deadline = time.monotonic() + 10
    while True:
        try:
            session(edge, token_a, "a_three").close()
            break
        except (ConnectionError, TimeoutError):
            assert time.monotonic() < deadline, "A was not admitted again after a session ended"
            time.sleep(0.05)
    second.close()
    assert metric(edge, 'relay_agent_links_refused_total{reason="account_full"}') >= 2
    # A good token refused for its account's sake is no failed authentication.
    assert auth_failures(edge) == 0
    # Said once a minute per account, not once per refusal.
    assert edge.proc is not None
    said = [
        line for line in edge.proc.text().splitlines() if "WARNING" in line and "RLY_505" in line
    ]
    assert len(said) == 1, said


def test_the_same_link_coming_back_at_the_limit_ends_its_old_session(edge: Edge) -> None:
    """A path that broke silently: the edge still holds the agent's old session when the
    agent comes back on the same link. At the limit it is not refused; its old session
    ends for it, and the account is still at its limit."""
    token_a = account_token(edge, "team-a")
    first, old = session(edge, token_a, "a_one"), session(edge, token_a, "a_two")
    try:
        new = session(edge, token_a, "a_two")
        try:
            started = time.monotonic()
            read_until_closed(old, timeout=10)  # the edge ends it (a timeout fails here)
            assert time.monotonic() - started < 10
            said = refused(edge, token_a, "a_three")
            assert b'"code":"RLY_505"' in said, said
        finally:
            new.close()
        # The old session was counted out: with one of the two live ones gone, exactly
        # one more is admitted, and the next refused.
        deadline = time.monotonic() + 10
        while True:
            try:
                third = session(edge, token_a, "a_three")
                break
            except (ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, "no room after the new session ended"
                time.sleep(0.05)
        try:
            said = refused(edge, token_a, "a_four")
            assert b'"code":"RLY_505"' in said, said
        finally:
            third.close()
    finally:
        first.close()
        old.close()
    assert metric(edge, 'relay_agent_sessions_closed_total{reason="superseded"}') == 1


def test_endpoints_and_tcp_ports_of_one_account_are_bounded_and_given_back(
    edge: Edge,
) -> None:
    token_a, token_b = account_token(edge, "team-a"), account_token(edge, "team-b")
    with session(edge, token_a, "a_one") as a:
        ports = []
        for i in range(3):
            answer = bind(a, i + 1, "tcp", remote_port=0, upstream="127.0.0.1:9")
            assert b'"type":"bound"' in answer, answer
            ports.append(answer)
        fourth = bind(a, 4, "tcp", remote_port=0, upstream="127.0.0.1:9")
        assert b'"code":"RLY_206"' in fourth and b"max_tcp_ports_per_account" in fourth, fourth
        for i in range(2):
            answer = bind(a, 10 + i, "http", subdomain=f"a{i}")
            assert b'"type":"bound"' in answer, answer
        sixth = bind(a, 12, "http", subdomain="a-sixth")
        assert b'"code":"RLY_206"' in sixth and b"max_endpoints_per_account" in sixth, sixth
        # The other account binds on.
        with session(edge, token_b, "b_one") as b:
            assert b'"type":"bound"' in bind(b, 1, "tcp", remote_port=0, upstream="127.0.0.1:9")
            assert b'"type":"bound"' in bind(b, 2, "http", subdomain="b0")
        # An unbind gives its place back: the sixth endpoint binds now.
        endpoint_id = re.search(rb'"endpoint_id":"(ep_\w+)"', ports[0])
        assert endpoint_id is not None, ports[0]
        a.sendall(control_message(Unbind(endpoint_id=endpoint_id.group(1).decode())))
        assert b'"type":"bound"' in bind(a, 13, "http", subdomain="a-sixth")
    assert metric(edge, 'relay_binds_refused_total{code="RLY_206"}') == 2


def test_an_agent_at_its_limit_that_reconnects_takes_back_every_endpoint(
    edge: Edge, echo: EchoServer
) -> None:
    """Its endpoints were kept for it (reclaim_grace): binding them again takes them back,
    so they count once, and the account's limit does not refuse its own endpoints."""
    token_a = account_token(edge, "team-a")
    upstream = echo.port
    first = Agent(edge, token_a, upstream, kind="tcp")
    try:
        first.wait_bound()
        port = int(first.url.rpartition(":")[2])
        # Fill the account up to its TCP limit beside the agent with a raw session.
        with session(edge, token_a, "a_raw") as raw:
            for i in range(2):
                assert b'"type":"bound"' in bind(raw, i + 1, "tcp", remote_port=0, upstream="x:9")
            full = bind(raw, 3, "tcp", remote_port=0, upstream="x:9")
            assert b'"code":"RLY_206"' in full, full
            # The agent vanishes without a goodbye (its endpoint is kept for it), and an
            # agent of the same token comes back for the same port.
            first.proc.kill()
            second = Agent(edge, token_a, upstream, kind="tcp", remote_port=port)
            try:
                second.wait_bound()
                assert second.url == first.url
                assert echoed_whole("127.0.0.1", port, hashlib.sha256(b"back").digest() * 4096)
                # Taken back, not made anew: the account still holds exactly its 3 ports.
                again = bind(raw, 4, "tcp", remote_port=0, upstream="x:9")
                assert b'"code":"RLY_206"' in again, again
            finally:
                second.stop()
    finally:
        first.stop()


def test_a_reload_changes_the_limits_for_what_comes_next(edge: Edge, config: Path) -> None:
    token_a = account_token(edge, "team-a")
    with session(edge, token_a, "a_one"):
        reload(edge, config, LIMITS.replace("sessions_per_account: 2", "sessions_per_account: 1"))
        said = refused(edge, token_a, "a_two")
        assert b'"code":"RLY_505"' in said, said
        reload(edge, config, LIMITS.replace("sessions_per_account: 2", "sessions_per_account: 0"))
        for i in range(3):
            session(edge, token_a, f"a_more_{i}").close()


def test_a_refused_agent_says_why_retries_and_is_served_once_there_is_room(
    edge: Edge, echo: EchoServer
) -> None:
    """The real agent, refused RLY_505, says so and reconnects with backoff (its token is
    good: it does not exit); once one of its account's sessions ends it is admitted, and
    bytes pass, hash-checked."""
    token_a = account_token(edge, "team-a")
    with session(edge, token_a, "a_one"):
        second = session(edge, token_a, "a_two")
        try:
            agent = Agent(edge, token_a, echo.port, kind="tcp")
            try:
                line = agent.proc.wait_line("RLY_505", timeout=30)
                assert "max_sessions_per_account" in line and "reconnecting in" in line, line
                assert agent.proc.proc.poll() is None  # retrying, not gone
                second.close()  # room for one
                port = agent.wait_bound(timeout=60)
                assert echoed_whole("127.0.0.1", port, hashlib.sha256(b"room").digest() * 8192)
            finally:
                agent.stop()
        finally:
            second.close()
