"""Sources that keep failing to authenticate are refused for a while.

A wrong token costs an agent nothing but costs the edge a TLS handshake and a store
lookup; without a limit anyone can guess tokens as fast as the edge answers. The guard
counts failed authentications per source — an IPv4 address, or the /64 an IPv6 address
is in, since one host usually holds a whole /64 — and once a source has failed ``limit``
times within ``window`` seconds, refuses its links for ``block`` seconds, before their
TLS handshake where the transport allows it.

It is sans-IO (a clock is passed in) and bounded: at most ``max_sources`` sources are
remembered, the least recently seen forgotten first, so a flood from many addresses
costs memory in proportion to the cap, not to the flood.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: Sources remembered at most (failures and blocks); about 200 bytes each.
MAX_SOURCES = 65_536


def source_of(address: object) -> str:
    """The source an address counts against: ``203.0.113.7`` or ``2001:db8:1:2::/64``.

    ``address`` is a socket address tuple (host first) or a host string; anything else
    (a Unix socket's peer) counts as one source, ``"-"``.
    """
    host = address[0] if isinstance(address, tuple) and address else address
    if not isinstance(host, str):
        return "-"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class _Source:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class AuthGuard:
    """Counts failed authentications per source and says which sources are refused.

    ``limit`` 0 turns the guard off: nothing is counted and nothing refused.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        block: float,
        *,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 0 or window <= 0 or block <= 0 or max_sources < 1:
            raise ValueError("limit >= 0, window > 0, block > 0 and max_sources >= 1")
        self.limit = limit
        self.window = window
        self.block = block
        self.max_sources = max_sources
        self._clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def configure(self, limit: int, window: float, block: float) -> None:
        """New limits (a reload): what was counted stays; blocks in force run out as set."""
        if limit < 0 or window <= 0 or block <= 0:
            raise ValueError("limit >= 0, window > 0 and block > 0")
        self.limit, self.window, self.block = limit, window, block

    def block_detail(self, source: str) -> dict[str, object]:
        """What the audit log records when ``source`` is blocked: the limits in force."""
        return {
            "source": source,
            "failures": self.limit,
            "window_s": float(self.window),
            "block_s": float(self.block),
        }

    def blocked_for(self, source: str) -> float:
        """Seconds ``source`` stays refused; 0.0 when it may try."""
        if not self.limit:
            return 0.0
        entry = self._sources.get(source)
        if entry is None:
            return 0.0
        left = entry.blocked_until - self._clock()
        return left if left > 0 else 0.0

    def failed(self, source: str) -> bool:
        """Count a failed authentication from ``source``; True when this one blocks it."""
        if not self.limit:
            return False
        now = self._clock()
        entry = self._sources.pop(source, None) or _Source()
        self._sources[source] = entry  # most recently seen last
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
        if entry.blocked_until > now:
            return False  # already refused (a link that was past the check already)
        failures = entry.failures
        failures.append(now)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        while len(failures) > self.limit:
            failures.popleft()
        if len(failures) < self.limit:
            return False
        entry.blocked_until = now + self.block
        failures.clear()
        return True

    def blocked_sources(self) -> int:
        """How many sources are refused now (for the metrics)."""
        now = self._clock()
        return sum(1 for entry in self._sources.values() if entry.blocked_until > now)

    def __len__(self) -> int:
        return len(self._sources)
