"""A worker's ``state`` report of a key names every member (relay/edge/worker.py) and is
one channel message (relay/cluster/channel.py MAX_MESSAGE). A key may have at most
MAX_MEMBERS_PER_KEY members (relay/edge/members.py, on any edge), so the report of the
worst members fits; a session joining a key that has them all is refused with a BindError;
and a report that still would not fit is logged, never raised into the cleanup that sent it."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.cluster import supervisor
from relay.cluster.channel import MAX_MESSAGE, Channel, ChannelError, Message, decode, encode
from relay.control.tokens import ID_LENGTH
from relay.edge import members
from relay.edge.members import MAX_MEMBERS_PER_KEY
from relay.edge.registry import Holder
from relay.edge.routes import MAX_HOSTNAME
from relay.edge.session import AGENT_ID_RE, MAX_AGENT_ID, MAX_AGENT_LINKS
from relay.edge.worker import EdgeWorker
from relay.errors import BindError
from relay.protocol import MAX_HOST_HEADER

LONGEST_KEY = "http:" + "x" * MAX_HOSTNAME
TOKEN = "t" * ID_LENGTH
#: The id JSON makes longest: every character a quote (escaped to two bytes).
WORST_ID = '"' * MAX_AGENT_ID
#: The Host rewrite JSON makes longest (relay/edge/server.py ``_check_host_header``).
WORST_REWRITE = '"' * MAX_HOST_HEADER


def holders(count: int, agent_id: str = WORST_ID) -> list[Holder]:
    return [Holder(TOKEN, agent_id, None, MAX_AGENT_LINKS - 1, False) for _ in range(count)]


@dataclass
class Endpoint:
    key: str
    members: list[Holder]
    holder: Holder = field(init=False)
    turn: int = 0

    def __post_init__(self) -> None:
        self.holder = self.members[0]


class Wired:
    """A worker whose channel reaches a socket read here, as the supervisor's end."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.supervisor_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        place = SimpleNamespace(index=1, count=2, channel_fd=-1, run_dir=None)
        self.worker = EdgeWorker(SimpleNamespace(), place)  # type: ignore[arg-type]
        self.worker.channel = Channel(worker_end, self.loop, lambda _: None, lambda: None)

    def received(self) -> list[Message]:
        self.supervisor_end.setblocking(False)
        messages = []
        while True:
            try:
                messages.append(decode(self.supervisor_end.recv(MAX_MESSAGE + 1)))
            except BlockingIOError:
                return messages

    def close(self) -> None:
        assert self.worker.channel is not None
        self.worker.channel.close()
        self.supervisor_end.close()
        self.loop.close()


@pytest.fixture
def wired() -> Iterator[Wired]:
    w = Wired()
    yield w
    w.close()


def state(members: list[Holder]) -> Message:
    return {
        "op": "state",
        "key": LONGEST_KEY,
        "token": TOKEN,
        "members": [[m.agent_id, m.link, m.pooled] for m in members],
        "live": False,
        "taking": False,
        "rewrite": WORST_REWRITE,
        "kind": "https",
    }


def test_the_report_of_the_most_and_worst_members_reaches_the_supervisor(wired: Wired) -> None:
    wired.worker.report(
        LONGEST_KEY, TOKEN, holders(MAX_MEMBERS_PER_KEY), False, False, WORST_REWRITE, "https"
    )
    [message] = wired.received()
    assert (message["rewrite"], message["kind"]) == (WORST_REWRITE, "https")
    assert message["key"] == LONGEST_KEY
    assert message["members"] == [[WORST_ID, MAX_AGENT_LINKS - 1, False]] * MAX_MEMBERS_PER_KEY


def test_the_limit_is_the_most_the_message_holds() -> None:
    # Derived, not picked: one worst member more would not be one message.
    assert len(encode(state(holders(MAX_MEMBERS_PER_KEY)))) <= MAX_MESSAGE
    with pytest.raises(ChannelError):
        encode(state(holders(MAX_MEMBERS_PER_KEY + 1)))
    # And the supervisor never cuts a report short.
    assert MAX_MEMBERS_PER_KEY <= supervisor.MAX_MEMBERS_PER_KEY


@given(st.from_regex(AGENT_ID_RE, fullmatch=True))
def test_no_agent_id_the_edge_accepts_is_longer_in_json_than_the_worst(agent_id: str) -> None:
    assert len(json.dumps(agent_id)) <= len(json.dumps(WORST_ID))


def test_a_member_more_than_the_limit_is_refused_with_a_bind_error() -> None:
    endpoint = Endpoint("http:app.relay.localhost", holders(MAX_MEMBERS_PER_KEY - 1, "a_1"))
    members.check_room(endpoint)  # room for one more
    endpoint.members.append(Holder(TOKEN, "a_2", None))
    with pytest.raises(BindError) as refused:
        members.check_room(endpoint)
    assert refused.value.code == "RLY_201"
    assert str(refused.value) == (
        f"http:app.relay.localhost has {MAX_MEMBERS_PER_KEY} members (links and pooled "
        "agents), the most one endpoint may have on one edge process"
    )


def test_a_report_too_large_is_logged_and_never_raised(
    wired: Wired, caplog: pytest.LogCaptureFixture
) -> None:
    # What the edge let in before agent ids were checked: 43 members of 128 emoji each
    # made a report of 66,650 bytes.
    emoji = "\U0001f600" * 128
    too_many = [Holder(TOKEN, emoji, None, 0, True) for _ in range(43)]
    with caplog.at_level(logging.ERROR, logger="relay.edge.worker"):
        wired.worker.report("http:app.relay.localhost", TOKEN, too_many, True)
    assert "the state of http:app.relay.localhost (43 members) was not reported" in caplog.text
    # The channel goes on: the next report (the session's cleanup goes on) is sent.
    wired.worker.report("http:app.relay.localhost", "", [], False)
    [message] = wired.received()
    assert message["members"] == [] and message["live"] is False
