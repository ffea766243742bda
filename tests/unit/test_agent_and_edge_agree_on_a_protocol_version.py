"""An agent and an edge agree on a control-protocol version in the TLS handshake (ALPN
``relay/<version>``, relay/protocol.py): each offers every version it speaks, and they
settle on the newest both do. So an agent of protocol 1 and an edge of protocol 2, or the
reverse, still talk (protocol 1), and only a session of protocol 2 is sent what protocol
1 has no word for: an ``EndpointEnded`` for an endpoint a reservation took away, where a
protocol 1 agent gets the ``Notice`` it always got (relay/edge/live_reservations.py).

Real handshakes between the real contexts (relay/tls.py) over memory BIOs.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from relay.edge.live_reservations import _tell
from relay.errors import NameReserved
from relay.protocol import (
    ALPN_PROTOCOLS,
    PROTOCOL_VERSIONS,
    AuthOk,
    EndpointEnded,
    Notice,
    decode_message,
    protocol_of,
)
from relay.tls import client_context
from tests.unit.test_agent_ids_are_short_visible_ascii import authenticate
from tests.unit.test_tls13_suite_preference import edge_contexts, handshake  # noqa: F401


def agreed(server: ssl.SSLContext, client: ssl.SSLContext) -> int | None:
    cli, srv = handshake(server, client, "localhost")
    assert cli.selected_alpn_protocol() == srv.selected_alpn_protocol()
    return protocol_of(cli.selected_alpn_protocol())


def test_this_agent_and_this_edge_speak_the_newest(
    edge_contexts: tuple[ssl.SSLContext, Path],  # noqa: F811
) -> None:
    server, ca_file = edge_contexts
    assert PROTOCOL_VERSIONS == (3, 2, 1)
    assert ALPN_PROTOCOLS == ("relay/3", "relay/2", "relay/1")
    assert agreed(server, client_context(ca_file=ca_file)) == 3


def test_an_agent_of_protocol_2_and_this_edge_speak_2(
    edge_contexts: tuple[ssl.SSLContext, Path],  # noqa: F811
) -> None:
    server, ca_file = edge_contexts
    old_agent = client_context(ca_file=ca_file)
    old_agent.set_alpn_protocols(["relay/2", "relay/1"])  # every agent before protocol 3
    assert agreed(server, old_agent) == 2


def test_an_agent_of_protocol_1_and_this_edge_speak_1(
    edge_contexts: tuple[ssl.SSLContext, Path],  # noqa: F811
) -> None:
    server, ca_file = edge_contexts
    old_agent = client_context(ca_file=ca_file)
    old_agent.set_alpn_protocols(["relay/1"])  # what every agent before protocol 2 offers
    assert agreed(server, old_agent) == 1


def test_this_agent_and_an_edge_of_protocol_1_speak_1(
    edge_contexts: tuple[ssl.SSLContext, Path],  # noqa: F811
) -> None:
    server, ca_file = edge_contexts
    server.set_alpn_protocols(["relay/1"])  # what every edge before protocol 2 offers
    assert agreed(server, client_context(ca_file=ca_file)) == 1


@pytest.mark.parametrize("alpn", [None, "", "h2", "http/1.1", "relay/4", "relay/0", "relay/"])
def test_a_token_that_is_not_one_of_ours_is_no_version(alpn: str | None) -> None:
    assert protocol_of(alpn) is None


def test_endpoint_ended_crosses_the_wire_whole() -> None:
    sent = EndpointEnded("ep_1a2b3c", "RLY_207", "app.example.com is reserved by another account")
    body = sent.to_wire()[4:]  # without its length prefix
    assert decode_message(body) == sent


class Control:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, message: Any) -> None:
        self.sent.append(message)


def told(protocol: int, other_endpoints: bool) -> tuple[list[Any], list[tuple[str, str]]]:
    """What a session of ``protocol`` is sent when one of its endpoints is taken away:
    its control messages, and the Stop it got (code, message), if any."""
    stops: list[tuple[str, str]] = []
    session = SimpleNamespace(
        link=SimpleNamespace(closed=False),
        control=Control(),
        endpoints={"ep_other": object()} if other_endpoints else {},
        protocol=protocol,
        end_reason=None,
        stop=lambda code, message: stops.append((code, message)),
    )
    endpoint = SimpleNamespace(endpoint_id="ep_taken", url="http://app.example.com")
    taken = NameReserved("app.example.com is reserved by another account")
    _tell(session, endpoint, taken)  # type: ignore[arg-type]
    return session.control.sent, stops


def test_a_session_of_protocol_2_is_told_which_endpoint_ended() -> None:
    sent, stops = told(2, other_endpoints=True)
    assert sent == [
        EndpointEnded("ep_taken", "RLY_207", "app.example.com is reserved by another account")
    ]
    assert stops == []


def test_a_session_of_protocol_1_gets_the_notice_it_always_got() -> None:
    sent, stops = told(1, other_endpoints=True)
    assert sent == [
        Notice(
            "error",
            "RLY_207 http://app.example.com is no longer served: app.example.com is "
            "reserved by another account",
        )
    ]
    assert stops == []


@pytest.mark.parametrize("protocol", [1, 2])
def test_a_session_serving_nothing_else_is_stopped_with_the_code(protocol: int) -> None:
    sent, stops = told(protocol, other_endpoints=False)
    assert sent == []
    assert stops == [
        (
            "RLY_207",
            "http://app.example.com is no longer served: app.example.com is reserved by "
            "another account",
        )
    ]


@pytest.mark.parametrize(("protocol", "told"), [(2, "fra-1"), (1, "")])
def test_only_an_agent_of_protocol_2_is_told_its_pop_s_name(protocol: int, told: str) -> None:
    """An agent of protocol 1 refuses unknown fields: its auth_ok has none."""
    session, sent, _ = authenticate("a_1", protocol)
    assert session.authenticated and session.protocol == protocol
    assert isinstance(sent[0], AuthOk) and sent[0].pop == told
    assert (b'"pop"' in sent[0].to_wire()) == (protocol == 2)
