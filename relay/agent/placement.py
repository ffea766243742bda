"""``--links K`` on an edge with workers: each link on a worker of its own.

Every worker of an edge listens on the agent port (SO_REUSEPORT), and the kernel picks
one by a hash of the connection's addresses: two links of an agent land on one worker
as often as on two (with two workers). Both links then serve their visitors on that one
worker's core, and the other worker hands every visitor it accepts for the agent over.
So the edge tells a link (1..K-1) which worker it reached, how many there are, and which
lower links of the agent that worker holds too (``auth_ok``). A link beside a lower link,
while the lower links on its PoP are fewer than the PoP's workers (so one holds none of
them), connects again soon (a new connection, a new source port, another draw) before
it binds anything: at most :data:`MAX_PLACEMENT_TRIES` times, then it stays.

A link that comes back (its worker died, the network blinked) may land beside a higher
link of its agent: the edge then restarts that higher link gracefully (its streams
finish, relay/edge/session.py), and it places itself again.

Only lower links count: link 0 never moves, and of two links on one worker the higher
one moves, so two links never chase each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.agent.pops import Pop, same_pop

#: New connections a link makes to reach a worker of its own before it stays where it
#: is. With two workers each try finds the free one with probability 1/2, so 16 misses
#: in a row mean the kernel keeps choosing one, or the free worker never came back.
MAX_PLACEMENT_TRIES = 16
#: The wait before the first new connection, doubling up to :data:`LONGEST_WAIT`: the
#: free worker may be one the supervisor is starting again (a second or two), and tries
#: made before it listens all reach the same worker.
FIRST_WAIT = 0.05
LONGEST_WAIT = 1.0


def placement_delay(tries: int) -> float:
    """How long to wait before new connection number ``tries`` (1, 2, …): about 12 s
    over all of them, 11 tries after the first 1.5 s."""
    return min(FIRST_WAIT * (1 << max(tries - 1, 0)), LONGEST_WAIT)


@dataclass(frozen=True)
class Place:
    """Where a link's session is: the PoP it dialled and the worker there that holds it
    (0 when the edge did not say: link 0, or an edge of one process), and the PoP's name
    as its edge told it (protocol 2; "" from an older edge)."""

    pop: Pop
    worker: int
    pop_name: str = ""

    def same_pop(self, other: Place) -> bool:
        """Whether ``other`` is on this PoP: the same address, or the same name at
        another address (its IPv6 one, another address of its DNS name)."""
        return same_pop(self.pop, self.pop_name, other.pop, other.pop_name)


def crowded(link: int, workers: int, beside: int, lower_on_pop: int) -> bool:
    """Whether link ``link`` should connect again: its worker (of ``workers``) holds a
    lower link (``beside``: bit i for link i), and the agent's ``lower_on_pop`` lower
    links on this PoP are fewer than its workers, so one worker holds none of them."""
    if workers < 2 or link < 1:
        return False
    return beside & ((1 << link) - 1) != 0 and lower_on_pop < workers
