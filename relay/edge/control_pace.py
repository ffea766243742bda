"""How fast one agent session's binds and unbinds are acted on (sans-IO).

A bind costs the edge about 0.4 ms of its core with its unbind (name checks, the
registry, reports to the supervisor or the cluster, a certificate): one session binding
and unbinding as fast as it could took a third of an edge core, 821 pairs a second
(measured), and nothing slowed it. An honest agent binds its endpoints when it connects
(at most ``max_endpoints_per_session``, 64 by default) and seldom after. So a session
may act on :data:`BURST` of them at once (twice ``max_endpoints_per_session`` when that
is more), then :data:`PER_SECOND`; past that the next one waits its turn. While it waits
the edge returns no window credit on the session's control stream and parses nothing
more of it, so the agent's writes wait for the window: nothing is dropped, and what
waits at the edge is at most a window of bytes. Other sessions are not slowed.

A session's pace alone would let one account take the edge's core with many sessions
(up to ``max_sessions_per_account``, each with its own burst). So each message of a
member account's session is also charged to its account's pace (:class:`AccountPaces`):
twice ``max_endpoints_per_account`` at once, every endpoint the account may hold bound
twice, then :data:`ACCOUNT_PER_SECOND`. The message waits for the later of the two.
Other accounts are not slowed; an operator's account has no such pace (its fleet,
reconnecting all at once after an edge restart, binds at the sessions' own pace).
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Binds and unbinds a session may have acted on at once: twice the default
#: ``max_endpoints_per_session``, so an agent binding every endpoint it may never waits.
BURST = 128
#: And how many more a second after that.
PER_SECOND = 20.0
#: What all sessions of one account may have acted on a second, past the account's burst:
#: about 5% of an edge core (a bind with its unbind costs ~0.4 ms of it).
ACCOUNT_PER_SECOND = 200.0
#: Least recently charged accounts looked at per charge, to forget those whose pace has
#: rested: a rested pace is the same as a new one, so nothing is lost by forgetting it.
PRUNE_PER_CHARGE = 2


class ControlPace:
    """A token bucket that goes into debt: each message is charged, and the wait it
    returns is how long until the bucket had paid for it."""

    def __init__(
        self,
        burst: int = BURST,
        per_second: float = PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = float(burst)
        self.per_second = per_second
        self.clock = clock
        self._left = float(burst)
        self._at = clock()
        #: Messages that had to wait.
        self.paced = 0

    def delay(self) -> float:
        """Charge one message: seconds to wait before acting on it (0.0: at once)."""
        now = self.clock()
        self._left = min(self.burst, self._left + max(now - self._at, 0.0) * self.per_second)
        self._at = now
        self._left -= 1.0
        if self._left >= 0.0:
            return 0.0
        self.paced += 1
        return -self._left / self.per_second

    def rested(self) -> bool:
        """Whether the bucket is full again: charging it now is as charging a new one."""
        elapsed = max(self.clock() - self._at, 0.0)
        return self._left + elapsed * self.per_second >= self.burst


class AccountPaces:
    """One :class:`ControlPace` per account that sent a message lately; off (no wait)
    while ``burst`` is 0. Bounded: each charge forgets up to :data:`PRUNE_PER_CHARGE`
    rested paces, least recently charged first."""

    def __init__(
        self,
        burst: int,
        per_second: float = ACCOUNT_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_second = per_second
        self.clock = clock
        #: Least recently charged first.
        self._paces: dict[str, ControlPace] = {}

    def configure(self, burst: int) -> None:
        """A new burst (a reload): paces made from now on get it; the others keep theirs
        until they rest and are forgotten."""
        self.burst = burst

    def delay(self, account: str) -> float:
        """Charge one message of ``account``: seconds to wait before acting on it."""
        if not self.burst:
            return 0.0
        pace = self._paces.pop(account, None)
        if pace is None:
            pace = ControlPace(self.burst, self.per_second, self.clock)
        self._paces[account] = pace
        wait = pace.delay()
        for _ in range(PRUNE_PER_CHARGE):
            oldest = next(iter(self._paces))
            if oldest == account or not self._paces[oldest].rested():
                break
            del self._paces[oldest]
        return wait

    def __len__(self) -> int:
        return len(self._paces)


def account_burst(max_endpoints_per_account: int) -> int:
    """An account's burst: every endpoint it may hold bound twice (as its agents
    remembered them, then anew), and never below a session's; 0 (no pace) when its
    endpoints are not limited."""
    if not max_endpoints_per_account:
        return 0
    return max(BURST, 2 * max_endpoints_per_account)
