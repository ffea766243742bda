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
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Binds and unbinds a session may have acted on at once: twice the default
#: ``max_endpoints_per_session``, so an agent binding every endpoint it may never waits.
BURST = 128
#: And how many more a second after that.
PER_SECOND = 20.0


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
