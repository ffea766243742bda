"""The image's build, without a container engine: scripts/install-prefix.sh, run on what
`docker build` would send (this tree less .dockerignore) as the Dockerfile's builder stage
runs it, makes a self-contained relay; an edge and an agent started from it, with the
command lines of deploy/systemd's units, carry bytes intact.

Not covered here (no engine): the base images, the COPY into the runtime stage, the
container's user and HEALTHCHECK at run time (tests/unit/test_dockerfile.py checks the
Dockerfile's text and runs its HEALTHCHECK command).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.procs import (
    EchoServer,
    Proc,
    echo_roundtrip,
    free_port,
    free_port_range,
    payload,
)
from tests.unit.test_dependency_lock import read_lock

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = "/opt/relay"
EDGE_UNIT = ROOT / "deploy" / "systemd" / "relay-edge.service"
AGENT_UNIT = ROOT / "deploy" / "systemd" / "relay-agent@.service"
BUILD_TIMEOUT = 840  # a cold cargo and pip cache on two busy cores


# --- the build context, as `docker build` sends it -----------------------------------------


def dockerignore() -> list[list[str]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # Exceptions would need Docker's full rules; this emulation refuses them instead.
        assert not line.startswith("!"), ".dockerignore exceptions are not emulated here"
        patterns.append(line.strip("/").split("/"))
    return patterns


def _match(pattern: list[str], parts: list[str]) -> bool:
    """Docker's rule: a pattern matches a path from the context root; ``**`` matches any
    number of folders; a matched folder excludes all below it."""
    if not pattern:
        return True  # the pattern matched a folder above: everything below goes
    if not parts:
        return False
    if pattern[0] == "**":
        return any(_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return fnmatch.fnmatchcase(parts[0], pattern[0]) and _match(pattern[1:], parts[1:])


def copy_build_context(dest: Path) -> None:
    patterns = dockerignore()
    for folder, subfolders, files in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT).parts
        subfolders[:] = [d for d in subfolders if not any(_match(p, [*rel, d]) for p in patterns)]
        for name in files:
            if any(_match(p, [*rel, name]) for p in patterns):
                continue
            target = dest.joinpath(*rel, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder) / name, target, follow_symlinks=False)


def test_build_context_emulation_follows_dockerignore_rules() -> None:
    assert _match(["build"], ["build", "lib", "x.so"])
    assert not _match(["build"], ["native", "build"])
    assert _match(["**", "__pycache__"], ["relay", "edge", "__pycache__"])
    assert _match(["relay", "*.so"], ["relay", "_fastpath.cpython-311-x86_64-linux-gnu.so"])
    assert not _match(["relay", "*.so"], ["relay", "edge", "x.so"])


# --- the build ---------------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """This test runs inside the project's venv; the build must not see it."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV"}
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("image")
    src = work / "src"
    copy_build_context(src)
    target = work / "opt-relay"
    # The image's Python is the plain interpreter; here, the one this venv was made from.
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    result = subprocess.run(
        ["scripts/install-prefix.sh", str(target)],  # as the Dockerfile's RUN line
        cwd=src,
        env={**clean_env(), "PYTHON": str(python)},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return target


def installed_distributions(prefix: Path) -> set[str]:
    out = subprocess.run(
        [
            str(prefix / "bin" / "python"),
            "-I",
            "-c",
            "import importlib.metadata as m, json; "
            "print(json.dumps(sorted(d.metadata['Name'].lower().replace('_', '-') "
            "for d in m.distributions())))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(out.stdout))


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_image_build_script_installs_relay_with_its_runtime_lock_only(prefix: Path) -> None:
    assert installed_distributions(prefix) == set(read_lock("runtime.txt")) | {
        "relay",
        "relay-native",
    }
    # No pip, no compiler front ends: the runtime image has nothing to build with.
    assert sorted(p.name for p in (prefix / "bin").iterdir() if "pip" in p.name) == []
    with (ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    out = subprocess.run(
        [str(prefix / "bin" / "relay"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=clean_env(),
    )
    assert out.stdout.strip() == f"relay, version {version}"


# --- an edge and an agent from the result, as the units start them ------------------------


def unit_command(unit: Path, **replace: str) -> tuple[list[str], dict[str, str]]:
    """ExecStart and Environment of a unit, with paths moved from a PoP to this test."""
    argv: list[str] = []
    env: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            argv = shlex.split(value)
        elif key == "Environment":
            for item in value.split():
                name, _, setting = item.partition("=")
                env[name] = setting
    for old, new in replace.items():
        argv = [arg.replace(old, new) for arg in argv]
        env = {k: v.replace(old, new) for k, v in env.items()}
    return argv, env


def edge_config(data_dir: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """deploy/edge.yml, moved to loopback and this test's ports; the local CA instead of
    Let's Encrypt (no traffic leaves this machine)."""
    config = yaml.safe_load((ROOT / "deploy" / "edge.yml").read_text())
    first, last = free_port_range(10)
    ports = {"agents": free_port(), "http": free_port(), "https": free_port()}
    config.update(
        data_dir=str(data_dir),
        listen=f"127.0.0.1:{ports['agents']}",
        tcp_ports=f"{first}-{last}",
        tcp_bind="127.0.0.1",
        public_host="127.0.0.1",
        http_listen=f"127.0.0.1:{ports['http']}",
        https_listen=f"127.0.0.1:{ports['https']}",
        cert_issuer="local",
    )
    for key in [k for k in config if k.startswith("acme_")]:
        del config[key]
    return config, ports


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


def maps_of(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT + 120)
def test_edge_and_agent_from_the_built_prefix_carry_bytes_intact(
    prefix: Path, tmp_path: Path, procs: list[Proc], echo: EchoServer
) -> None:
    data_dir = tmp_path / "var-lib-relay"
    config, ports = edge_config(data_dir)
    config_file = tmp_path / "edge.yml"
    config_file.write_text(yaml.safe_dump(config))
    argv, env = unit_command(
        EDGE_UNIT,
        **{INSTALLED: str(prefix), "/etc/relay/edge.yml": str(config_file)},
    )
    env["RELAY_DATA_DIR"] = str(data_dir)
    edge = Proc(argv, env={**env, "PYTHONPATH": ""})
    procs.append(edge)
    edge.wait_line("listening for agents", timeout=60)
    # The edge runs the prefix's compiled code, not this checkout's.
    assert f"{prefix}/lib/" in maps_of(edge.pid)
    assert str(ROOT / "relay") not in maps_of(edge.pid)

    # As docs/running-a-pop.md has the operator do it, beside the running edge.
    token = json.loads(
        subprocess.run(
            [
                str(prefix / "bin" / "relay"),
                *("token", "create", "--data-dir", str(data_dir), "-o", "json"),
            ],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )["token"]

    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    agent_file = {
        "version": 1,
        "agent": {
            "edge": f"127.0.0.1:{ports['agents']}",
            "authtoken": token,
            "ca_file": str(data_dir / "ca" / "ca.pem"),
            "server_name": "localhost",
        },
        "endpoints": [{"name": "echo", "kind": "tcp", "upstream": f"127.0.0.1:{echo.port}"}],
    }
    (credentials / "agent.yml").write_text(yaml.safe_dump(agent_file))
    argv, env = unit_command(
        AGENT_UNIT, **{INSTALLED: str(prefix), "${CREDENTIALS_DIRECTORY}": str(credentials)}
    )
    agent = Proc(argv, env={**env, "CREDENTIALS_DIRECTORY": str(credentials), "PYTHONPATH": ""})
    procs.append(agent)
    url = agent.wait_line("Forwarding", timeout=60).split()[1]
    port = int(url.rsplit(":", 1)[1])

    sent = payload(12, 8 << 20)
    received = echo_roundtrip(port, sent)
    assert len(received) == len(sent)
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(sent).hexdigest()

    # SIGTERM (the units' KillSignal) ends both cleanly.
    assert agent.stop(timeout=10) == 0
    assert edge.stop(timeout=45) == 0
    assert "draining" in edge.text()
