"""A source that keeps failing to authenticate on the agent port is refused for a while
(before its TLS handshake where the transport allows it); other sources, and live
tunnels, are not touched; the block is audited and counted, and it ends.

Sources are loopback addresses of their own (127.0.0.2, 127.0.0.3): the edge listens on
127.0.0.1 and Linux lets a client bind any 127/8 address as its source.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.protocol import Auth
from tests.e2e.agent_wire import authenticate, control_message, read_until_closed
from tests.e2e.procs import Agent, EchoServer, Edge, echo_roundtrip, payload
from tests.e2e.test_admin_listener import get, sample

BLOCK_S = 3.0
LIMIT = 3


def link_from(edge: Edge, source: str) -> ssl.SSLSocket:
    """A TLS link to the edge's agent port from ``source``; SSLError or OSError when the
    edge closes the connection before the handshake is done."""
    ctx = ssl.create_default_context(cafile=str(edge.ca_file))
    ctx.set_alpn_protocols(["relay/1"])
    raw = socket.create_connection(
        ("127.0.0.1", edge.listen_port), timeout=10, source_address=(source, 0)
    )
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def wrong_token(edge: Edge, source: str) -> bytes:
    with link_from(edge, source) as link:
        link.sendall(
            control_message(Auth(token="rly_wrong", agent_id="a_guess", version="t/0"), syn=True)
        )
        return read_until_closed(link)


def authenticates(edge: Edge, source: str, token: str) -> bool:
    """True when a link from ``source`` with a valid token gets auth_ok; False when the
    edge closes it first (at its handshake or right after)."""
    try:
        with link_from(edge, source) as link:
            authenticate(link, token, timeout=5)
            return True
    except (ssl.SSLError, ConnectionError, OSError):
        return False


def audit_blocks(edge: Edge) -> list[dict[str, object]]:
    return edge.audit_details("auth.block")


@pytest.fixture(params=["direct", "uvloop"])
def guarded_edge(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Edge]:
    # The two agent-port transports: relay's own TLS listener (refuses before the
    # handshake) and uvloop's (the session refuses right after it).
    monkeypatch.setenv("RELAY_TLS_DIRECT", "1" if request.param == "direct" else "0")
    config = tmp_path / "edge.yml"
    config.write_text(
        f"auth_failure_limit: {LIMIT}\nauth_failure_window: 60\nauth_block_time: {BLOCK_S}\n"
    )
    server = Edge(tmp_path / "edge", extra=["--config", str(config)]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(120)
def test_a_guessing_source_is_refused_then_let_in_again_and_nobody_else_notices(
    guarded_edge: Edge, echo: EchoServer, agents: list[Agent]
) -> None:
    edge = guarded_edge
    _, token = edge.token()
    agent = Agent(edge, token, echo.port)  # a live tunnel, from 127.0.0.1
    agents.append(agent)
    port = agent.wait_bound(timeout=20)

    for attempt in range(LIMIT):
        answer = wrong_token(edge, "127.0.0.2")
        assert b"RLY_101" in answer, (attempt, answer[:200])
    blocked_at = time.monotonic()
    assert edge.proc is not None
    edge.proc.wait_line("agent links from 127.0.0.2 refused for 3s", timeout=5)

    # Even the right token is refused from the guessing source, while the block lasts...
    assert not authenticates(edge, "127.0.0.2", token)
    # ...but not from another source, and the live tunnel carries its bytes.
    assert authenticates(edge, "127.0.0.3", token)
    data = payload(31, 200_000)
    assert echo_roundtrip(port, data) == data

    status, text = get(edge, "/metrics")
    assert status == 200
    assert sample(text, "relay_auth_source_blocks_total") == 1
    assert sample(text, "relay_auth_sources_blocked") == 1
    assert sample(text, "relay_agent_links_refused_total", reason="source_blocked") >= 1
    assert sample(text, "relay_auth_failures_total", reason="invalid_token") == LIMIT
    [block] = audit_blocks(edge)
    assert block == {"source": "127.0.0.2", "failures": LIMIT, "window_s": 60.0, "block_s": 3.0}

    # The block ends: the source may authenticate again.
    time.sleep(max(0.0, blocked_at + BLOCK_S + 0.3 - time.monotonic()))
    assert authenticates(edge, "127.0.0.2", token)
    _, text = get(edge, "/metrics")
    assert sample(text, "relay_auth_sources_blocked") == 0


@pytest.mark.timeout(60)
def test_a_protocol_version_mismatch_does_not_count_against_its_source(
    guarded_edge: Edge,
) -> None:
    edge = guarded_edge
    _, token = edge.token()
    for _ in range(LIMIT + 2):  # an old agent retrying is not guessing tokens
        with link_from(edge, "127.0.0.4") as link:
            link.sendall(
                control_message(
                    Auth(token=token, agent_id="a_old", version="old/0", protocol=0), syn=True
                )
            )
            assert b"RLY_302" in read_until_closed(link)
    assert authenticates(edge, "127.0.0.4", token)
    assert audit_blocks(edge) == []
