"""An agent's id (relay/edge/session.py, at authentication): 1 to MAX_AGENT_ID visible
ASCII characters, or the agent is told RLY_301 and its link closes, before its token is
verified. The id goes into every bounded report between an edge's workers, into logs and
/status; it used to be cut to 128 characters of anything."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import pytest

from relay.agent.client import AgentOptions
from relay.edge.account_limits import AccountLimits
from relay.edge.session import MAX_AGENT_ID, AgentSession
from relay.protocol import Auth, AuthError, AuthOk, Message


class Control:
    """The control stream: the agent's Auth, then the agent hangs up."""

    def __init__(self, auth: Auth) -> None:
        self.to_receive: list[Message] = [auth]
        self.sent: list[Message] = []

    async def recv(self) -> Message:
        if not self.to_receive:
            raise EOFError
        return self.to_receive.pop(0)

    def send(self, message: Message) -> None:
        self.sent.append(message)


def authenticate(agent_id: str, protocol: int = 2) -> tuple[AgentSession, list[Message], list[str]]:
    """Run a session's control stream for one Auth: (session, what the agent was sent,
    the tokens the edge verified). The edge's PoP is named ``fra-1``."""
    verified: list[str] = []

    async def verify_token(token: str, peer: str) -> Any:
        verified.append(token)
        return SimpleNamespace(id="abcdefghijkl", account_id="acc_test", account_role="member")

    edge = SimpleNamespace(
        verify_token=verify_token,
        metrics=MagicMock(),
        auth_failed=lambda session: None,
        config=SimpleNamespace(
            region="eu", node_id="fra-1", listen="0.0.0.0:7000", max_endpoints_per_session=64
        ),
        pop_name="fra-1",
        worker=None,
        sessions=set(),
        account_limits=AccountLimits(),
    )
    session = AgentSession(edge)  # type: ignore[arg-type]
    session.link = MagicMock()
    control = Control(Auth(token="rly_x_y", agent_id=agent_id, version="t/0", protocol=protocol))
    session.control = control  # type: ignore[assignment]
    asyncio.run(session._serve_control())
    return session, control.sent, verified


@pytest.mark.parametrize(
    "agent_id",
    [
        "",
        "a" * (MAX_AGENT_ID + 1),
        "a" * 128,  # what the edge used to keep
        "\U0001f600" * 4,  # JSON escapes each to 12 bytes
        "caf\u00e9",
        "a_1\n",
        "a\x00b",
        "a\x7f",
        "a b",
    ],
)
def test_an_agent_id_not_short_visible_ascii_is_refused_with_rly_301(agent_id: str) -> None:
    session, sent, verified = authenticate(agent_id)
    assert not session.authenticated and session.agent_id is None
    assert verified == []  # refused before any lookup
    assert len(sent) == 1 and isinstance(sent[0], AuthError)
    assert sent[0].code == "RLY_301"
    assert f"1 to {MAX_AGENT_ID} visible ASCII characters" in sent[0].message
    session.link.close.assert_called()


@pytest.mark.parametrize(
    "agent_id",
    [
        AgentOptions("edge", 7000, "rly_x_y", ()).agent_id,  # the agent's own default
        "a_1",
        "~" * MAX_AGENT_ID,
        '"\\' * (MAX_AGENT_ID // 2),  # visible, though JSON escapes them
    ],
)
def test_a_short_visible_ascii_agent_id_is_kept_whole(agent_id: str) -> None:
    session, sent, verified = authenticate(agent_id)
    assert session.authenticated and session.agent_id == agent_id
    assert verified == ["rly_x_y"]
    assert isinstance(sent[0], AuthOk)
