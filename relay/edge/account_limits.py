"""What one account may hold of an edge process: agent sessions, endpoints, TCP ports
(sans-IO).

``max_sessions`` and the TCP port range are shared by every account an edge serves. One
account's token (leaked, or its owner's runaway script) could open sessions until the
edge was full and every other account's agents were refused, or bind random ports until
none was left for anyone: a valid token was all it took. So each account may hold at
most ``max_sessions_per_account`` sessions, ``max_endpoints_per_account`` endpoints and,
of those, ``max_tcp_ports_per_account`` TCP ports. 0 turns a limit off.

The limits are for member accounts, the tenants. An operator account (the ``default``
account every ``relay token create`` token belongs to is one) is counted but not
limited: a PoP of one tenant, whose fleet is all in ``default``, is not cut down by a
limit that only protects tenants from each other. The role comes with the token's
verification; a control plane that does not send it (an older ``relay control``) leaves
every account unlimited.

The counts are of this process, as ``max_sessions`` is: with ``--workers N`` each worker
counts its own, so the share of a node one account may take is the same as of one
worker. An endpoint counts from its bind to its release, through its agent's absence
(``reclaim_grace``): an endpoint kept for an agent that reconnects is still held, and
the agent's bind takes it back without counting it again. Only a new endpoint is judged
against the limit, so an account at its limit whose agent reconnects to the same process
gets every endpoint back. One that comes back to another worker is judged there, as new
(each worker counts its own): refused, its agent serves what it got and asks again
(relay/agent/binds_later.py) until the worker it left lets the kept endpoints go.

A new endpoint's place is taken (:meth:`AccountLimits.take`) before the edge awaits
anything for it (a claim across workers, a listen), so two binds of one account in
flight at once cannot both take the last place.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from relay.errors import TooManyEndpoints, TooManySessions


@dataclass
class Place:
    """A new endpoint's place among its account's, taken before it exists:
    :meth:`AccountLimits.held` once it does, :meth:`AccountLimits.give_back` if it never
    will (either settles it; a second settling does nothing)."""

    account: str
    tcp: bool
    settled: bool = False


#: A session refused for its account's limit is logged at most once per account this
#: often; the ones between are counted into the next line. An agent retries with backoff,
#: but a hostile one at its limit could otherwise write a line per TLS handshake.
SAY_REFUSALS_EVERY = 60.0


class AccountLimits:
    def __init__(
        self,
        sessions: int = 0,
        endpoints: int = 0,
        tcp_ports: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.configure(sessions, endpoints, tcp_ports)
        self.sessions: Counter[str] = Counter()
        self.endpoints: Counter[str] = Counter()
        self.tcp_ports: Counter[str] = Counter()
        self._held: dict[str, Place] = {}
        self.clock = clock
        #: Accounts whose refused sessions were said lately: when, and how many since.
        self._said: dict[str, tuple[float, int]] = {}

    def configure(self, sessions: int, endpoints: int, tcp_ports: int) -> None:
        """The limits from now on (a reload): what is held stays, past a lowered limit
        too; the next session or endpoint is judged by the new one."""
        self.max_sessions = sessions
        self.max_endpoints = endpoints
        self.max_tcp_ports = tcp_ports

    # --- sessions -------------------------------------------------------------------------

    def session_starts(self, account: str, *, limited: bool = True, room: bool = False) -> None:
        """Count an authenticated session of ``account``; TooManySessions when it is
        ``limited`` and holds its limit already (nothing counted then). ``room``: counted
        whatever it holds (a reconnect whose old session is being ended for it)."""
        held = self.sessions[account]
        if limited and not room and self.max_sessions and held >= self.max_sessions:
            raise TooManySessions(
                f"account {account} holds {held} agent sessions on this edge, its limit "
                f"(max_sessions_per_account); try again later or connect to another PoP"
            )
        self.sessions[account] = held + 1

    def session_ends(self, account: str) -> None:
        _decrement(self.sessions, account)

    def refusal_to_say(self, account: str) -> int | None:
        """A session of ``account`` was refused: how many more were refused since the
        last one said (say this one with that count), or None (within
        :data:`SAY_REFUSALS_EVERY` of the last one said: only counted)."""
        now = self.clock()
        # Oldest said first (a line said moves its account to the end): the stale ones
        # are forgotten from the front, a few a call.
        for other, (at, _) in list(itertools.islice(self._said.items(), 2)):
            if now - at >= SAY_REFUSALS_EVERY and other != account:
                del self._said[other]
        said = self._said.get(account)
        if said is not None and now - said[0] < SAY_REFUSALS_EVERY:
            self._said[account] = (said[0], said[1] + 1)
            return None
        self._said.pop(account, None)
        self._said[account] = (now, 0)
        return said[1] if said is not None else 0

    # --- endpoints ------------------------------------------------------------------------

    def take(self, account: str, kind: str, *, limited: bool = True) -> Place:
        """A place for a new endpoint of ``kind``; TooManyEndpoints (RLY_206) when the
        account is ``limited`` and holds its limit of endpoints, or of TCP ports for a
        ``tcp`` one."""
        tcp = kind == "tcp"
        held = self.endpoints[account]
        if limited and self.max_endpoints and held >= self.max_endpoints:
            raise TooManyEndpoints(
                f"account {account} holds {held} endpoints on this edge, its limit "
                f"(max_endpoints_per_account)"
            )
        ports = self.tcp_ports[account]
        if limited and tcp and self.max_tcp_ports and ports >= self.max_tcp_ports:
            raise TooManyEndpoints(
                f"account {account} holds {ports} TCP ports on this edge, its limit "
                f"(max_tcp_ports_per_account)"
            )
        self.endpoints[account] = held + 1
        if tcp:
            self.tcp_ports[account] = ports + 1
        return Place(account, tcp)

    def held(self, place: Place, endpoint_id: str) -> None:
        """The endpoint of ``place`` exists: it counts until :meth:`released`."""
        if place.settled:
            return
        place.settled = True
        self._held[endpoint_id] = place

    def give_back(self, place: Place) -> None:
        """The endpoint ``place`` was taken for was not made (its bind failed, or took
        over an endpoint that was there)."""
        if place.settled:
            return  # made after all (released with it), or given back already
        place.settled = True
        _decrement(self.endpoints, place.account)
        if place.tcp:
            _decrement(self.tcp_ports, place.account)

    def released(self, endpoint_id: str) -> None:
        """An endpoint went (unbound, or its agent did not come back in time)."""
        place = self._held.pop(endpoint_id, None)
        if place is None:
            return
        _decrement(self.endpoints, place.account)
        if place.tcp:
            _decrement(self.tcp_ports, place.account)


def _decrement(counts: Counter[str], account: str) -> None:
    """One fewer for ``account``; an account that holds nothing is forgotten, so the
    counters stay as small as the set of accounts holding something."""
    left = counts[account] - 1
    if left > 0:
        counts[account] = left
    else:
        counts.pop(account, None)
