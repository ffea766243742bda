"""Which PoP an agent connects to, when it knows several (``--edge a:7000,b:7000``, or a
name with several addresses).

Each attempt starts with the candidates ordered by round-trip time: one TCP connect to
each agent port, all at once, at most ``PROBE_TIMEOUT`` each; unreachable ones go last.
With ``--region`` only PoPs of that region serve: a PoP whose AuthOk names another
region is set aside for ``WRONG_REGION_FOR`` and the next one is tried at once. A link of
an agent with ``--links`` prefers PoPs its other links are not on (``busy``), so two links
hold two PoPs when there are two: losing one PoP then costs no reconnect at all. (Each
link probes by itself, and PoPs about as near come in any order for each: an offset in
that order alone put two links on one PoP.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: How long one probe may take before its PoP counts as unreachable.
PROBE_TIMEOUT = 1.0
#: How long a PoP of another region is left out.
WRONG_REGION_FOR = 60.0
#: At most this many addresses are probed (names resolve to a few PoPs, not hundreds).
MAX_CANDIDATES = 16


@dataclass(frozen=True)
class Pop:
    """One agent port: the address dialled and the name its certificate is checked for."""

    host: str
    port: int
    name: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass
class PopChooser:
    edges: tuple[tuple[str, int], ...]
    region: str = ""
    #: The PoPs the agent's other links are connected to now (``--links``).
    busy: Callable[[], set[Pop]] = field(default=lambda: set())
    _away: dict[Pop, float] = field(default_factory=dict)
    #: Round-trip times of the last probe, for status lines and tests (seconds).
    last_rtts: dict[Pop, float] = field(default_factory=dict)

    async def ranked(self) -> list[Pop]:
        """Every candidate, best first (:func:`rank`)."""
        pops = await self._resolve()
        if len(pops) > 1:
            rtts = await asyncio.gather(*(_probe(p) for p in pops))
            self.last_rtts = dict(zip(pops, rtts, strict=True))
            return rank(pops, self.last_rtts, self.busy(), self._away, time.monotonic())
        return rank(pops, {}, set(), self._away, time.monotonic())

    @property
    def several(self) -> bool:
        return len(self.last_rtts) > 1

    def wrong_region(self, pop: Pop) -> None:
        self.set_aside(pop, WRONG_REGION_FOR)

    def set_aside(self, pop: Pop, seconds: float) -> None:
        """Leave ``pop`` out for ``seconds`` (another region, a certificate the agent
        cannot trust, not an agent port): other PoPs are tried first."""
        self._away[pop] = time.monotonic() + seconds

    def all_away(self, pops: list[Pop]) -> bool:
        now = time.monotonic()
        return all(self._away.get(p, 0.0) > now for p in pops)

    async def _resolve(self) -> list[Pop]:
        loop = asyncio.get_running_loop()
        found: list[Pop] = []
        for host, port in self.edges:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                found.append(Pop(host, port, host))  # let the connect say why
                continue
            for info in infos:
                pop = Pop(str(info[4][0]), port, host)
                if pop not in found:
                    found.append(pop)
        return found[:MAX_CANDIDATES]


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
