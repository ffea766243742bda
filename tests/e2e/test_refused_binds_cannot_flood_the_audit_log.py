"""An agent that keeps sending binds the edge refuses cannot flood the audit log (or the
log): past its token's budget (60 at once, then one a second) a refusal is still
answered, but only counted in ``relay_bind_refusals_unaudited_total``, and the first of
them is audited once as ``bind.flood``. Without the budget one session wrote 1,357
audit entries a second (about 2 KB of store each). The session goes on: it binds
afterwards.
"""

from __future__ import annotations

import pytest

from relay.protocol import Bind
from tests.e2e.agent_wire import authenticate, control_message, tls_link
from tests.e2e.procs import Edge
from tests.e2e.test_a_host_rewrite_is_one_host_header_value import replies
from tests.e2e.test_admin_listener import get, sample

pytestmark = pytest.mark.timeout(90)

SENT = 200
BURST = 60


def test_refused_binds_past_the_budget_are_answered_and_counted_not_audited(
    edge: Edge,
) -> None:
    _, token = edge.token()
    with tls_link(("127.0.0.1", edge.listen_port), edge.ca_file) as link:
        authenticate(link, token)
        for i in range(1, SENT + 1):  # each refused: not a host name
            link.sendall(control_message(Bind(request_id=i, kind="http", domain=f"no!{i}")))
        answers = replies(link, SENT, timeout=30)
        assert answers.count(b'"type":"bind_error"') == SENT  # every one answered
        # The session goes on: a bind it may make is made.
        link.sendall(control_message(Bind(request_id=SENT + 1, kind="tcp", remote_port=0)))
        bound = replies(link, 1)
    assert b'"type":"bound"' in bound, bound[-300:]
    audited = len(edge.audit_details("bind.refuse"))
    floods = len(edge.audit_details("bind.flood"))
    _, text = get(edge, "/metrics")
    unaudited = sample(text, "relay_bind_refusals_unaudited_total")
    assert audited + unaudited == SENT
    # 60 at once, and one more for each second the 200 took (well under one here).
    assert BURST <= audited < BURST + 20, audited
    # One flood, and one more only after a refusal refilled meanwhile was audited.
    assert 1 <= floods <= audited - BURST + 1, (floods, audited)
    assert sample(text, "relay_binds_refused_total", code="RLY_201") == SENT
    assert edge.proc is not None
    logged = edge.proc.text().count("refused: error RLY_201")
    assert logged == audited, (logged, audited)  # the unaudited ones are not logged either
