"""Which agent session holds which endpoint.

Behind an interface from the start: in memory for one process today; Redis presence when
several edge processes or PoPs share endpoints (DESIGN.md, Regions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from relay.errors import EndpointAlreadyBound


@dataclass
class Holder:
    """An endpoint's owner: the token that bound it and the agent process instance."""

    token_id: str
    agent_id: str
    session: Any | None  # the live AgentSession, None while orphaned
    #: Which of the agent's links (``--links``) and whether it bound with ``pool``.
    link: int = 0
    pooled: bool = False


class EndpointRegistry(Protocol):
    def claim(self, key: str, holder: Holder) -> Holder | None:
        """Give ``key`` to ``holder``; return the previous holder when it was taken over
        (same token: a reconnecting agent), raise EndpointAlreadyBound otherwise."""

    def promote(self, key: str, holder: Holder) -> None:
        """``holder``, already a member of ``key``'s endpoint (relay/edge/members.py),
        is its primary now."""

    def release(self, key: str, holder: Holder) -> bool:
        """Drop ``key`` if ``holder`` still holds it; True when it did."""

    def holder(self, key: str) -> Holder | None: ...

    def keys(self) -> list[str]: ...


class InMemoryRegistry:
    def __init__(self) -> None:
        self._holders: dict[str, Holder] = {}

    def claim(self, key: str, holder: Holder) -> Holder | None:
        current = self._holders.get(key)
        if current is not None and current is not holder:
            live = current.session is not None
            same_agent = current.agent_id == holder.agent_id
            # A live endpoint changes hands only to the same agent instance (its old
            # session is a ghost the edge has not noticed yet); an orphaned one to any
            # agent with the same token (a restarted agent).
            if current.token_id != holder.token_id or (live and not same_agent):
                raise EndpointAlreadyBound(f"{key} is bound by another agent session")
        self._holders[key] = holder
        return current if current is not holder else None

    def promote(self, key: str, holder: Holder) -> None:
        if key in self._holders:
            self._holders[key] = holder

    def release(self, key: str, holder: Holder) -> bool:
        if self._holders.get(key) is holder:
            del self._holders[key]
            return True
        return False

    def holder(self, key: str) -> Holder | None:
        return self._holders.get(key)

    def keys(self) -> list[str]:
        return list(self._holders)
