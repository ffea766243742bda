"""Who serves an endpoint's visitors: its members.

An endpoint has one member — the agent session that bound it — unless several sessions
bound the same name or port and may share it:

* the links of one agent (``relay http --links K``: the same agent id, link 0..K-1), so
  one agent's visitors spread over K connections (and, with ``--workers``, K cores);
* agents of one token that all bound it with ``pool`` (endpoint pooling).

Visitors go round robin to the members whose session takes visitors, skipping those
whose link is saturated (its transport's buffer is full) while another is not. A member
that leaves (unbinds, drains, loses its link) gets no new visitor from that moment; its
streams finish. The endpoint is orphaned only when its last member is gone.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from relay.cluster.channel import MAX_MESSAGE, encode
from relay.control.tokens import ID_LENGTH
from relay.edge.registry import Holder
from relay.edge.routes import MAX_HOSTNAME
from relay.edge.session import MAX_AGENT_ID, MAX_AGENT_LINKS
from relay.errors import BindError, EndpointAlreadyBound
from relay.protocol import MAX_HOST_HEADER


def _most_members_per_key() -> int:
    """How many members of one key a worker's ``state`` report (relay/edge/worker.py) may
    name and still be one channel message, whoever they are: the longest key and token
    id, and members with the longest agent id JSON escapes most (every character a quote,
    two bytes each), on the highest link, not pooled. A member more would make the report
    unsendable, so the supervisor would never hear of the key again."""
    bare = {
        "op": "state",
        "key": "http:" + "x" * MAX_HOSTNAME,
        "token": "t" * ID_LENGTH,
        "members": [],
        "live": False,
        "taking": False,
        "rewrite": '"' * MAX_HOST_HEADER,  # visible ASCII: a quote JSON escapes most
        "kind": "https",
    }
    worst = ['"' * MAX_AGENT_ID, MAX_AGENT_LINKS - 1, False]
    each = len(json.dumps(worst, separators=(",", ":"))) + len(",")
    return (MAX_MESSAGE - len(encode(bare))) // each


#: Members (links of one agent, pooled agents) one endpoint may have on one edge process,
#: with workers or without: what a worker's report of the key can name, and a bound on
#: the walks over the members each visitor and each leave make (at 10,000 members one
#: visitor cost 1.2 ms of the loop).
MAX_MEMBERS_PER_KEY = _most_members_per_key()


class Pooled(Protocol):
    """What an endpoint (TcpEndpoint, HostEndpoint) has for this module."""

    @property
    def key(self) -> str: ...

    holder: Holder
    members: list[Holder]
    turn: int


def admit(endpoint: Pooled, newcomer: Holder) -> Holder | None:
    """Where ``newcomer`` goes among ``endpoint``'s members: it joins them (None), or
    replaces the member it returns (the same link of the same agent: a reconnect the
    edge had not noticed), or — when no member is live — takes the endpoint over (it
    returns the old primary). Raises EndpointAlreadyBound when it may not share it."""
    live = [m for m in endpoint.members if m.session is not None]
    if newcomer.token_id != endpoint.holder.token_id:
        raise EndpointAlreadyBound(f"{endpoint.key} is bound by another token")
    for member in endpoint.members:
        if member.agent_id == newcomer.agent_id and member.link == newcomer.link:
            return member
    if not live:
        return endpoint.holder
    same_agent = all(m.agent_id == newcomer.agent_id for m in live)
    pool = newcomer.pooled and all(m.pooled for m in live)
    if same_agent or pool:
        return None
    raise EndpointAlreadyBound(f"{endpoint.key} is bound by another agent session")


def check_room(endpoint: Pooled) -> None:
    """BindError (RLY_201) when ``endpoint`` already has MAX_MEMBERS_PER_KEY members:
    asked before a session joins it as one more member."""
    if len(endpoint.members) >= MAX_MEMBERS_PER_KEY:
        raise BindError(
            f"{endpoint.key} has {len(endpoint.members)} members (links and pooled agents), "
            "the most one endpoint may have on one edge process"
        )


def add(endpoint: Pooled, newcomer: Holder, replaced: Holder | None) -> None:
    """Apply :func:`admit`'s answer."""
    if replaced is None:
        endpoint.members.append(newcomer)
        return
    live_others = [m for m in endpoint.members if m is not replaced and m.session is not None]
    if replaced is endpoint.holder and not live_others:
        endpoint.members = [newcomer]  # taken over: the orphaned members go
    else:
        endpoint.members = [newcomer if m is replaced else m for m in endpoint.members]
    endpoint.members.sort(key=lambda m: m.session is None)  # a live primary, if any
    endpoint.holder = endpoint.members[0]


def leave(endpoint: Pooled, session: Any) -> bool:
    """``session`` serves ``endpoint`` no more. True when other members still do (the
    endpoint stays live); False when it was the last (orphan or remove it)."""
    remaining = [m for m in endpoint.members if m.session is not session]
    if not remaining or all(m.session is None for m in remaining):
        for member in endpoint.members:
            if member.session is session:
                member.session = None
        endpoint.holder = endpoint.members[0]
        return False
    endpoint.members = remaining
    endpoint.holder = remaining[0]
    return True


def serving_session(endpoint: Pooled) -> Any | None:
    """The session the next visitor goes to, or None when no member takes visitors."""
    members = endpoint.members
    if len(members) == 1:
        session = members[0].session
        return session if session is not None and session.accepting_visitors else None
    fallback = None
    for _ in range(len(members)):
        endpoint.turn = (endpoint.turn + 1) % len(members)
        session = members[endpoint.turn].session
        if session is None or not session.accepting_visitors:
            continue
        if not session.link.write_paused:
            return session
        fallback = fallback or session  # saturated: only if every member is
    return fallback


def is_live(endpoint: Pooled | None) -> bool:
    return endpoint is not None and any(m.session is not None for m in endpoint.members)


def takes_visitors(endpoint: Pooled | None) -> bool:
    """A member takes visitors now (one whose session drains does not)."""
    return endpoint is not None and any(
        m.session is not None and m.session.accepting_visitors for m in endpoint.members
    )


class _Named(Protocol):
    @property
    def hostname(self) -> str: ...


def hands_over(local: Any | None, remote: _Named) -> bool:
    """Whether a visitor goes to the worker holding ``remote`` rather than to ``local``,
    this worker's endpoint for its name (None: none matched): the more specific name
    wins, as on one edge — an exact name before any wildcard, a longer wildcard before a
    shorter one. The same name goes over only when no member here takes visitors."""
    if local is None:
        return True
    if local.hostname == remote.hostname:
        return not takes_visitors(local)
    return _specificity(remote.hostname) > _specificity(local.hostname)


def better_match(first: _Named | None, second: _Named | None) -> _Named | None:
    """Of two holders of a name found in two places, the more specific name; ``first``
    when they are as specific (the caller puts the cheaper place first)."""
    if first is None or second is None:
        return first if second is None else second
    return second if _specificity(second.hostname) > _specificity(first.hostname) else first


def _specificity(hostname: str) -> tuple[bool, int]:
    return (not hostname.startswith("*."), len(hostname))
