"""What agents and visitors pick cannot grow an edge for good through its certificates
(relay/certs/manager.py), on the default issuer, the edge's local CA.

* A visitor under a wildcard https endpoint picks the name in its ClientHello: each new
  one got a certificate made for it, stored (two files) and held (an SSLContext, about
  28 KB) for good — 309 names a second from one client, measured. Now a name no endpoint
  is bound to gets one made on demand, in memory only, among the 1,024 most recently
  used; every visitor still gets a certificate for its name that the edge's CA signs.
* An agent binding and unbinding https names: each name's certificate stayed on disk and
  in memory after its endpoint went. Now it leaves both with the endpoint.

``relay_certificates_held`` says how many the edge holds; the data directory's
``certs/`` what it stores. Everything on 127.0.0.1; every process stopped by PID.
"""

from __future__ import annotations

import re
import socket
import ssl
import urllib.request

import pytest
from cryptography import x509

from relay.protocol import Bind, Unbind
from tests.e2e.agent_wire import authenticate, control_message, tls_link
from tests.e2e.procs import Agent, Edge
from tests.e2e.test_a_host_rewrite_is_one_host_header_value import replies

pytestmark = pytest.mark.timeout(180)

#: More than the edge keeps made on demand (MAX_ON_DEMAND, 1,024).
VISITOR_NAMES = 1_200


def held(edge: Edge, kind: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{edge.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(rf'^relay_certificates_held\{{held="{kind}"\}} (\S+)$', text, re.M)
    assert found, "relay_certificates_held is not exported"
    return float(found.group(1))


def stored(edge: Edge) -> list[str]:
    return sorted(p.name for p in (edge.data_dir / "certs").glob("*.pem"))


def verified_name(edge: Edge, name: str) -> list[str]:
    """The DNS names of the certificate the edge presents for ``name``, verified against
    the edge's CA and ``name`` (the handshake fails otherwise)."""
    ctx = ssl.create_default_context(cafile=str(edge.ca_file))
    with (
        socket.create_connection(("127.0.0.1", edge.https_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    leaf = x509.load_der_x509_certificate(der)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def test_names_visitors_pick_under_a_wildcard_are_not_stored_and_are_bounded(
    edge: Edge, agents: list[Agent]
) -> None:
    edge.reserve_domain("*.wild.example.com")
    _, token = edge.token("--allow", "*.wild.example.com")
    agent = Agent(edge, token, 9, kind="http", extra=["--domain", "*.wild.example.com"])
    agents.append(agent)
    agent.wait_bound()
    agent.proc.wait_line("Certificate for *.wild.example.com: issued", 20)
    before = stored(edge)
    assert before == ["_.wild.example.com.pem"]
    named = held(edge, "named")

    # One label under the wildcard: its own certificate covers them, nothing is made.
    assert verified_name(edge, "one.wild.example.com") == ["*.wild.example.com"]
    for i in range(VISITOR_NAMES):
        name = f"v{i}.deep.wild.example.com"
        assert verified_name(edge, name) == [name]
    assert stored(edge) == before  # not one file for the visitors' names
    assert held(edge, "on_demand") == 1024  # the most recently used only
    assert held(edge, "named") == named
    # The first names were let go; a visitor sending one again still gets it, made again.
    assert verified_name(edge, "v0.deep.wild.example.com") == ["v0.deep.wild.example.com"]
    assert held(edge, "on_demand") == 1024


def test_an_https_names_certificate_goes_with_its_endpoint(edge: Edge) -> None:
    _, token = edge.token()
    names = 120
    base_files = stored(edge)
    base_held = held(edge, "named")
    with tls_link(("127.0.0.1", edge.listen_port), edge.ca_file) as link:
        authenticate(link, token)
        for first in range(0, names, 40):
            for i in range(first, first + 40):
                bind = Bind(request_id=i + 1, kind="https", subdomain=f"churn{i}")
                link.sendall(control_message(bind))
            seen = replies(link, 40, timeout=30)
            ids = re.findall(rb'"type":"bound","request_id":\d+,"endpoint_id":"([^"]+)"', seen)
            assert len(ids) == 40, seen[-400:]
            # Served with its own certificate while bound.
            name = f"churn{first}.relay.localhost"
            assert verified_name(edge, name) == [name]
            for endpoint_id in ids:
                link.sendall(control_message(Unbind(endpoint_id=endpoint_id.decode())))
        # The last unbinds are read: a bind after them is answered.
        link.sendall(control_message(Bind(request_id=9999, kind="http", subdomain="last")))
        replies(link, 1, timeout=30)
    assert stored(edge) == base_files
    assert held(edge, "named") == base_held
