"""deploy/systemd: the units pass systemd's own checks and agree with the edge and agent.

`systemd-analyze verify` reads them as systemd would (unknown keys, bad values, missing
executables: it reports these as warnings, so any output fails the test), and
`systemd-analyze security --offline` scores their sandboxing. systemd does not run as
PID 1 here, so no unit is started by systemd: what the units start is started by
tests/e2e/test_image_build_script.py, from their own ExecStart lines.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli import EXIT_AUTH, EXIT_BIND, EXIT_USAGE
from relay.config import load_edge_config

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
EDGE_UNIT = UNITS / "relay-edge.service"
AGENT_UNIT = UNITS / "relay-agent@.service"
INSTALLED_RELAY = "/opt/relay/bin/relay"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (scripts/install-test-deps.sh installs "
    "Debian's systemd package when run as root)",
)


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}``: keys may repeat (SystemCallFilter)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def service(path: Path) -> dict[str, str]:
    """The [Service] section, the last value of each key (as systemd applies most)."""
    return {key: values[-1] for key, values in read_unit(path)["Service"].items()}


def environment(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in read_unit(path)["Service"].get("Environment", []):
        for item in line.split():
            key, _, value = item.partition("=")
            env[key] = value
    return env


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60}
    for suffix, factor in units.items():
        if value.endswith(suffix) and value[: -len(suffix)].isdigit():
            return int(value[: -len(suffix)]) * factor
    return float(value)


def units_with_this_relay(tmp_path: Path) -> list[Path]:
    """The units as shipped, but starting this checkout's relay: verify checks that
    ExecStart's program exists, and /opt/relay is where a PoP installs it."""
    relay = Path(sys.executable).parent / "relay"
    assert relay.exists()
    copies = []
    for unit in (EDGE_UNIT, AGENT_UNIT):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED_RELAY, str(relay)))
        copies.append(copy)
    return copies


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60)


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    result = analyze("verify", "--man=no", *map(str, units_with_this_relay(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("name", [EDGE_UNIT.name, AGENT_UNIT.name])
def test_units_are_sandboxed_by_systemd_analyze_security(tmp_path: Path, name: str) -> None:
    """Exposure at most 2.0 of 10 ("OK"): a removed hardening line shows up here."""
    units_with_this_relay(tmp_path)
    unit = tmp_path / name
    if name.endswith("@.service"):
        unit = tmp_path / name.replace("@.", "@web.")
        unit.write_text((tmp_path / name).read_text())
    result = analyze("security", "--offline=true", "--threshold=20", str(unit))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_edge_unit_waits_longer_than_the_drain() -> None:
    """SIGTERM starts the drain; systemd's SIGKILL must not cut it short."""
    edge = service(EDGE_UNIT)
    config = load_edge_config(ROOT / "deploy" / "edge.yml", {})
    assert edge["KillSignal"] == "SIGTERM"
    assert edge["KillMode"] == "mixed"  # SIGTERM to the edge alone, SIGKILL to all at the end
    # Five seconds beyond the drain: the links' close linger, then the store's close.
    assert seconds(edge["TimeoutStopSec"]) >= config.drain_timeout + 5


def test_edge_unit_may_bind_low_ports_and_nothing_more() -> None:
    edge = service(EDGE_UNIT)
    assert edge["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert edge["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert edge["NoNewPrivileges"] == "yes"
    assert edge["ProtectSystem"] == "strict"
    assert edge["PrivateTmp"] == "yes"
    assert edge["LimitNOFILE"] == "1048576"
    assert edge["Restart"] == "on-failure"
    assert edge["User"] != "root"


def test_edge_unit_keeps_its_data_in_its_state_directory() -> None:
    """One data dir for the unit, its environment (used by `relay token`) and edge.yml."""
    edge = service(EDGE_UNIT)
    config = load_edge_config(ROOT / "deploy" / "edge.yml", {})
    state = Path("/var/lib") / edge["StateDirectory"]
    assert environment(EDGE_UNIT)["RELAY_DATA_DIR"] == str(state)
    assert config.data_dir == state
    assert edge["StateDirectoryMode"] == "0700"
    program, command, *args = edge["ExecStart"].split()
    assert (program, command) == (INSTALLED_RELAY, "edge")
    assert args == ["--config", f"/etc/{edge['ConfigurationDirectory']}/edge.yml"]


def test_edge_unit_does_not_restart_on_a_configuration_error() -> None:
    assert service(EDGE_UNIT)["RestartPreventExitStatus"].split() == [str(EXIT_USAGE)]


def test_agent_unit_reads_its_config_as_a_private_credential() -> None:
    agent = service(AGENT_UNIT)
    name, _, source = agent["LoadCredential"].partition(":")
    assert source == "/etc/relay/agents/%i.yml"
    assert agent["ExecStart"].split() == [
        INSTALLED_RELAY,
        "start",
        "--config",
        "${CREDENTIALS_DIRECTORY}/" + name,
    ]
    assert agent["DynamicUser"] == "yes"
    assert agent["CapabilityBoundingSet"] == ""
    assert agent["NoNewPrivileges"] == "yes"


def test_agent_unit_does_not_restart_on_refusals_that_cannot_heal() -> None:
    """The agent's exit codes for a config error, a refused token and a refused bind."""
    prevent = {int(code) for code in service(AGENT_UNIT)["RestartPreventExitStatus"].split()}
    assert prevent == {EXIT_USAGE, EXIT_AUTH, EXIT_BIND}
    assert service(AGENT_UNIT)["Restart"] == "on-failure"
