"""A session speaks the protocol its ``auth`` names, but never a newer one than its link's
ALPN settled on: a client that offered only ``relay/1`` and says 2 in its ``auth`` gets
what protocol 1 knows (an ``auth_ok`` without ``pop``, which an agent of protocol 1
would refuse as an unknown field). Offering ``relay/2`` and saying 2, it gets the PoP's
name; saying 1 over ``relay/2``, it does not."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from relay.protocol import Auth
from tests.e2e.agent_wire import control_message, tls_link
from tests.e2e.procs import Edge

pytestmark = pytest.mark.timeout(60)


def auth_ok(link: ssl.SSLSocket, token: str, protocol: int) -> bytes:
    auth = Auth(token=token, agent_id="a_1", version="t/0", protocol=protocol)
    link.sendall(control_message(auth, syn=True))
    seen = b""
    deadline = time.monotonic() + 10
    while b'"auth_ok"' not in seen or not seen.rstrip().endswith(b"}"):
        assert time.monotonic() < deadline, seen
        chunk = link.recv(65536)
        assert chunk, seen
        seen += chunk
    return seen[seen.index(b'{"type":"auth_ok"') :]


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
        reply = auth_ok(link, token, said)
    assert (b'"pop":"' + f"{socket.gethostname()}/".encode() in reply) is told, reply
