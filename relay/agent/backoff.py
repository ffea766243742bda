"""Reconnect delays: exponential with full jitter, so a fleet of agents that lost the same
edge does not come back in lockstep.

The delays start over only after a session that lasted ``stable_after`` (10 s): an edge
that accepts the agent's auth and binds and then drops the link at once (a struggling
PoP, a bad deploy) is redialled ever more slowly, up to ``maximum``, rather than every
0.025-0.25 s for ever by its whole fleet. A session that lasted is the normal case of a
PoP that died or restarted: its agents come back at once, as before.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: How long a session must have served for its end to start the delays over (seconds).
STABLE_AFTER = 10.0


@dataclass
class Backoff:
    initial: float = 0.25
    maximum: float = 30.0
    factor: float = 2.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)
    stable_after: float = STABLE_AFTER

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        # Full jitter, but never less than a tenth of the ceiling: no tight spin.
        return ceiling * (0.1 + 0.9 * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0

    def session_ended(self, lasted: float) -> None:
        """A session that served for ``lasted`` seconds ended: start over if it lasted
        ``stable_after``; else the delays go on growing from where they were."""
        if lasted >= self.stable_after:
            self.reset()
