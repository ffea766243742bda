"""Refused binds per token: a budget, so that no agent can flood the audit log.

Every refused bind is audited: who asked for which name or port, and why not. An honest
agent sends few: it exits at its first refusal, or asks once more for a name it held. A
hostile one with a valid token sent 1,357 refused binds a second over one session, each
about 2 KB of audit store (9 GB an hour). So a token gets :data:`BURST` refusals,
refilled at :data:`PER_SECOND`; a refusal past that stops its session (RLY_209), and only
the first such refusal since the token was last within its budget is audited.

Sans-IO (a clock is passed in) and bounded: at most :data:`MAX_TOKENS` tokens are
remembered, the least recently refused forgotten first.
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
    #: Within the budget: audit it.
    AUDIT = "audit"
    #: The first refusal past the budget: audit that the token floods, stop the session.
    FLOOD_BEGINS = "flood_begins"
    #: Past the budget again: stop the session, audit nothing.
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
