"""Refused binds per token: a budget, so that no agent can flood the audit log.

Every refused bind is logged and audited: who asked for which name or port, and why
not. An honest agent sends few: it exits at its first refusal, or asks once more for a
name it held. A hostile one with a valid token sent 1,357 refused binds a second over
one session, each about 2 KB of audit store (9 GB an hour). So a token gets
:data:`BURST` refusals, refilled at :data:`PER_SECOND`; past that, refusals are still
answered (the agent does what it always does), but only counted: the first of them is
audited once as a flood, the rest neither logged nor audited until the token is within
its budget again. Nothing is stopped: a fleet of agents sharing one token whose names
were reserved away while an edge restarted must not lose its other endpoints to it.

Sans-IO (a clock is passed in) and bounded: at most :data:`MAX_TOKENS` tokens are
remembered, the least recently refused forgotten first. The budget is per process:
each worker and node keeps its own.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

#: Refused binds a token may make at once, and how many more a second after that.
BURST = 60
PER_SECOND = 1.0
#: Tokens remembered at most; about 150 bytes each.
MAX_TOKENS = 65_536


class Verdict(enum.Enum):
    #: Within the budget: log and audit it.
    AUDIT = "audit"
    #: The first refusal past the budget: audit that the token floods.
    FLOOD_BEGINS = "flood_begins"
    #: Past the budget still: count it, nothing more.
    FLOOD = "flood"


class RefusedBinds:
    def __init__(
        self,
        burst: int = BURST,
        per_second: float = PER_SECOND,
        max_tokens: int = MAX_TOKENS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_second = per_second
        self.max_tokens = max_tokens
        self.clock = clock
        #: token -> (refusals left, when counted, flooding since it was last within budget)
        self._tokens: dict[str, tuple[float, float, bool]] = {}

    def refused(self, token: str) -> Verdict:
        """One more refused bind of ``token``: what to do about it."""
        now = self.clock()
        left, at, flooding = self._tokens.pop(token, (float(self.burst), now, False))
        left = min(float(self.burst), left + max(now - at, 0.0) * self.per_second)
        if left >= 1.0:
            verdict, left, flooding = Verdict.AUDIT, left - 1.0, False
        else:
            verdict = Verdict.FLOOD if flooding else Verdict.FLOOD_BEGINS
            flooding = True
        self._tokens[token] = (left, now, flooding)  # last: the most recently refused
        while len(self._tokens) > self.max_tokens:
            del self._tokens[next(iter(self._tokens))]
        return verdict
