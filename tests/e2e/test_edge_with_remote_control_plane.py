"""An edge started with --control-url asks a separate `relay control` process: agents'
tokens are verified there (the edge holds neither the database nor the pepper), the
edge's audit events land there, and a revocation or a suspension made there ends the
agent's live session within 2 s. While the control plane is down, live tunnels keep
carrying bytes and new agents are refused; when it is back, they are let in again."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import pytest

from tests.e2e.procs import RELAY, Agent, EchoServer, Edge, Proc, echo_roundtrip, free_port, payload

SLACK = 1.0  # as in test_credentials_end_live_sessions.py


class Control:
    """`relay control` on 127.0.0.1:``port`` (``store``: its --store URL; else SQLite in
    ``data_dir``), stopped by its pid."""

    def __init__(
        self, data_dir: Path, port: int, store: str | None = None, extra: list[str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.store = store
        self.extra = extra or []
        self.port = port
        self.host = "127.0.0.1"
        self.admin_port = port  # the API, /readyz and /metrics share its one listener
        self.url = f"http://127.0.0.1:{port}"
        self.proc: Proc | None = None
        self.edge_key_id = ""  # the key the last edge() made

    def start(self) -> Control:
        self.proc = Proc(
            [
                *RELAY,
                "control",
                "--data-dir",
                str(self.data_dir),
                *(["--store", self.store] if self.store is not None else []),
                "--listen",
                f"127.0.0.1:{self.port}",
                *self.extra,
            ]
        )
        self.proc.wait_line("control plane serving on", timeout=30)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def edge(self, admin: str, work: Path) -> Edge:
        """An edge (started) that asks this control plane, with a key of the ``edge``
        scope that ``admin`` makes, in a 0600 file under ``work``."""
        edge_key = self.api(admin, "POST", "/api_keys", {"scopes": ["edge"]})
        self.edge_key_id = str(edge_key["id"])
        key_file = work / "edge.key"
        key_file.write_text(edge_key["key"] + "\n")
        key_file.chmod(0o600)
        return Edge(
            work / "edge", extra=["--control-url", self.url, "--control-key-file", str(key_file)]
        ).start()

    def api(self, key: str, method: str, path: str, body: Any = None) -> Any:
        request = Request(
            f"{self.url}/api/v1{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    plane = Control(tmp_path / "control", free_port()).start()
    try:
        yield plane
    finally:
        plane.stop()


def bootstrap_key(control: Control) -> str:
    out = subprocess.run(
        [*RELAY, "api-keys", "bootstrap", "--data-dir", str(control.data_dir), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return str(json.loads(out.stdout)["key"])


def wait_exit(agent: Agent, within: float) -> tuple[int, float]:
    started = time.monotonic()
    code = agent.proc.wait(within + 30)
    return code, time.monotonic() - started


@pytest.mark.timeout(180)
def test_an_edge_on_a_remote_control_plane_verifies_audits_and_ends_sessions(
    control: Control, tmp_path: Path, echo: EchoServer, agents: list[Agent]
) -> None:
    admin = bootstrap_key(control)
    edge = control.edge(admin, tmp_path)
    try:
        team = control.api(admin, "POST", "/accounts", {"name": "team-r"})
        first = control.api(admin, "POST", "/credentials", {"description": "first"})
        second = control.api(admin, "POST", "/credentials", {"account_id": team["id"]})

        agent = Agent(edge, first["token"], echo.port)
        agents.append(agent)
        port = agent.wait_bound()
        data = payload(41, 300_000)
        assert echo_roundtrip(port, data) == data
        # The edge keeps no database and no pepper of its own.
        assert not (edge.data_dir / "relay.db").exists()
        assert not (edge.data_dir / "pepper").exists()

        # A revocation at the control plane ends the live session within 2 s.
        control.api(admin, "DELETE", f"/credentials/{first['id']}")
        code, took = wait_exit(agent, 2.0)
        assert code == 3 and "RLY_102" in agent.proc.text(), agent.proc.text()
        assert took < 2.0 + SLACK, took

        # A name reserved at the control plane is refused to another account's agent.
        control.api(admin, "POST", "/reserved_domains", {"domain": "shop.example.com"})
        intruder = Agent(
            edge,
            second["token"],
            echo.port,
            kind="http",
            extra=["--domain", "shop.example.com", "--no-https"],
        )
        agents.append(intruder)
        assert intruder.proc.wait(30) == 4, intruder.proc.text()
        assert "RLY_207" in intruder.proc.text()

        # So does a suspension.
        member = Agent(edge, second["token"], echo.port)
        agents.append(member)
        member.wait_bound()
        control.api(admin, "POST", f"/accounts/{team['id']}/suspend")
        code, took = wait_exit(member, 2.0)
        assert code == 3 and "RLY_104" in member.proc.text(), member.proc.text()
        assert took < 2.0 + SLACK, took

        # A wrong token is refused, and the control plane audited it.
        wrong = Agent(edge, first["token"][:-4] + "AAAA", echo.port)
        agents.append(wrong)
        assert wrong.proc.wait(30) == 3 and "RLY_101" in wrong.proc.text()

        # The edge's own events reach the control plane's log, naming the edge's key.
        deadline = time.monotonic() + 10
        stops: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(stops) < 2:
            events = control.api(admin, "GET", "/audit_events?action=session.stop&limit=10")
            stops = events["items"]
            time.sleep(0.2)
        assert sorted(e["detail"]["reason"] for e in stops) == ["revoked", "suspended"]
        assert {e["detail"]["edge"] for e in stops} == {f"api_key:{control.edge_key_id}"}
        fails = control.api(admin, "GET", "/audit_events?action=auth.fail")["items"]
        assert any(e["target"] == first["id"] for e in fails)
        assert control.api(admin, "GET", "/audit_events/verify")["intact"] is True

        # The control plane goes away: the live tunnel carries on, a new agent waits.
        third = control.api(admin, "POST", "/credentials", {"description": "third"})
        live = Agent(edge, third["token"], echo.port)
        agents.append(live)
        live_port = live.wait_bound()
        control.stop()
        time.sleep(1.5)  # a credential check or two fail meanwhile
        assert echo_roundtrip(live_port, data) == data
        late = Agent(edge, third["token"], echo.port)
        agents.append(late)
        late.proc.wait_line("reconnecting", timeout=30)
        control.start()
        late.wait_bound(timeout=60)
        assert echo_roundtrip(live_port, data) == data
    finally:
        edge.stop()
