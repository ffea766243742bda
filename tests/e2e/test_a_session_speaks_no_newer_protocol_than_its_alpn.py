"""A session speaks the protocol its ``auth`` names, but never a newer one than its link's
ALPN settled on: a client that offered only ``relay/1`` and says 2 in its ``auth`` gets
what protocol 1 knows (an ``auth_ok`` without ``pop``, which an agent of protocol 1
would refuse as an unknown field). Offering ``relay/2`` and saying 2, it gets the PoP's
name; saying 1 over ``relay/2``, it does not."""

from __future__ import annotations

import socket

import pytest

from tests.e2e.agent_wire import authenticate, tls_link
from tests.e2e.procs import Edge

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("alpn", "said", "told"),
    [
        (("relay/1",), 2, False),  # the ALPN's version wins
        (("relay/2", "relay/1"), 2, True),
        (("relay/2", "relay/1"), 1, False),  # the auth's version wins
    ],
)
def test_the_session_speaks_the_older_of_its_alpn_and_its_auth(
    edge: Edge, alpn: tuple[str, ...], said: int, told: bool
) -> None:
    _, token = edge.token()
    with tls_link(("127.0.0.1", edge.listen_port), edge.ca_file, alpn=alpn) as link:
        reply = authenticate(link, token, protocol=said)
    if told:
        assert b'"pop":"' + f"{socket.gethostname()}/".encode() in reply, reply
    else:
        assert b'"pop"' not in reply, reply
