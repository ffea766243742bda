"""Public TCP ports handed to endpoints: a configured range, allocated at random."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from relay.errors import ConfigError, PortRangeExhausted, PortUnavailable


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """'20000-20100' or a single '20000'."""
        match = re.fullmatch(r"\s*(\d{1,5})\s*(?:-\s*(\d{1,5}))?\s*", text)
        if not match:
            raise ConfigError(f"port range {text!r} is not 'FIRST-LAST'")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if not (1 <= first <= last <= 65535):
            raise ConfigError(f"port range {text!r} must satisfy 1 <= FIRST <= LAST <= 65535")
        return cls(first, last)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


class PortAllocator:
    """Tracks which ports of the range are taken by endpoints of this edge process."""

    def __init__(self, ports: PortRange) -> None:
        self.ports = ports
        self._taken: set[int] = set()

    def reserve(self, port: int) -> int:
        if port not in self.ports:
            raise PortUnavailable(f"port {port} is outside this edge's TCP range {self.ports}")
        if port in self._taken:
            raise PortUnavailable(f"port {port} is already in use by another endpoint")
        self._taken.add(port)
        return port

    def candidates(self) -> list[int]:
        """Free ports in random order (the caller tries to listen on each in turn)."""
        free = [p for p in range(self.ports.first, self.ports.last + 1) if p not in self._taken]
        if not free:
            raise PortRangeExhausted(f"all {len(self.ports)} ports of {self.ports} are in use")
        random.shuffle(free)
        return free

    def taken(self, port: int) -> bool:
        """Whether ``port`` is this edge's (an endpoint's, or one being bound)."""
        return port in self._taken

    def release(self, port: int) -> None:
        self._taken.discard(port)
