"""Endpoints left out of a session because the edge holds as many endpoints of the
token's account as it allows (RLY_206), asked for again while the session lasts
(sans-IO).

Others of the account may have taken the places while this agent was away; places free
up as they unbind or their agents go. Ending the session for it would drop every other
endpoint at each reconnect, and waiting for the next reconnect could wait for ever on a
healthy link. So the agent serves what it got and asks again for the rest: after
:data:`FIRST_AFTER`, then twice as long each time, at most :data:`MOST_AFTER`.
"""

from __future__ import annotations

from typing import Generic, TypeVar

#: The first ask again, and the longest wait between two.
FIRST_AFTER = 5.0
MOST_AFTER = 60.0
#: Request ids of asks again, far above a session's first binds (1, 2, … one per
#: endpoint): the answers are told apart from any other by their id.
FIRST_ID = 1 << 20

Spec = TypeVar("Spec")


class BindsLater(Generic[Spec]):
    def __init__(self) -> None:
        #: Left out, not asked for again yet.
        self.waiting: list[Spec] = []
        #: Asked for again, not answered yet: request id -> endpoint.
        self.asked: dict[int, Spec] = {}
        self._after = FIRST_AFTER
        self._next_id = FIRST_ID

    def clear(self) -> None:
        """A new session: it asks for every endpoint itself."""
        self.waiting.clear()
        self.asked.clear()
        self._after = FIRST_AFTER

    def leave_out(self, spec: Spec) -> None:
        if spec not in self.waiting:
            self.waiting.append(spec)

    def next_delay(self) -> float:
        """How long until the next ask (each longer than the last, up to MOST_AFTER)."""
        delay = self._after
        self._after = min(self._after * 2, MOST_AFTER)
        return delay

    def due(self) -> list[tuple[int, Spec]]:
        """Every endpoint left out, each with the request id to ask for it by."""
        asks = []
        for spec in self.waiting:
            request_id = self._next_id
            self._next_id += 1
            self.asked[request_id] = spec
            asks.append((request_id, spec))
        self.waiting.clear()
        return asks

    def answered(self, request_id: int) -> Spec | None:
        """The endpoint an answer of ``request_id`` is for, if it is an ask again."""
        return self.asked.pop(request_id, None)
