"""``--links K`` with ``--admin-listen``: the agent's ``/metrics`` speaks for every link.

Links 1..K-1 run in processes of their own (relay/agent/link_process.py), each with its
own counters. Each sends its exposition to the agent every :data:`PUSH_PERIOD`; the
agent's admin listener combines its own with the last of each link process's by the
edge's rules (relay/metrics_sum.py): counters summed, a restarted link
process's earlier counts kept so no counter goes down, process gauges summed. Two
gauges are the largest, not the sum: ``relay_endpoints`` (every link binds the same
endpoints) and ``relay_agent_connected`` (1 while any link has a session). Its own:
``relay_agent_links`` (links configured) and ``relay_agent_links_connected``.

A link process's counts reach the agent up to :data:`PUSH_PERIOD` late, and the counts
of its last period before it dies are lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from relay.metrics_sum import MAX_GAUGES, MetricsSum, Scrape, render

#: How often a link process sends its exposition to the agent.
PUSH_PERIOD = 1.0
#: Gauges the same in every link, or "any link": the largest.
LARGEST = MAX_GAUGES | {"relay_endpoints", "relay_agent_connected"}

#: Link index -> (its process id, its last exposition), or None while it has none.
LinkScrapes = dict[int, tuple[int, str] | None]


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
