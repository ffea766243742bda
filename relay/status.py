"""`relay status`: a live view of an edge or an agent for a person at a terminal.

It reads the admin listener (``/status`` for sessions, endpoints and recent streams;
``/metrics`` for counters, turned into rates between two reads) and redraws in place
every ``interval`` seconds; ``--once`` prints one plain snapshot (for scripts and pipes).
Nothing here runs inside the edge or the agent: it is a client of their admin listener.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from relay.errors import ConnectError

#: Samples summed by name (and one label) from a scrape: name -> {label value: value}.
Samples = dict[str, dict[str, float]]


@dataclass
class Snapshot:
    at: float
    status: dict[str, Any]
    samples: Samples = field(default_factory=dict)

    def total(self, name: str) -> float:
        return sum(self.samples.get(name, {}).values())

    def by(self, name: str) -> dict[str, float]:
        return self.samples.get(name, {})


def fetch(admin: str, *, timeout: float = 5.0) -> Snapshot:
    """Read ``/status`` and ``/metrics`` of the admin listener at ``admin`` (HOST:PORT)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(f"http://{admin}/status", timeout=timeout) as answer:
            status = json.loads(answer.read())
        with opener.open(f"http://{admin}/metrics", timeout=timeout) as answer:
            text = answer.read().decode()
    except OSError as exc:
        raise ConnectError(f"cannot read the admin listener at {admin}: {exc}") from None
    return Snapshot(time.monotonic(), status, _samples(text))


#: For each family: the label whose values the view breaks totals down by.
_BREAKDOWN = {
    "relay_visitor_bytes_total": "direction",
    "relay_visitor_connections_total": "kind",
    "relay_http_requests_total": "code_class",
    "relay_error_pages_total": "code",
    "relay_visitor_connections_refused_total": "reason",
    "relay_auth_failures_total": "reason",
    "relay_agent_upstream_failures_total": "code",
}


def _samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = _BREAKDOWN.get(sample.name)
            key = sample.labels.get(label, "") if label else ""
            bucket = out.setdefault(sample.name, {})
            bucket[key] = bucket.get(key, 0.0) + sample.value
    return out


def rate(now: Snapshot, before: Snapshot | None, name: str, key: str | None = None) -> float:
    if before is None or now.at <= before.at:
        return 0.0
    if key is None:
        delta = now.total(name) - before.total(name)
    else:
        delta = now.by(name).get(key, 0.0) - before.by(name).get(key, 0.0)
    return max(0.0, delta) / (now.at - before.at)


def render(now: Snapshot, before: Snapshot | None, admin: str) -> list[str]:
    if now.status.get("role") == "agent":
        return _render_agent(now, before, admin)
    return _render_edge(now, before, admin)


def _render_edge(now: Snapshot, before: Snapshot | None, admin: str) -> list[str]:
    s = now.status
    state = "ready" if s.get("ready") else f"NOT READY ({s.get('why', '?')})"
    kinds = "  ".join(f"{k} {n}" for k, n in s.get("endpoints_by_kind", {}).items())
    classes = "  ".join(
        f"{c} {rate(now, before, 'relay_http_requests_total', c):.0f}/s"
        for c in ("2xx", "3xx", "4xx", "5xx")
    )
    pages = now.by("relay_error_pages_total")
    page_rates = [
        (code, rate(now, before, "relay_error_pages_total", code)) for code in sorted(pages)
    ]
    busy = ", ".join(f"{code} {r:.1f}/s" for code, r in page_rates if r > 0) or "none"
    workers = s.get("workers") or {}
    # An edge with workers (relay/cluster/status_sum.py) says how many answer.
    answering = (
        f"   workers {workers.get('answering')}/{workers.get('count')}" if "each" in workers else ""
    )
    lines = [
        f"relay edge {s.get('version', '?')} (region {s.get('region', '?')}) "
        f"admin {admin} — {state}",
        f"sessions {s.get('sessions', 0)}/{s.get('sessions_limit', 0)}   endpoints {kinds}"
        f"   streams {now.total('relay_streams_open'):.0f}{answering}",
        f"traffic  in {_bytes(rate(now, before, 'relay_visitor_bytes_total', 'in'))}/s"
        f"  out {_bytes(rate(now, before, 'relay_visitor_bytes_total', 'out'))}/s"
        f"  connections {rate(now, before, 'relay_visitor_connections_total'):.0f}/s"
        f"  requests {classes}",
        f"errors   pages {busy}"
        f"   refused {rate(now, before, 'relay_visitor_connections_refused_total'):.1f}/s"
        f"   auth failures {now.total('relay_auth_failures_total'):.0f}",
        "",
        f"{'SESSION':<20} {'AGENT':<22} {'TOKEN':<13} {'ENDPOINTS':>9} {'RTT':>9}"
        + ("  WORKER" if answering else ""),
    ]
    for session in s.get("sessions_list", []):
        rtt = session.get("rtt_us", 0) / 1000
        worker = f"  {session.get('worker', '-')}" if answering else ""
        lines.append(
            f"{session['id']:<20} {session['peer']:<22} {session.get('token') or '-':<13} "
            f"{session['endpoints']:>9} {rtt:>7.1f}ms{worker}"
        )
    lines += [
        "",
        f"{'ENDPOINT':<44} {'KIND':<6} {'SESSION':<20}" + (" WORKERS" if answering else ""),
    ]
    for endpoint in s.get("endpoints", []):
        held = ",".join(str(w) for w in endpoint.get("workers", [])) or "-"
        lines.append(
            f"{endpoint['url']:<44} {endpoint['kind']:<6} "
            f"{endpoint.get('session') or 'orphaned':<20}" + (f" {held}" if answering else "")
        )
    return [line.rstrip() for line in lines]


def _render_agent(now: Snapshot, before: Snapshot | None, admin: str) -> list[str]:
    s = now.status
    state = "connected" if s.get("connected") else "NOT CONNECTED"
    lines = [
        f"relay agent → edge {s.get('edge', '?')}   admin {admin} — {state}",
        f"traffic  in {_bytes(rate(now, before, 'relay_visitor_bytes_total', 'in'))}/s"
        f"  out {_bytes(rate(now, before, 'relay_visitor_bytes_total', 'out'))}/s"
        f"  connections {rate(now, before, 'relay_visitor_connections_total'):.0f}/s"
        f"  failed {now.total('relay_agent_upstream_failures_total'):.0f}",
        "",
        f"{'ENDPOINT':<44} {'KIND':<6} UPSTREAM",
    ]
    for endpoint in s.get("endpoints", []):
        lines.append(f"{endpoint['url']:<44} {endpoint['kind']:<6} {endpoint['upstream']}")
    if s.get("links"):  # --links K (relay/agent/link_metrics.py)
        lines += ["", f"{'LINK':<5} {'STATE':<14} {'POP':<30} {'WORKER':<7} NAME"]
        for row in s["links"]:
            state = "connected" if row.get("connected") else "NOT CONNECTED"
            worker = "-" if row.get("worker") is None else str(row["worker"])
            # The PoP's own name (an edge of protocol 2 tells it): two addresses, one PoP.
            name = row.get("pop_name") or "-"
            pop = row.get("pop") or "-"
            lines.append(f"{row['link']:<5} {state:<14} {pop:<30} {worker:<7} {name}")
    lines += ["", f"{'TIME':<9} {'VISITOR':<22} {'OUTCOME':<8} ENDPOINT"]
    for stream in s.get("recent", [])[-15:]:
        at = time.strftime("%H:%M:%S", time.localtime(stream["time"]))
        lines.append(f"{at:<9} {stream['visitor']:<22} {stream['outcome']:<8} {stream['endpoint']}")
    return lines


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def watch(
    admin: str,
    *,
    interval: float,
    once: bool,
    out: TextIO = sys.stdout,
    rounds: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Print the view; unless ``once``, redraw it in place every ``interval`` seconds
    (``rounds`` bounds it, for tests; Ctrl-C ends it otherwise)."""
    before: Snapshot | None = None
    done = 0
    while True:
        now = fetch(admin)
        lines = render(now, before, admin)
        if once:
            out.write("\n".join(lines) + "\n")
            return
        out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")  # home, clear, redraw
        out.flush()
        before = now
        done += 1
        if rounds is not None and done >= rounds:
            return
        sleep(interval)
