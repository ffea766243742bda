"""Reconnect delays: exponential with full jitter, so a fleet of agents that lost the same
edge does not come back in lockstep."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.25
    maximum: float = 30.0
    factor: float = 2.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        # Full jitter, but never less than a tenth of the ceiling: no tight spin.
        return ceiling * (0.1 + 0.9 * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0
