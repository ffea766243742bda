"""A session that binds as fast as it can is paced; the others are not
(relay/edge/control_pace.py).

A raw agent (the tests' wire client, a valid token) sends 200 binds at once on one
session: all are answered, in order, none lost (64 bound, the session's limit, the rest
refused for it); the first 128 at once, the rest at 20 a
second, so the last answer comes no sooner than (200 - 128) / 20 s after the flood was
sent. Meanwhile another session's bind is answered before the flood's last one, and
``relay_control_messages_paced_total`` counts those that waited (at most 72: the pace
refills while the edge acts on the first). Everything on
127.0.0.1; the edge is stopped by PID.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from relay.edge.control_pace import ACCOUNT_PER_SECOND, BURST, PER_SECOND
from relay.protocol import Bind
from tests.e2e.agent_wire import authenticate, control_message, tls_link
from tests.e2e.procs import Edge
from tests.e2e.test_a_host_rewrite_is_one_host_header_value import replies
from tests.e2e.test_one_account_cannot_fill_the_edge import account_token

pytestmark = pytest.mark.timeout(120)

FLOOD = 200
#: Sessions of one account flooding together (each within its own burst).
SESSIONS = 3


def paced_total(edge: Edge) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{edge.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(r"^relay_control_messages_paced_total (\S+)$", text, re.M)
    assert found, "relay_control_messages_paced_total is not exported"
    return float(found.group(1))


def test_a_flood_of_binds_is_paced_and_loses_nothing_while_others_bind(edge: Edge) -> None:
    _, token = edge.token()
    answered_at: dict[str, float] = {}
    with tls_link(("127.0.0.1", edge.listen_port), edge.ca_file) as flood:
        authenticate(flood, token)
        flood.sendall(
            b"".join(
                control_message(Bind(request_id=i + 1, kind="http", subdomain=f"f{i}"))
                for i in range(FLOOD)
            )
        )
        sent = time.monotonic()
        seen: list[bytes] = []

        def read_flood() -> None:
            seen.append(replies(flood, FLOOD, timeout=60))
            answered_at["flood"] = time.monotonic()

        reader = threading.Thread(target=read_flood, daemon=True)
        reader.start()
        with tls_link(("127.0.0.1", edge.listen_port), edge.ca_file) as other:
            authenticate(other, token)
            other.sendall(control_message(Bind(request_id=1, kind="http", subdomain="calm")))
            answer = replies(other, 1, timeout=30)
            answered_at["other"] = time.monotonic()
            assert b'"type":"bound"' in answer, answer
        reader.join(60)
        assert not reader.is_alive()

    answers = re.findall(rb'"type":"(bound|bind_error)","request_id":(\d+)', seen[0])
    assert [int(i) for _, i in answers] == list(range(1, FLOOD + 1))  # all, in order
    # As many bound as a session may hold (max_endpoints_per_session), then refused.
    assert [kind for kind, _ in answers] == [b"bound"] * 64 + [b"bind_error"] * (FLOOD - 64)
    assert answered_at["flood"] - sent >= (FLOOD - BURST) / PER_SECOND - 0.1
    assert answered_at["other"] < answered_at["flood"]  # not slowed by the other session
    # Those past the burst waited, less what the pace refilled while the edge acted on
    # the first ones (a few, on a fast machine).
    assert 0 < paced_total(edge) <= FLOOD - BURST


class Floods:
    """``sessions`` sessions of ``token`` each sending ``per`` binds at once, read by a
    thread each: every session's answers and when its last came."""

    def __init__(self, edge: Edge, token: str, sessions: int, per: int, tag: str) -> None:
        self.per = per
        self.links = [
            tls_link(("127.0.0.1", edge.listen_port), edge.ca_file) for _ in range(sessions)
        ]
        self.seen: list[bytes] = [b""] * sessions
        self.done: list[float] = [0.0] * sessions
        for n, link in enumerate(self.links):
            authenticate(link, token, agent_id=f"{tag}_{n}")
        self.sent = time.monotonic()
        for n, link in enumerate(self.links):
            link.sendall(
                b"".join(
                    control_message(Bind(request_id=i + 1, kind="http", subdomain=f"{tag}{n}x{i}"))
                    for i in range(per)
                )
            )
        self.readers = [
            threading.Thread(target=self._read, args=(n,), daemon=True) for n in range(sessions)
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, n: int) -> None:
        self.seen[n] = replies(self.links[n], self.per, timeout=60)
        self.done[n] = time.monotonic()

    def join(self) -> None:
        try:
            for reader in self.readers:
                reader.join(60)
                assert not reader.is_alive()
        finally:
            for link in self.links:
                link.close()
        for seen in self.seen:
            answers = re.findall(rb'"type":"(?:bound|bind_error)","request_id":(\d+)', seen)
            assert [int(i) for i in answers] == list(range(1, self.per + 1))  # all, in order

    def bound(self) -> int:
        return sum(s.count(b'"type":"bound"') for s in self.seen)


def test_many_sessions_of_one_account_share_its_pace(tmp_path: Path) -> None:
    """Three sessions of one member account each send 100 binds at once, each within its
    own session's burst (128) but 300 together, past the account's (twice
    ``max_endpoints_per_account``, here 50, but never below 128): all are answered, in
    order, the last no sooner than (300 - 128) / ACCOUNT_PER_SECOND after the floods, and
    waits are counted; another account's bind meanwhile is answered at once. An
    operator's account (``default``) has no such pace, nor limit: its three sessions' 180
    binds are all bound, none waits."""
    config = tmp_path / "edge.yaml"
    config.write_text("max_endpoints_per_account: 50\n")
    edge = Edge(tmp_path / "edge", extra=["--config", str(config)]).start()
    try:
        _, operator = edge.token()
        # 180 in all: past the account burst (128) a member would wait; each session
        # within its own burst and its 64 endpoints.
        floods = Floods(edge, operator, 3, 60, "op")
        floods.join()
        assert floods.bound() == 180 and paced_total(edge) == 0
        floods = Floods(edge, account_token(edge, "team-a"), SESSIONS, 100, "a")
        with tls_link(("127.0.0.1", edge.listen_port), edge.ca_file) as other:
            authenticate(other, account_token(edge, "team-b"))
            other.sendall(control_message(Bind(request_id=1, kind="http", subdomain="calm")))
            assert b'"type":"bound"' in replies(other, 1, timeout=30)
            other_done = time.monotonic()
        floods.join()
        # 50 bound in all (the account's endpoints), the rest refused for it.
        assert floods.bound() == 50
        assert (
            max(floods.done) - floods.sent >= (SESSIONS * 100 - BURST) / ACCOUNT_PER_SECOND - 0.05
        )
        assert other_done < max(floods.done)
        assert paced_total(edge) >= 1
    finally:
        edge.stop()
