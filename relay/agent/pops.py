"""Which PoP an agent connects to, when it knows several (``--edge a:7000,b:7000``, or a
name with several addresses).

Each attempt starts with the candidates ordered by round-trip time: one TCP connect to
each agent port, all at once, at most ``PROBE_TIMEOUT`` each; unreachable ones go last.
With ``--region`` only PoPs of that region serve: a PoP whose AuthOk names another
region is set aside for ``WRONG_REGION_FOR`` and the next one is tried at once. A PoP
that fails an attempt before any session (no TLS handshake or auth reply in time, a
refused or reset connection), or whose session went silent (keepalive), is set aside for
``FAILED_FOR``: a hung edge process still completes TCP handshakes from its listen
backlog, so the probe alone ranks it reachable, often fastest, for ever. A PoP set aside
is never the end of the agent: when every candidate is, the one that failed longest ago
is tried again (:meth:`PopChooser.choose`); only PoPs that *refused* the agent (another
region, a certificate it cannot trust, not an agent port) can leave it nothing. A link of
an agent with ``--links`` prefers PoPs its other links are not on (``busy``), so two links
hold two PoPs when there are two: losing one PoP then costs no reconnect at all. (Each
link probes by itself, and PoPs about as near come in any order for each: an offset in
that order alone put two links on one PoP.) One PoP may answer at several addresses (IPv4
and IPv6, a name with both): an edge of protocol 2 tells its name (``AuthOk.pop``), and an
address known to be a busy PoP's is busy too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: How long one probe may take before its PoP counts as unreachable.
PROBE_TIMEOUT = 1.0
#: How long a PoP of another region is left out.
WRONG_REGION_FOR = 60.0
#: How long a PoP that failed an attempt (or went silent) is left out: long enough that
#: the next attempts go to the others, short enough that it gets agents again soon after
#: it comes back (a restart, a load balancer with a backend again).
FAILED_FOR = 30.0
#: At most this many addresses are probed (names resolve to a few PoPs, not hundreds).
MAX_CANDIDATES = 16
#: How long one name's resolution may take: a resolver that does not answer must not hold
#: every reconnect (nor a stop) for its own timeouts.
RESOLVE_TIMEOUT = 5.0
#: PoP names remembered, by address (the oldest learned go first): a name's addresses
#: come and go with its DNS records.
MAX_NAMES = 64


@dataclass(frozen=True)
class Pop:
    """One agent port: the address dialled and the name its certificate is checked for."""

    host: str
    port: int
    name: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Aside:
    """Why and since when a PoP is left out (``time.monotonic()`` seconds)."""

    since: float
    until: float
    #: The PoP said no (another region, an untrusted certificate, not an agent port), as
    #: opposed to failing to answer: only refusals may leave the agent with no PoP.
    refused: bool


@dataclass
class PopChooser:
    edges: tuple[tuple[str, int], ...]
    region: str = ""
    #: The PoPs the agent's other links are connected to now (``--links``), with each
    #: one's name as its edge told it ("": not told).
    busy: Callable[[], dict[Pop, str]] = field(default=lambda: {})
    _away: dict[Pop, Aside] = field(default_factory=dict)
    #: The name each address's edge told (``AuthOk.pop``), here or to another link.
    _names: dict[Pop, str] = field(default_factory=dict)
    #: Round-trip times of the last probe, for status lines and tests (seconds).
    last_rtts: dict[Pop, float] = field(default_factory=dict)

    async def ranked(self) -> list[Pop]:
        """Every candidate, best first (:func:`rank`)."""
        pops = await self._resolve()
        if len(pops) > 1:
            rtts = await asyncio.gather(*(_probe(p) for p in pops))
            self.last_rtts = dict(zip(pops, rtts, strict=True))
            now = time.monotonic()
            return rank(pops, self.last_rtts, self._busy(), self._until(now), now)
        now = time.monotonic()
        return rank(pops, {}, set(), self._until(now), now)

    def choose(self, ranked: list[Pop]) -> Pop:
        """The PoP to try of ``ranked`` (best first, from :meth:`ranked`): the first unless
        every candidate is set aside; then the one that *failed* longest ago (not the
        fastest: a hung PoP answers probes fastest, and would be tried every time), or,
        when every one refused the agent, the first (the caller gives up: ``all_away``)."""
        now = time.monotonic()
        first = ranked[0]
        if not self._is_away(first, now):
            return first
        failed = {p: a.since for p in ranked if (a := self._away.get(p)) and not a.refused}
        return min(failed, key=failed.__getitem__) if failed else first

    async def free_pop(self, here: Pop) -> Pop | None:
        """A PoP other than ``here`` that no other link of the agent is on (``busy``),
        reachable by the probe now and not set aside: where a link that shares ``here``
        with a lower link moves to, once the PoP it lost comes back. None: none is."""
        ranked = await self.ranked()
        if not self.several:
            return None
        now = time.monotonic()
        busy = self._busy()
        for pop in ranked:
            if self.same(pop, here) or pop in busy or self._is_away(pop, now):
                continue
            if self.last_rtts.get(pop, float("inf")) < float("inf"):
                return pop
        return None

    def learn(self, pop: Pop, name: str) -> None:
        """``pop``'s edge says it is the PoP ``name`` ("": an edge that does not say)."""
        self._names.pop(pop, None)
        if name:
            self._names[pop] = name
            while len(self._names) > MAX_NAMES:
                del self._names[next(iter(self._names))]

    def same(self, a: Pop, b: Pop) -> bool:
        """Whether ``a`` and ``b`` are one PoP, by the names learned for them."""
        return same_pop(a, self._names.get(a, ""), b, self._names.get(b, ""))

    def _busy(self) -> set[Pop]:
        """The addresses other links are on, and every address of the same PoPs."""
        others = self.busy()
        for pop, name in others.items():
            if name and self._names.get(pop) != name:
                self.learn(pop, name)
        names = {self._names[p] for p in others if p in self._names}
        return set(others) | {p for p, name in self._names.items() if name in names}

    @property
    def several(self) -> bool:
        return len(self.last_rtts) > 1

    def wrong_region(self, pop: Pop) -> None:
        self.set_aside(pop, WRONG_REGION_FOR)

    def set_aside(self, pop: Pop, seconds: float) -> None:
        """Leave ``pop`` out for ``seconds`` because it refused the agent (another region,
        a certificate the agent cannot trust, not an agent port): other PoPs are tried
        first, and when every PoP refused, the agent gives up (``all_away``)."""
        self._put(pop, seconds, refused=True)

    def failed(self, pop: Pop, seconds: float = FAILED_FOR) -> None:
        """Leave ``pop`` out for ``seconds`` because an attempt on it failed before any
        session, or its session went silent: other PoPs are tried first, but this one
        stays a candidate (``choose``), so the agent never runs out of PoPs for it."""
        self._put(pop, seconds, refused=False)

    def served(self, pop: Pop) -> None:
        """A session on ``pop`` was established: whatever failure set it aside is over
        (a refusal stays: it was about the PoP, not about a moment)."""
        aside = self._away.get(pop)
        if aside is not None and not aside.refused:
            del self._away[pop]

    def all_away(self, pops: list[Pop]) -> bool:
        """Whether every one of ``pops`` is set aside for refusing the agent: then no PoP
        can serve it. PoPs that only failed do not count: they are tried again."""
        now = time.monotonic()
        return all(self._is_away(p, now) and self._away[p].refused for p in pops)

    def _put(self, pop: Pop, seconds: float, *, refused: bool) -> None:
        now = time.monotonic()
        self._prune(now)
        self._away[pop] = Aside(now, now + seconds, refused)

    def _is_away(self, pop: Pop, now: float) -> bool:
        aside = self._away.get(pop)
        return aside is not None and aside.until > now

    def _until(self, now: float) -> dict[Pop, float]:
        """Until when each PoP is left out, as :func:`rank` takes it; expired entries go
        (otherwise every address DNS ever returned would stay here)."""
        self._prune(now)
        return {p: a.until for p, a in self._away.items()}

    def _prune(self, now: float) -> None:
        for pop in [p for p, a in self._away.items() if a.until <= now]:
            del self._away[pop]

    async def _resolve(self) -> list[Pop]:
        """Every ``--edge`` entry's addresses, all names asked at once (each within
        :data:`RESOLVE_TIMEOUT`), taken in turns: the first address of each entry, then
        the second of each, … up to :data:`MAX_CANDIDATES`, so a name with many
        addresses does not crowd the other entries out."""
        return in_turns(await asyncio.gather(*(_addresses(h, p) for h, p in self.edges)))


def same_pop(a: Pop, a_name: str, b: Pop, b_name: str) -> bool:
    """Whether two addresses are one PoP: one address, or one name their edges told at
    both ("": not told)."""
    return a == b or (bool(a_name) and a_name == b_name)


def rank(
    pops: list[Pop],
    rtts: dict[Pop, float],
    busy: set[Pop],
    away: dict[Pop, float],
    now: float,
) -> list[Pop]:
    """``pops`` best first: those not set aside (``away``: until when) before those that
    are; within each, reachable (a finite round-trip time in ``rtts``) before
    unreachable, then those no other link of the agent is on (``busy``), then by
    round-trip time. Ties keep the resolver's order. Without ``rtts`` (one candidate, or
    none probed) only the set-aside rule applies."""
    inf = float("inf")

    def key(p: Pop) -> tuple[bool, bool, bool, float]:
        rtt = rtts.get(p, 0.0) if rtts else 0.0
        return (away.get(p, 0.0) > now, rtt == inf, p in busy if rtts else False, rtt)

    return sorted(pops, key=key)


def in_turns(per_entry: list[list[Pop]]) -> list[Pop]:
    """The first PoP of each entry, then the second of each, …: each once, at most
    :data:`MAX_CANDIDATES`."""
    found: list[Pop] = []
    for turn in itertools.zip_longest(*per_entry):
        for pop in turn:
            if pop is not None and pop not in found:
                found.append(pop)
    return found[:MAX_CANDIDATES]


async def _addresses(host: str, port: int) -> list[Pop]:
    """``host``'s addresses as PoPs; itself alone when it does not resolve in time (the
    connect then says why)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
        )
    except (OSError, TimeoutError):
        return [Pop(host, port, host)]
    found: list[Pop] = []
    for info in infos:
        pop = Pop(str(info[4][0]), port, host)
        if pop not in found:
            found.append(pop)
    return found


async def _probe(pop: Pop) -> float:
    """Seconds a TCP connect to ``pop`` took; infinity when it failed or timed out."""
    started = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(pop.host, pop.port), PROBE_TIMEOUT
        )
    except (OSError, TimeoutError):
        return float("inf")
    elapsed = time.monotonic() - started
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return elapsed
