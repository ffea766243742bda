"""Host-routed endpoints (http, https, tls) and the table that finds them.

Lookup: an exact hostname wins; otherwise the wildcard with the longest suffix
(``*.a.example.com`` before ``*.example.com``). A wildcard covers one or more labels,
except the names under it reserved with a pin to another region (``HostEndpoint.pins``,
asked of the control plane when the wildcard was bound and whenever a reservation under it
changes): those it never serves, wherever their own agent is (``find`` says which region
they belong to).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from relay.edge.registry import Holder

#: The longest host name a bind is given (DNS: 253 characters).
MAX_HOSTNAME = 253


@dataclass
class HostEndpoint:
    endpoint_id: str
    kind: str  # "http" | "https" | "tls"
    hostname: str  # exact name or "*.suffix"
    holder: Holder
    url: str
    host_rewrite: bytes | None = None
    orphan_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    port: int = 0  # host endpoints have no port of their own
    #: Its own metric series' slot (relay/edge/endpoint_series.py; 0: none).
    metric_slot: int = 0
    #: Every session serving it, ``holder`` first (relay/edge/members.py).
    members: list[Holder] = field(default_factory=list, repr=False)
    turn: int = 0
    #: A wildcard's: names and narrower wildcards under it reserved with a pin to another
    #: region (→ that region), and names under those servable here again (→ None); see
    #: relay/control/reserved.py ``decisive_pins``. Asked at each bind of the wildcard,
    #: and again whenever a reservation under it is made or released
    #: (relay/edge/live_reservations.py). Empty for nearly every wildcard.
    pins: dict[str, str | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.members:
            self.members = [self.holder]

    @property
    def family(self) -> str:
        # http shares nothing with https/tls; https and tls share the TLS port's names.
        return "http" if self.kind == "http" else "sni"

    @property
    def key(self) -> str:
        return f"{self.family}:{self.hostname}"

    def close(self) -> None:
        if self.orphan_timer is not None:
            self.orphan_timer.cancel()
            self.orphan_timer = None


class _Named(Protocol):
    @property
    def hostname(self) -> str: ...


Routed = TypeVar("Routed", bound=_Named)


class HostRoutes(Generic[Routed]):
    """Names to what serves them: this process's endpoints, or (relay/edge/worker.py)
    the names other workers hold."""

    def __init__(self) -> None:
        self._exact: dict[str, Routed] = {}
        self._wildcards: dict[str, Routed] = {}  # suffix ".example.com" -> endpoint

    def add(self, endpoint: Routed) -> None:
        if endpoint.hostname.startswith("*."):
            self._wildcards[endpoint.hostname[1:]] = endpoint
        else:
            self._exact[endpoint.hostname] = endpoint

    def remove(self, endpoint: Routed) -> None:
        table = self._wildcards if endpoint.hostname.startswith("*.") else self._exact
        name = endpoint.hostname[1:] if endpoint.hostname.startswith("*.") else endpoint.hostname
        if table.get(name) is endpoint:
            del table[name]

    def get(self, hostname: str) -> Routed | None:
        """What was added under exactly ``hostname`` (a wildcard as ``*.example.com``)."""
        if hostname.startswith("*."):
            return self._wildcards.get(hostname[1:])
        return self._exact.get(hostname)

    def values(self) -> list[Routed]:
        return [*self._exact.values(), *self._wildcards.values()]

    def lookup(self, hostname: str) -> Routed | None:
        """What serves ``hostname``; None for a name a wildcard here covers but must not
        serve (pinned to another region): whoever asks — a front, a visitor another node
        carried here — finds nothing to serve it."""
        found = self._exact.get(hostname)
        if found is not None:
            return found
        return self._by_wildcard(hostname)[0]

    def find(self, hostname: str) -> tuple[Routed | None, str | None]:
        """(what serves ``hostname``, None) — or (None, region) when the wildcard that
        matches it must not serve it: it is reserved with a pin to ``region``."""
        found = self._exact.get(hostname)
        if found is not None:
            return found, None
        return self._by_wildcard(hostname)

    def _by_wildcard(self, hostname: str) -> tuple[Routed | None, str | None]:
        # Walk suffixes from the longest: a.b.example.com → .b.example.com → .example.com
        dot = hostname.find(".")
        while dot != -1:
            found = self._wildcards.get(hostname[dot:])
            if found is not None:
                # Only a wildcard's match pays more, and only an empty dict's truth test
                # unless a reservation under it is pinned elsewhere. (A table of other
                # workers' names has no pins: the worker holding the wildcard refuses.)
                pins: dict[str, str | None] | None = getattr(found, "pins", None)
                if pins:
                    region = _pinned(pins, hostname, dot)
                    if region is not None:
                        return None, region
                return found, None
            dot = hostname.find(".", dot + 1)
        return None, None

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcards)


def _pinned(pins: dict[str, str | None], hostname: str, end: int) -> str | None:
    """The region ``hostname`` is pinned to by ``pins`` (a wildcard's, matched at
    ``hostname[end:]``), or None: the name itself first, then each narrower wildcard above
    it from the nearest, as reservations decide (relay/control/reserved.py)."""
    if hostname in pins:
        return pins[hostname]
    dot = hostname.find(".")
    while dot != -1 and dot < end:
        wildcard = "*" + hostname[dot:]
        if wildcard in pins:
            return pins[wildcard]
        dot = hostname.find(".", dot + 1)
    return None
