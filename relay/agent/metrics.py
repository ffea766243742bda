"""The agent's metrics and status, for its optional admin listener (``--admin-listen``):
whether its session is up, its endpoints, what its visitors' streams came to, and the
byte path's and the session's counters (relay/metrics.py)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.metrics import KINDS, Metrics, SessionsCollector

if TYPE_CHECKING:
    from relay.agent.client import Agent

#: Visitor streams remembered for `relay status` (the newest last).
RECENT_STREAMS = 50


class AgentMetrics(Metrics):
    def __init__(self, agent: Agent) -> None:
        super().__init__("agent")
        self.agent = agent
        self.sessions_started = self.counter(
            "relay_agent_sessions_started", "sessions this agent established with the edge"
        )
        self.upstream_failures = self.counter(
            "relay_agent_upstream_failures",
            "visitor streams this agent could not serve, by what the visitor was told",
            ("code",),
        )
        for code in ("RLY_611", "RLY_613", "RLY_614", "reset"):
            self.upstream_failures.labels(code)
        #: (time, endpoint URL, visitor address, outcome) of recent visitor streams.
        self.recent: deque[tuple[float, str, str, str]] = deque(maxlen=RECENT_STREAMS)
        self.register(SessionsCollector(self._live_sessions, self.mux))
        self.register(_AgentStateCollector(agent))
        #: ``--links``: combine this process's exposition and /status with the link
        #: processes' (relay/agent/link_metrics.py).
        self.combine: Callable[[bytes], bytes] | None = None
        self.combine_status: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        #: ``--links``: this link's readiness -> the agent's (any link serving).
        self.combine_ready: Callable[[tuple[bool, str]], tuple[bool, str]] | None = None

    def exposition(self) -> bytes:
        own = super().exposition()
        return own if self.combine is None else self.combine(own)

    def _live_sessions(self) -> list[Any]:
        link = self.agent.link
        return [link.session] if link is not None and not link.closed else []

    def stream(self, url: str, visitor: str, outcome: str) -> None:
        """A visitor stream was served (outcome "ok") or failed (its code)."""
        self.recent.append((time.time(), url, visitor, outcome))
        if outcome != "ok":
            self.upstream_failures.labels(outcome).inc()

    def status(self) -> dict[str, Any]:
        """What `relay status` shows for an agent."""
        own = self.own_status()
        return own if self.combine_status is None else self.combine_status(own)

    def own_status(self) -> dict[str, Any]:
        """This process's link: its endpoints and recent streams."""
        agent = self.agent
        return {
            "role": "agent",
            "connected": agent.connected,
            "edge": f"{agent.options.edge_host}:{agent.options.edge_port}",
            "endpoints": [
                {"url": bound.url, "kind": bound.spec.kind, "upstream": bound.spec.upstream}
                for bound in agent.bound.values()
            ],
            "recent": [
                {"time": at, "endpoint": url, "visitor": visitor, "outcome": outcome}
                for at, url, visitor, outcome in self.recent
            ],
        }

    def readiness(self) -> tuple[bool, str]:
        own = self.own_readiness()
        return own if self.combine_ready is None else self.combine_ready(own)

    def own_readiness(self) -> tuple[bool, str]:
        if not self.agent.connected:
            return False, "not connected to the edge"
        if len(self.agent.bound) < len(self.agent.options.endpoints):
            return False, "not every endpoint is bound"
        return True, ""


class _AgentStateCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "relay_agent_connected", "1 while the agent has a session with the edge"
        )
        connected.add_metric([], 1 if self.agent.connected else 0)
        yield connected
        by_kind = GaugeMetricFamily(
            "relay_endpoints", "endpoints bound now, by kind", labels=["kind"]
        )
        kinds = [bound.spec.kind for bound in self.agent.bound.values()]
        for kind in KINDS:
            by_kind.add_metric([kind], kinds.count(kind))
        yield by_kind
