"""An agent's Host rewrite (``--host-header``, the Bind's ``host_header``) goes into every
visitor's request head, into a worker's report of the endpoint and into the cluster's
row of the name. The edge takes only a Host header's value: a host[:port] of at most
259 visible ASCII characters, and only for http and https endpoints. Anything else is
refused with RLY_201 naming the rule, and the session goes on: a CR LF that would split
every visitor's head, a space, a character outside ASCII (one outside Latin-1 used to end
the whole session as an internal error, with a traceback), 60 KiB that no worker's report
of the endpoint could carry.
"""

from __future__ import annotations

import time

import pytest

from relay.protocol import Bind
from tests.e2e.agent_wire import authenticate, control_message, tls_link
from tests.e2e.procs import Edge

pytestmark = pytest.mark.timeout(60)

REFUSED = "host_header must be a host[:port] of 1 to 259 visible ASCII characters, without spaces"


def replies(link: object, count: int, timeout: float = 10.0) -> bytes:
    """What the edge sent until ``count`` bind answers (bound or bind_error) arrived."""
    seen = b""
    deadline = time.monotonic() + timeout
    while seen.count(b'"type":"bind_error"') + seen.count(b'"type":"bound"') < count:
        assert time.monotonic() < deadline, seen[-400:]
        chunk = link.recv(65536)  # type: ignore[attr-defined]
        assert chunk, f"the edge closed the link; got {seen[-400:]!r}"
        seen += chunk
    return seen


def test_a_host_rewrite_that_is_no_host_header_value_is_refused_and_the_session_goes_on(
    edge: Edge,
) -> None:
    _, token = edge.token()
    bad = [
        ("http", "upstream.local\r\nX-Injected: 1"),
        ("http", "two words"),
        ("https", "caf\u00e9.local"),
        ("http", "\u2603"),
        ("http", "x" * 60_000),
        ("http", "x" * 260),
    ]
    with tls_link(("127.0.0.1", edge.listen_port), edge.ca_file) as link:
        authenticate(link, token)
        for i, (kind, value) in enumerate(bad, start=1):
            bind = Bind(request_id=i, kind=kind, subdomain=f"bad{i}", host_header=value)
            link.sendall(control_message(bind))
        seen = replies(link, len(bad))
        assert seen.count(b'"type":"bind_error"') == len(bad), seen[-400:]
        assert seen.count(b"RLY_201") == len(bad) and seen.count(REFUSED.encode()) == len(bad)
        tls = Bind(request_id=20, kind="tls", domain="t.relay.localhost", host_header="a")
        link.sendall(control_message(tls))
        assert b"host_header applies to http and https endpoints, not tls" in replies(link, 1)
        tcp = Bind(request_id=22, kind="tcp", host_header="a")
        link.sendall(control_message(tcp))
        assert b"host_header applies to http and https endpoints, not tcp" in replies(link, 1)
        good = Bind(request_id=21, kind="http", subdomain="good", host_header="x" * 253 + ":65535")
        link.sendall(control_message(good))
        assert b'"type":"bound"' in replies(link, 1)
    assert edge.proc is not None
    assert "Traceback" not in edge.proc.text()
