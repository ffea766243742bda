"""An agent's /metrics with link processes (relay/agent/link_metrics.py): counters of
every link summed and kept across a link process's restart; the endpoints and
"connected" gauges the largest (every link binds the same endpoints); the links gauges."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from relay.agent.link_metrics import (
    RECENT,
    LinkScrapes,
    LinksExposition,
    endpoints_bound,
    links_ready,
    links_status,
)
from tests.e2e.test_admin_listener import sample


def link(failures: int, connected: int, bound: dict[str, int] | None = None) -> bytes:
    """What one link's process exposes (``bound``: its endpoints by kind; one tcp)."""
    registry = CollectorRegistry()
    Counter("relay_agent_upstream_failures", "failed", ["code"], registry=registry).labels(
        "RLY_613"
    ).inc(failures)
    endpoints = Gauge("relay_endpoints", "bound", ["kind"], registry=registry)
    for kind, n in (bound if bound is not None else {"tcp": 1}).items():
        endpoints.labels(kind).set(n)
    Gauge("relay_agent_connected", "up", registry=registry).set(connected)
    Gauge("process_resident_memory_bytes", "rss", registry=registry).set(1000)
    return generate_latest(registry)


def test_links_summed_and_kept_across_a_restart() -> None:
    scrapes: LinkScrapes = {1: (101, link(4, 1).decode()), 2: (102, link(5, 0).decode())}
    connected = [2]
    combined = LinksExposition(3, lambda: scrapes, lambda: connected[0])
    text = combined.combine(link(3, 1)).decode()
    assert sample(text, "relay_agent_upstream_failures_total", code="RLY_613") == 12
    assert sample(text, "relay_endpoints", kind="tcp") == 1
    assert sample(text, "relay_agent_connected") == 1
    assert sample(text, "process_resident_memory_bytes") == 3000
    assert (sample(text, "relay_agent_links"), sample(text, "relay_agent_links_connected")) == (
        3,
        2,
    )

    # Link 2's process is gone (its last counts stay), then started again from zero.
    scrapes[2] = None
    connected[0] = 1
    text = combined.combine(link(3, 1)).decode()
    assert sample(text, "relay_agent_upstream_failures_total", code="RLY_613") == 12
    assert sample(text, "process_resident_memory_bytes") == 2000
    scrapes[2] = (202, link(1, 1).decode())
    text = combined.combine(link(3, 1)).decode()
    assert sample(text, "relay_agent_upstream_failures_total", code="RLY_613") == 13


def test_an_unreadable_push_counts_as_none() -> None:
    scrapes: LinkScrapes = {1: (101, "not an exposition {")}
    text = LinksExposition(2, lambda: scrapes, lambda: 1).combine(link(2, 1)).decode()
    assert sample(text, "relay_agent_upstream_failures_total", code="RLY_613") == 2


def test_status_lists_every_link_and_the_newest_streams_of_all() -> None:
    own = {"role": "agent", "connected": True, "recent": [{"time": t} for t in (1.0, 4.0)]}
    others = [[{"time": float(t)} for t in range(5, 60)], [{"time": 2.0}, {"time": 3.0}]]
    rows = [{"link": 0, "connected": True}, {"link": 1, "connected": False}]
    status = links_status(own, rows, others)
    assert status["links"] == rows and status["connected"] is True
    times = [s["time"] for s in status["recent"]]
    assert times == sorted(times) and len(times) == RECENT and times[-1] == 59.0


def test_the_agent_is_ready_while_any_link_serves_every_endpoint() -> None:
    """/readyz with links: link 0 reconnecting does not make the agent unready while
    another link is connected and holds every endpoint (the edge sends it every visitor
    meanwhile); a link that holds only some, or is not connected, does not count."""
    down = (False, "not connected to the edge")
    every = link(0, 1, {"http": 2, "tcp": 1}).decode()
    some = link(0, 1, {"http": 1, "tcp": 1}).decode()
    assert endpoints_bound(every) == 3 and endpoints_bound(some) == 2
    assert endpoints_bound("not an exposition {") == 0
    assert links_ready((True, ""), 3, []) == (True, "")
    assert links_ready(down, 3, [(True, some), (True, every)]) == (True, "")
    for others in ([], [(True, some)], [(False, every)], [(True, None)]):
        ready, why = links_ready(down, 3, others)
        assert not ready
        assert why == "link 0: not connected to the edge; no other link serves every endpoint"
