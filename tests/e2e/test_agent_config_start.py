"""``relay start --config agent.yml``: several endpoints from one YAML file in one session.

A real edge, a TCP echo server and an origin web server on 127.0.0.1; ``relay start`` is a
real process, stopped by PID also when the test fails.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.http_helpers import curl
from tests.e2e.origin import Origin
from tests.e2e.procs import RELAY, EchoServer, Edge, Proc, echo_roundtrip

SUBDOMAIN = "cfgweb"


def agent_config(
    edge: Edge, token: str, echo_port: int, origin_port: int, remote_port: int
) -> dict[str, Any]:
    return {
        "version": 1,
        "agent": {
            "edge": edge.address,
            "authtoken": token,
            "ca_file": str(edge.ca_file),
            "server_name": "localhost",
        },
        "endpoints": [
            {
                "name": "echo",
                "kind": "tcp",
                "upstream": f"127.0.0.1:{echo_port}",
                "remote_port": remote_port,
            },
            {
                "name": "web",
                "kind": "http",
                "upstream": f"http://127.0.0.1:{origin_port}",
                "subdomain": SUBDOMAIN,
            },
        ],
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)  # it holds a token
    return path


def forwarding_urls(proc: Proc, count: int, timeout: float = 30.0) -> list[str]:
    return [proc.wait_line("Forwarding", timeout).split()[1] for _ in range(count)]


def port_refuses(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


def test_start_binds_every_endpoint_in_one_session(
    edge: Edge,
    echo: EchoServer,
    origin: Origin,
    procs: list[Proc],
    tmp_path: Path,
) -> None:
    _, token = edge.token()
    remote = edge.ports[0] + 3
    config = write_config(
        tmp_path / "agent.yml", agent_config(edge, token, echo.port, origin.port, remote)
    )
    proc = Proc([*RELAY, "start", "--config", str(config)])
    procs.append(proc)
    urls = forwarding_urls(proc, 2)
    web_url = f"http://{SUBDOMAIN}.relay.localhost:{edge.http_port}"
    assert sorted(urls) == sorted([f"tcp://127.0.0.1:{remote}", web_url]), urls
    # One session: one "established" line; the edge saw one authentication and bound both
    # endpoints to that session.
    established = [line for line in proc.output if "established" in line]
    assert len(established) == 1, proc.text()
    session_id = established[0].split()[1]
    assert edge.proc is not None
    edge.proc.wait_line(f"session {session_id} bound http://", timeout=10)
    edge_log = edge.proc.text()
    assert edge_log.count("authenticated") == 1, edge_log
    assert f"session {session_id} bound tcp://127.0.0.1:{remote}" in edge_log, edge_log

    data = os.urandom(3 * 1024 * 1024)
    back = echo_roundtrip(remote, data)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    assert echo.connections == 1

    got = curl(web_url + "/from-config")
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == b"origin ok /from-config"
    assert proc.proc.poll() is None
    assert proc.stop() == 0


def test_start_with_a_name_binds_only_that_endpoint(
    edge: Edge,
    echo: EchoServer,
    origin: Origin,
    procs: list[Proc],
    tmp_path: Path,
) -> None:
    _, token = edge.token()
    remote = edge.ports[0] + 5
    config = write_config(
        tmp_path / "agent.yml", agent_config(edge, token, echo.port, origin.port, remote)
    )
    proc = Proc([*RELAY, "start", "--config", str(config), "web"])
    procs.append(proc)
    [url] = forwarding_urls(proc, 1)
    assert url == f"http://{SUBDOMAIN}.relay.localhost:{edge.http_port}"
    got = curl(url + "/only-web")
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == b"origin ok /only-web"
    # The tcp endpoint was not bound: no second Forwarding line, nothing on its port.
    time.sleep(1.0)
    assert proc.text().count("Forwarding") == 1, proc.text()
    assert port_refuses(remote)
    assert echo.connections == 0


def test_unknown_key_is_a_usage_error_naming_the_key_path(
    edge: Edge, echo: EchoServer, origin: Origin, tmp_path: Path
) -> None:
    config = agent_config(edge, "rly_unused_token", echo.port, origin.port, edge.ports[0])
    web = config["endpoints"][1]
    web["upstrem"] = web.pop("upstream")  # a typo
    path = write_config(tmp_path / "typo.yml", config)
    result = subprocess.run(
        [*RELAY, "start", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "RLY_401" in out, out
    assert "endpoints[1].upstrem" in out, out
    assert "upstream" in out.replace("endpoints[1].upstrem", ""), out  # the hint
    assert "Forwarding" not in out
