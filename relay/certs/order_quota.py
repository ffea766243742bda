"""How many certificates each account may have ordered from a CA lately (sans-IO).

An ACME CA limits the orders of the edge's one account (Let's Encrypt: 300 new orders per
3 hours, kept on this side by ``AcmeLimits``). Every https name an agent binds that has
no certificate is an order. Without a share per tenant, one account's agents binding
names at random would spend the whole budget, and every other tenant's new names would
wait hours for theirs. So each account may start ``per_owner`` orders in any ``window``;
past that its names wait for the time one of its orders leaves the window, and other
accounts order on. Renewals of certificates still valid are not charged (the manager
decides what is charged): a tenant cannot make more of them than it has names.

Kept in memory, per process (a restart forgets it; the CA's own limits still apply).
"""

from __future__ import annotations

import collections
import datetime as dt
from typing import NamedTuple

#: Let's Encrypt's window for new orders per account.
WINDOW = dt.timedelta(hours=3)
#: Accounts counted at once: past this, those with no order in the window are forgotten,
#: then the one whose last order is oldest.
MAX_OWNERS = 65_536


class Deferred(NamedTuple):
    """An order the owner may not start yet: when it may, and whether this is its first
    refusal since its last order (worth one log line; the ones after are not)."""

    until: dt.datetime
    first: bool


class OrderQuota:
    """At most ``per_owner`` orders per owner in any ``window``; 0: no quota."""

    def __init__(self, per_owner: int, window: dt.timedelta = WINDOW) -> None:
        if per_owner < 0:
            raise ValueError(f"per_owner must be >= 0, not {per_owner}")
        self.per_owner = per_owner
        self.window = window
        #: Per owner, when its orders in the window started, oldest first.
        self._orders: dict[str, collections.deque[dt.datetime]] = {}
        #: Owners refused since their last order.
        self._refused: set[str] = set()

    def take(self, owner: str, now: dt.datetime) -> Deferred | None:
        """Charge one order to ``owner`` at ``now`` (None), or say until when it must
        wait, charging nothing."""
        if self.per_owner == 0:
            return None
        orders = self._orders.get(owner)
        if orders is not None:
            while orders and orders[0] <= now - self.window:
                orders.popleft()
            if len(orders) >= self.per_owner:
                first = owner not in self._refused
                self._refused.add(owner)
                # The order that makes room is the per_owner-th from the newest (a
                # lowered quota may leave more than per_owner in the window).
                return Deferred(orders[-self.per_owner] + self.window, first)
        else:
            self._make_room(now)
            orders = self._orders[owner] = collections.deque()
        orders.append(now)
        self._refused.discard(owner)
        return None

    def charged(self, owner: str, now: dt.datetime) -> int:
        """Orders of ``owner`` in the window at ``now``."""
        return sum(1 for t in self._orders.get(owner, ()) if t > now - self.window)

    def _make_room(self, now: dt.datetime) -> None:
        if len(self._orders) < MAX_OWNERS:
            return
        for owner in [o for o, times in self._orders.items() if times[-1] <= now - self.window]:
            del self._orders[owner]
            self._refused.discard(owner)
        if len(self._orders) >= MAX_OWNERS:
            oldest = min(self._orders, key=lambda o: self._orders[o][-1])
            del self._orders[oldest]
            self._refused.discard(oldest)


def share_of(per_account: int, workers: int) -> int:
    """One of ``workers`` processes' share of an account's quota (each counts its own, as
    each keeps its share of the CA's orders): at least 1 unless the quota is off (0)."""
    if per_account == 0 or workers <= 1:
        return per_account
    return max(1, per_account // workers)
