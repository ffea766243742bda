"""``--links K`` with ``--admin-listen``: the agent's ``/metrics`` speaks for every link.

Links 1..K-1 run in processes of their own (relay/agent/link_process.py), each with its
own counters. Each sends its exposition to the agent every :data:`PUSH_PERIOD`; the
agent's admin listener combines its own with the last of each link process's by the
edge's rules (relay/metrics_sum.py): counters summed, a restarted link
process's earlier counts kept so no counter goes down, process gauges summed. Two
gauges are the largest, not the sum: ``relay_endpoints`` (every link binds the same
endpoints) and ``relay_agent_connected`` (1 while any link has a session). Its own:
``relay_agent_links`` (links configured) and ``relay_agent_links_connected``.

``/status`` lists every link (connected or not, its PoP and worker) and the recent
streams of all of them, newest last. A link process's counts and streams reach the
agent up to :data:`PUSH_PERIOD` late, and those of its last period before it dies are
lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from relay.metrics_sum import MAX_GAUGES, MetricsSum, Scrape, render

#: How often a link process sends its exposition to the agent.
PUSH_PERIOD = 1.0
#: Gauges the same in every link, or "any link": the largest.
LARGEST = MAX_GAUGES | {"relay_endpoints", "relay_agent_connected"}

#: Link index -> (its process id, its last exposition), or None while it has none.
LinkScrapes = dict[int, tuple[int, str] | None]
#: As many recent streams as one process keeps (relay/agent/metrics.py).
RECENT = 50


class LinksExposition:
    """The agent's exposition and its link processes', combined."""

    def __init__(
        self, links: int, scrapes: Callable[[], LinkScrapes], connected: Callable[[], int]
    ):
        self.links = links
        self.scrapes = scrapes
        self.connected = connected
        self.sum = MetricsSum(largest=LARGEST)

    def combine(self, own: bytes) -> bytes:
        answers: dict[int, tuple[int, Scrape] | None] = {}
        for index, got in self.scrapes().items():
            try:
                answers[index] = None if got is None else (got[0], Scrape.parse(got[1]))
            except ValueError:
                answers[index] = None
        families = self.sum.combine(answers, own=Scrape.parse(own.decode("utf-8")))
        return render([*families, *self._own()])

    def _own(self) -> Iterator[Metric]:
        links = GaugeMetricFamily("relay_agent_links", "links this agent holds (--links)")
        links.add_metric([], self.links)
        yield links
        up = GaugeMetricFamily(
            "relay_agent_links_connected", "links of this agent with a session now"
        )
        up.add_metric([], self.connected())
        yield up


def endpoints_bound(exposition: str) -> int:
    """How many endpoints a link process's exposition says it holds (``relay_endpoints``
    over every kind); 0 when it cannot be read."""
    try:
        family = Scrape.parse(exposition).families.get("relay_endpoints")
    except ValueError:
        return 0
    return 0 if family is None else int(sum(family.samples.values()))


def links_ready(
    own: tuple[bool, str], wanted: int, links: list[tuple[bool, str | None]]
) -> tuple[bool, str]:
    """The agent's readiness: link 0's (``own``), or any other link's that is connected
    and, by its last exposition (at most PUSH_PERIOD old), holds all ``wanted``
    endpoints. ``links``: (connected, last exposition or None) of links 1..K-1."""
    if own[0]:
        return own
    for connected, exposition in links:
        if connected and exposition is not None and endpoints_bound(exposition) >= wanted:
            return True, ""
    return False, f"link 0: {own[1]}; no other link serves every endpoint"


def links_status(
    own: dict[str, Any], links: list[dict[str, Any]], recent: list[list[dict[str, Any]]]
) -> dict[str, Any]:
    """The agent's /status: link 0's (``own``), with ``links`` (one entry per link) and
    the recent streams of every link (``recent``: each link process's last list)."""
    streams = [s for part in [own.get("recent", []), *recent] for s in part]
    streams.sort(key=lambda s: float(s.get("time", 0)))
    return {**own, "links": links, "recent": streams[-RECENT:]}
