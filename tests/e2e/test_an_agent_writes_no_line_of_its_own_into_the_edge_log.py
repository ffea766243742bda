"""What an authenticated agent sends reaches the edge's log and audit log only as one
line and bounded. Its version string (logged when it authenticates) and the names of its
refused binds (logged and audited) used to go into the text log as they came: a CR LF
in them wrote lines of the agent's own making, dated and levelled like the edge's. Now
every text log message has its control characters escaped, and a refused bind's name
is cut at 253 characters in the log, the audit entry and the answer (a name of 10,000
NULs once made an answer larger than any control message). A subdomain of blanks alone
is refused too: it used to be stripped to nothing, and bound a random name.
"""

from __future__ import annotations

import pytest

from relay.protocol import Bind
from tests.e2e.agent_wire import authenticate, control_message, tls_link
from tests.e2e.procs import Edge
from tests.e2e.test_a_host_rewrite_is_one_host_header_value import replies

pytestmark = pytest.mark.timeout(60)

FORGED = "2026-01-01 00:00:00,000 ERROR relay.edge: forged"
VERSION = f"h/0\n{FORGED} by version, and then more than 64 characters"


def test_an_agent_s_text_stays_on_its_line_and_within_bounds(edge: Edge) -> None:
    _, token = edge.token()
    with tls_link(("127.0.0.1", edge.listen_port), edge.ca_file) as link:
        authenticate(link, token, version=VERSION)
        binds = [
            Bind(request_id=1, kind="http", domain=f"x\r\n{FORGED} by domain"),
            Bind(request_id=2, kind="http", domain="\x00" * 10_000),
            Bind(request_id=3, kind="k" * 30_000, subdomain="s"),
            Bind(request_id=4, kind="http", subdomain="a\n" * 10_000),
            Bind(request_id=6, kind="http", subdomain="\n" * 20_000),  # no label: no name
            Bind(request_id=7, kind="k" * 30_000 + "\n", host_header="a.example"),
        ]
        for bind in binds:
            link.sendall(control_message(bind))
        answers = replies(link, len(binds))
        assert answers.count(b'"type":"bind_error"') == len(binds), answers[-300:]
        assert len(answers) < 8_000, len(answers)  # each answer bounded
        link.sendall(control_message(Bind(request_id=5, kind="http", subdomain="fine")))
        assert b'"type":"bound"' in replies(link, 1)  # the session went on
    assert edge.proc is not None
    text = edge.proc.text()
    assert not any(line.startswith(FORGED) for line in text.splitlines()), text[-2000:]
    shown = VERSION[:64].replace("\n", "\\n") + "…"  # cut at 64 characters, escaped
    assert len(VERSION) > 64 and shown in text, text[-2000:]
    assert f"x\\r\\n{FORGED} by domain" in text
    assert "Traceback" not in text
    refused = edge.audit_details("bind.refuse")
    assert len(refused) == len(binds), refused
    assert all(len(str(d["target"])) <= 254 and len(str(d["kind"])) <= 6 for d in refused)
    assert all(len(str(d["reason"])) < 1_200 for d in refused), refused
