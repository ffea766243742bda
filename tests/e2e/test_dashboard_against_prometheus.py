"""The shipped dashboard, scrape config and alert rules against a real Prometheus scraping a
real edge under load.

deploy/grafana/relay-edge.json is only worth something if each panel's PromQL finds the
series the edge exports: a renamed metric or a misspelt label shows an empty panel and
nothing fails. So an edge on 127.0.0.1 carries real agents and visitors (TCP, HTTP,
HTTPS, TLS passthrough, a refused visitor, a failed authentication, a refused bind, a
session refused for the limit), Debian's Prometheus scrapes it every second with the
shipped prometheus.yml (targets swapped for this edge) and alerts.yml, and every panel
target is run through the HTTP API with Grafana's variables filled in as a user picking
this edge would. promtool lints the edge's exposition, the rules and the config, and runs
the alert unit tests.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.http_helpers import curl
from tests.e2e.origin import Origin
from tests.e2e.procs import (
    RELAY,
    Agent,
    EchoServer,
    Edge,
    Proc,
    echo_roundtrip,
    free_port,
    payload,
)
from tests.e2e.prometheus import (
    Prometheus,
    PrometheusError,
    finite,
    needs_prometheus,
    promtool,
)

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "relay-edge.json"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
JOB = "relay-edge"
REGION = "test-eu"

#: Panel targets ("<panel title> / <refId>") whose query returns no number yet, with the
#: series each one waits for. The edge does not export these series yet, or exports the
#: family without ever touching a label set. Remove an entry once its metric is wired: the
#: test fails for an entry here whose query does return data, so the list stays exact.
EXPECTED_MISSING: dict[str, str] = {}

#: What ``promtool check metrics`` says today about the edge's exposition, one line each
#: (it lists each finding once per sample). Remove a line once relay/ fixes it: the test
#: fails for a listed finding promtool no longer reports, and for any other finding.
KNOWN_LINT_FINDINGS: set[str] = set()

#: Labels a panel may group or select by: each has a handful of values. Never a host name,
#: a token or an address (instance is the edge's scrape address: one per edge).
BOUNDED_LABELS = {
    "job",
    "region",
    "instance",
    "version",
    "role",
    "kind",
    "direction",
    "reason",
    "code",
    "code_class",
    "listener",
    "outcome",
    "issuer",
    "stat",
    "le",
    "front",
}
ROWS = [
    "Traffic",
    "Errors",
    "Latency",
    "Sessions",
    "Saturation",
    "Certificates",
    "Workers and cluster",
]


# --- the dashboard as data ----------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panel_targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """("<panel title> / <refId>", target) for every query of every panel."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"{panel['title']} / {target['refId']}", target


def grafana_expr(expr: str, instance: str) -> str:
    """``expr`` with Grafana's variables as a user viewing this edge would have them: its
    region and instance picked (a regex, escaped as Grafana escapes it for PromQL), and the
    rate interval Grafana picks for about half a day's view of a 1 s scrape: long enough
    to hold the whole load."""
    values = {
        "__rate_interval": "1m",
        "__interval": "15s",
        "job": JOB,
        "region": re.escape(REGION).replace("\\", "\\\\"),
        "instance": re.escape(instance).replace("\\", "\\\\"),
    }

    def fill(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"unknown variable ${name} in {expr}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", fill, expr)


def test_dashboard_panels_use_the_datasource_variable_bounded_labels_and_the_filters() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36  # Grafana 10's model (rows as panels)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("region", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["includeAll"] and variables[name]["multi"]
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert [r for r in rows if r in ROWS] == ROWS, rows
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["panels"][0]["type"] == "row"  # every panel sits under a row
    keys = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        assert panel.get("description"), panel["title"]
    for key, target in panel_targets(dashboard):
        keys.append(key)
        expr = target["expr"]
        assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", key
        # Every selector of the query is narrowed to the chosen job, regions and edges.
        selectors = re.findall(r"\b([a-z_:]+)\{([^}]*)\}", expr)
        assert selectors, key
        for metric, matchers in selectors:
            for label in ("job", "region", "instance"):
                assert f'{label}=~"${label}"' in matchers, f"{key}: {metric} lacks ${label}"
        for clause in re.findall(
            r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr
        ):
            labels = {label.strip() for label in clause.split(",") if label.strip()}
            assert labels <= BOUNDED_LABELS, f"{key}: unbounded {labels - BOUNDED_LABELS}"
        for metric, matchers in selectors:
            for label in re.findall(r"(\w+)\s*=~?", matchers):
                assert label in BOUNDED_LABELS, f"{key}: {metric} selects by {label}"
    assert len(keys) == len(set(keys)), "panel titles and refIds must name one target each"
    assert set(EXPECTED_MISSING) <= set(keys), set(EXPECTED_MISSING) - set(keys)


# --- promtool on the shipped files -------------------------------------------------------


@needs_prometheus
def test_shipped_rules_and_config_pass_promtool_and_each_alert_fires_only_when_it_should() -> None:
    rc, out = promtool("check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert rc == 0, out
    # The config names its rule file relative to itself: checking it also loads that.
    rc, out = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert rc == 0, out
    assert "1 rule files found" in out, out
    rc, out = promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)
    assert rc == 0, out
    assert "SUCCESS" in out, out
    alerts = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    tested = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    for rule in alerts["groups"][0]["rules"]:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        cases = [
            case
            for test in tested["tests"]
            for case in test["alert_rule_test"]
            if case["alertname"] == rule["alert"]
        ]
        assert any(case["exp_alerts"] for case in cases), f"{rule['alert']} never fires"
        assert any(not case["exp_alerts"] for case in cases), f"{rule['alert']} always fires"


# --- a loaded edge, scraped ----------------------------------------------------------------


def wait_for_scrape(prometheus: Prometheus, after: float, timeout: float = 30.0) -> float:
    """Wait until Prometheus has scraped the edge successfully at a time past ``after``
    (its first scrape comes a few seconds after start); that time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = prometheus.query(f'timestamp(up{{job="{JOB}"}} == 1)')
        if up and float(up[0]["value"][1]) > after:
            return float(up[0]["value"][1])
        time.sleep(0.25)
    raise TimeoutError(f"prometheus did not scrape the edge after {after}")


def scrape(edge: Edge) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{edge.admin_port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def sample_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the exposition's samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric.split("{")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', metric))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def wait_for_sample(
    edge: Edge, name: str, at_least: float, timeout: float = 30.0, **labels: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sample_sum(scrape(edge), name, **labels) >= at_least:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{name}{labels} did not reach {at_least}:\n{scrape(edge)}")


def client_hello(server_name: str) -> bytes:
    """A real TLS ClientHello naming ``server_name`` (the passthrough routes on its SNI)."""
    context = ssl.create_default_context()
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def passthrough_echo(port: int, data: bytes) -> bytes:
    """Send ``data`` to the TLS port and read as many bytes back (the upstream echoes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        back = b""
        while len(back) < len(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            back += chunk
        return back


def refused(port: int) -> bool:
    """A visitor of ``port`` is closed or reset without a byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True


def write_agent_config(path: Path, edge: Edge, token: str, endpoints: list[dict[str, Any]]) -> Path:
    agent = {
        "edge": edge.address,
        "authtoken": token,
        "ca_file": str(edge.ca_file),
        "server_name": "localhost",
    }
    path.write_text(yaml.safe_dump({"version": 1, "agent": agent, "endpoints": endpoints}))
    path.chmod(0o600)  # it holds a token
    return path


def forwarding(proc: Proc, count: int) -> dict[str, str]:
    """The first ``count`` "Forwarding <url> -> <upstream>" lines: {url: line}."""
    lines = [proc.wait_line("Forwarding", 30) for _ in range(count)]
    return {line.split()[1]: line for line in lines}


def prometheus_config(edge: Edge) -> dict[str, Any]:
    """The shipped prometheus.yml, scraping this edge every second (its region as the
    target label) and loading the shipped alerts.yml."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / rule) for rule in config["rule_files"]]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    job["static_configs"] = [
        {"targets": [f"127.0.0.1:{edge.admin_port}"], "labels": {"region": REGION}}
    ]
    return dict(config)


@needs_prometheus
@pytest.mark.timeout(300)
def test_every_dashboard_query_returns_data_from_a_scraped_edge_under_load(
    tmp_path: Path, echo: EchoServer, origin: Origin, procs: list[Proc]
) -> None:
    edge_config = tmp_path / "edge.yml"
    # Two sessions: the test fills them, so that one more link is refused ("full") and
    # the sessions-near-limit alert has something to say.
    edge_config.write_text("max_sessions: 2\n")
    edge = Edge(tmp_path / "edge", extra=["--config", str(edge_config), "--region", REGION])
    prometheus = Prometheus(tmp_path / "prometheus", prometheus_config(edge))
    try:
        edge.start()
        prometheus.start()
        instance = f"127.0.0.1:{edge.admin_port}"
        # Scrapes before the load, so that rates and quantiles see it happen.
        first = wait_for_scrape(prometheus, after=time.time())
        run_load(edge, echo, origin, procs, tmp_path)
        loaded = time.time()
        # ... and after it (the rules are evaluated every second meanwhile).
        wait_for_scrape(prometheus, after=loaded + 2)
        assert loaded - first < 50, "the load must fit in the 1m rate window"
        at = loaded + 2

        # The exposition passes Prometheus' own lint, with every label set the load made.
        rc, out = promtool("check", "metrics", stdin=scrape(edge).encode())
        findings = {line.strip() for line in out.splitlines() if line.strip()}
        assert findings == KNOWN_LINT_FINDINGS, out
        assert rc == (3 if findings else 0), out  # 3: lint findings, anything else: broken

        # The region is the target label; the edge's own (relay_build_info) agrees.
        [info] = prometheus.query(f'relay_build_info{{job="{JOB}"}}', at)
        assert info["metric"]["region"] == REGION
        assert info["metric"]["exported_region"] == REGION

        dashboard = load_dashboard()
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            parts = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"]["query"])
            assert parts is not None, variable["query"]
            metric, label = parts.groups()
            seen = {
                s["metric"].get(label) for s in prometheus.query(grafana_expr(metric, instance), at)
            }
            want = {"job": JOB, "region": REGION, "instance": instance}[variable["name"]]
            assert want in seen, f"variable {variable['name']}: {seen}"

        empty, unexpected, errors = [], [], []
        for key, target in panel_targets(dashboard):
            expr = grafana_expr(target["expr"], instance)
            try:
                samples = finite(prometheus.query(expr, at))
            except PrometheusError as exc:
                errors.append(f"{key}: {exc}")
                continue
            if not samples and key not in EXPECTED_MISSING:
                empty.append(f"{key}: {expr}")
            if samples and key in EXPECTED_MISSING:
                unexpected.append(f"{key} (remove it from EXPECTED_MISSING)")
        assert not errors, "queries Prometheus refused:\n" + "\n".join(errors)
        assert not empty, "panel queries without data:\n" + "\n".join(empty)
        assert not unexpected, "expected missing, but has data:\n" + "\n".join(unexpected)

        # The alert rules are loaded and read real series: two sessions of two.
        active = {
            s["metric"]["alertname"]
            for s in prometheus.query('ALERTS{alertstate=~"pending|firing"}')
        }
        assert "RelayAgentSessionsNearLimit" in active, active
        for healthy in ("RelayEdgeDown", "RelayEdgeNotReady", "RelayFileDescriptorsNearLimit"):
            assert healthy not in active, active
        shipped = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
        loaded_rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        assert len(loaded_rules) == sum(len(g["rules"]) for g in shipped["groups"])
        assert all(r["health"] == "ok" for r in loaded_rules), loaded_rules
    finally:
        prometheus.stop()
        edge.stop()


def run_load(
    edge: Edge, echo: EchoServer, origin: Origin, procs: list[Proc], tmp_path: Path
) -> None:
    """Move every counter the edge has: see the module docstring."""
    _, token = edge.token()

    # A wrong token: relay_auth_failures_total{reason="invalid_token"}.
    wrong = Agent(edge, "rly_aaaaaaaaaaaa_" + "A" * 43, echo.port)
    procs.append(wrong.proc)
    assert wrong.proc.wait(30) == 3, wrong.proc.text()

    # A port outside the edge's range: relay_binds_refused_total{code}, and the session
    # ends (relay_agent_sessions_closed_total).
    refused_bind = Agent(edge, token, echo.port, remote_port=edge.ports[1] + 1)
    procs.append(refused_bind.proc)
    assert refused_bind.proc.wait(30) == 4, refused_bind.proc.text()

    # An agent that goes away: its endpoints are held for it, and their visitors turned
    # away (relay_visitor_connections_refused_total{kind="tcp",reason="no_agent"}, an
    # RLY_611 error page for the http name).
    gone_config = write_agent_config(
        tmp_path / "gone.yml",
        edge,
        token,
        [
            {"name": "tcp", "kind": "tcp", "upstream": f"127.0.0.1:{echo.port}"},
            {"name": "web", "kind": "http", "upstream": str(origin.port), "subdomain": "gone"},
        ],
    )
    gone = Proc([*RELAY, "start", "--config", str(gone_config)])
    procs.append(gone)
    urls = forwarding(gone, 2)
    [gone_tcp] = [u for u in urls if u.startswith("tcp://")]
    gone_port = int(gone_tcp.rsplit(":", 1)[1])
    assert echo_roundtrip(gone_port, b"before") == b"before"
    assert gone.stop() == 0
    wait_for_sample(edge, "relay_agent_sessions_closed_total", 2)
    assert refused(gone_port)
    offline = curl(f"http://gone.relay.localhost:{edge.http_port}/")
    assert b"RLY_611" in offline.stdout, offline

    # The agent that serves the traffic below: every endpoint kind in one session.
    dead_port = free_port()  # nothing listens: the agent answers 502 RLY_613
    main_config = write_agent_config(
        tmp_path / "main.yml",
        edge,
        token,
        [
            {"name": "tcp", "kind": "tcp", "upstream": f"127.0.0.1:{echo.port}"},
            {"name": "web", "kind": "http", "upstream": str(origin.port), "subdomain": "web"},
            {
                "name": "secure",
                "kind": "https",
                "upstream": str(origin.port),
                "subdomain": "secure",
            },
            {"name": "broken", "kind": "http", "upstream": str(dead_port), "subdomain": "broken"},
            {
                "name": "pass",
                "kind": "tls",
                "upstream": f"127.0.0.1:{echo.port}",
                "domain": "pass.relay.localhost",
            },
        ],
    )
    main = Proc([*RELAY, "start", "--config", str(main_config)])
    procs.append(main)
    urls = forwarding(main, 5)
    [main_tcp] = [u for u in urls if u.startswith("tcp://")]
    main_port = int(main_tcp.rsplit(":", 1)[1])

    # A second agent fills the last session; a third is refused for the limit.
    second = Agent(edge, token, echo.port)
    procs.append(second.proc)
    second.wait_bound()
    third = Agent(edge, token, echo.port)
    procs.append(third.proc)
    wait_for_sample(edge, "relay_agent_links_refused_total", 1, reason="full")
    third.stop()

    # Traffic last, so that the rate windows the queries use hold it.
    for seed, size in enumerate([1_000_000, 64_000, 7]):
        data = payload(seed, size)
        assert echo_roundtrip(main_port, data) == data
    web = f"http://web.relay.localhost:{edge.http_port}"
    secure = f"https://secure.relay.localhost:{edge.https_port}"
    for i in range(3):
        got = curl(f"{web}/page/{i}")
        assert got.stdout == f"origin ok /page/{i}".encode(), got
        got = curl(f"{secure}/page/{i}", edge=edge)
        assert got.stdout == f"origin ok /page/{i}".encode(), got
    broken = curl(f"http://broken.relay.localhost:{edge.http_port}/")
    assert b"RLY_613" in broken.stdout, broken
    nobody = curl(f"http://nobody.relay.localhost:{edge.http_port}/")
    assert b"RLY_610" in nobody.stdout, nobody
    hello = client_hello("pass.relay.localhost")
    assert passthrough_echo(edge.https_port, hello) == hello
