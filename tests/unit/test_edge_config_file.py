"""Edge config: file values, flag overrides, and unknown keys refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import relay.config as config_module
from relay.config import EdgeConfig, load_edge_config
from relay.edge.ports import PortRange
from relay.errors import ConfigError


def test_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("listen: 127.0.0.1:7100\ntcp-ports: 30000-30010\nmux:\n  max_streams: 10\n")
    config = load_edge_config(path, {"listen": "127.0.0.1:7200", "region": None})
    assert config.listen_address() == ("127.0.0.1", 7200)
    assert config.tcp_ports == PortRange(30000, 30010)
    assert config.mux.max_streams == 10
    assert config.region == "local"


@pytest.mark.parametrize(
    "text", ["lisen: 1.2.3.4:5\n", "mux:\n  max_stream: 3\n", "- a\n- b\n", "listen: nope\n"]
)
def test_mistakes_are_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_edge_config(path, {})


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("max_tcp_ports_per_account: true\n", "max_tcp_ports_per_account must be a whole number"),
        ("max_sessions: 0.5\n", "max_sessions must be a whole number, not 0.5"),
        ("http_max_head: lots\n", "http_max_head must be a whole number, not 'lots'"),
        ("mux:\n  max_streams: yes\n", "mux.max_streams must be a whole number"),
    ],
)
def test_a_number_that_is_not_whole_is_refused_not_bent(
    tmp_path: Path, text: str, said: str
) -> None:
    """int() takes YAML's true as 1 and cuts 0.5 to 0 (a limit off): both refused."""
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=said):
        load_edge_config(path, {})
    path.write_text("max_sessions: 2.0\nhttp_max_head: ' 8192 '\n")
    config = load_edge_config(path, {})
    assert (config.max_sessions, config.http_max_head) == (2, 8192)


def test_an_unknown_key_names_the_likely_one_and_every_valid_one(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("lisen: 127.0.0.1:7000\n")
    with pytest.raises(ConfigError) as excinfo:
        load_edge_config(path, {})
    message = str(excinfo.value)
    assert "'lisen' (did you mean 'listen'?)" in message
    assert "valid settings: " in message and "base_domain" in message and "max_sessions" in message


def test_relative_paths_in_a_file_are_relative_to_the_file_and_flags_to_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "edge.yaml"
    path.write_text("data_dir: data\ncert_file: tls/cert.pem\nkey_file: /abs/key.pem\n")
    monkeypatch.chdir(tmp_path)
    config = load_edge_config(path, {})
    assert config.data_dir == folder / "data"
    assert config.cert_file == folder / "tls" / "cert.pem"
    assert config.key_file == Path("/abs/key.pem")
    flagged = load_edge_config(path, {"cert_file": "here.pem"})
    assert flagged.cert_file == Path("here.pem")  # the shell's cwd, as typed


@pytest.mark.parametrize(
    ("key", "value"),
    [("cluster_listen", "127.0.0.1:0"), ("cluster_advertise", "10.0.0.1:0")],
)
def test_a_cluster_node_with_workers_needs_link_ports_it_can_count_up_from(
    key: str, value: str
) -> None:
    """Worker i of a cluster node links at the port + i: a port 0 has no such run."""
    settings = {
        "cluster_redis": "redis://127.0.0.1:6379",
        "cluster_listen": "127.0.0.1:7400",
        "workers": 2,
        key: value,
    }
    with pytest.raises(ConfigError, match=f"{key} needs a port with several workers"):
        load_edge_config(None, settings)
    load_edge_config(None, {**settings, key: value.replace(":0", ":7400")})


def test_the_admin_listener_of_an_edge_with_workers_needs_a_port() -> None:
    """The supervisor sums its workers' listeners at the port + 1 + i: it must know it."""
    settings = {"workers": 2, "admin_listen": "127.0.0.1:0"}
    with pytest.raises(ConfigError, match="admin_listen needs a port with several workers"):
        load_edge_config(None, settings)
    load_edge_config(None, {**settings, "admin_listen": "127.0.0.1:9190"})
    load_edge_config(None, {**settings, "admin_listen": ""})  # no admin listener at all
    load_edge_config(None, {"workers": 1, "admin_listen": "127.0.0.1:0"})


def test_an_edge_runs_a_worker_per_usable_core_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5})
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(config_module, "CGROUP_CPU_MAX", cpu_max)
    cpu_max.write_text("max 100000\n")  # no quota: the affinity
    assert load_edge_config(None, {}).workers == 6
    cpu_max.write_text("250000 100000\n")  # 2.5 CPUs of quota: 3 workers
    assert load_edge_config(None, {}).workers == 3
    cpu_max.unlink()  # no cgroup v2
    assert load_edge_config(None, {}).workers == 6
    assert load_edge_config(None, {"workers": "1"}).workers == 1
    assert load_edge_config(None, {"workers": "auto"}).workers == 6
    (tmp_path / "edge.yml").write_text("workers: 2\n")
    assert load_edge_config(tmp_path / "edge.yml", {}).workers == 2
    assert EdgeConfig().workers == 1  # an edge built in-process runs no supervisor
