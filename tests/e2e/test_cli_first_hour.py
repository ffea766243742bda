"""The rough edges a new user meets in their first hour: what `relay edge` says when it
starts or cannot, signals, the token commands on a wrong data dir, -V and --help."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from relay.config import usable_cores
from tests.e2e.procs import RELAY, Edge, Proc, free_port, free_port_range


def relay(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RELAY, *args], capture_output=True, text=True, timeout=timeout)


def edge_args(
    data_dir: Path, listen: int, http: int, https: int, admin: int | None = None
) -> list[str]:
    low, high = free_port_range()
    return [
        *RELAY,
        "edge",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{listen}",
        "--tcp-ports",
        f"{low}-{high}",
        "--tcp-bind",
        "127.0.0.1",
        "--http-listen",
        f"127.0.0.1:{http}",
        "--https-listen",
        f"127.0.0.1:{https}",
        "--base-domain",
        "relay.localhost",
        "--admin-listen",
        # relay edge's default: a worker per core, each at the admin port + 1 + its index.
        f"127.0.0.1:{admin or free_port_range(usable_cores() + 1)[0]}",
    ]


@pytest.mark.timeout(60)
def test_the_edge_banner_lists_every_listener_and_no_tls_internals(edge: Edge) -> None:
    assert edge.proc is not None
    out = edge.proc.text()  # the fixture waited for the banner's last line
    assert f"agents (TLS)       127.0.0.1:{edge.listen_port}" in out
    assert f"tcp endpoints      127.0.0.1 ports {edge.ports[0]}-{edge.ports[1]}" in out
    assert f"http endpoints     127.0.0.1:{edge.http_port}" in out
    assert f"https/tls (SNI)    127.0.0.1:{edge.https_port}" in out
    assert f"admin              127.0.0.1:{edge.admin_port}" in out
    assert f"--ca-file {edge.ca_file}" in out and "--pin sha256:" in out
    assert "agent link TLS" not in out  # an implementation detail, debug level only


@pytest.mark.timeout(60)
def test_sighup_without_a_config_file_reloads_nothing_and_the_edge_serves_on(edge: Edge) -> None:
    assert edge.proc is not None
    edge.proc.proc.send_signal(signal.SIGHUP)
    edge.proc.wait_line("reloaded the command line: nothing changed", timeout=10)
    time.sleep(0.5)
    assert edge.proc.proc.poll() is None
    with socket.create_connection(("127.0.0.1", edge.listen_port), timeout=5):
        pass  # still listening


@pytest.mark.timeout(60)
@pytest.mark.parametrize("taken", ["--listen", "--http-listen", "--https-listen", "--admin-listen"])
def test_a_listener_address_in_use_is_one_line_with_the_address_and_flag(
    tmp_path: Path, taken: str
) -> None:
    flags = ("--listen", "--http-listen", "--https-listen", "--admin-listen")
    ports = {flag: free_port() for flag in flags}
    with socket.create_server(("127.0.0.1", ports[taken])):
        proc = Proc(edge_args(tmp_path / "edge", *(ports[flag] for flag in flags)))
        try:
            code = proc.wait(30)
        finally:
            proc.stop()
    out = proc.text()
    assert code == 4, out
    assert "Traceback" not in out
    [line] = [line for line in proc.output if "RLY_403" in line]
    assert f"127.0.0.1:{ports[taken]}" in line and taken in line, line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["list", "revoke"])
def test_token_commands_refuse_a_data_dir_that_does_not_exist(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "nowhere"
    args = ["token", command, "--data-dir", str(missing)]
    done = relay(*args, *(["abcdefghijkl"] if command == "revoke" else []))
    assert done.returncode == 1, done
    assert "RLY_402" in done.stderr and "no edge data directory" in done.stderr
    assert not missing.exists()  # nothing was created


@pytest.mark.timeout(60)
def test_token_list_shows_status_expiry_last_use_and_acl(tmp_path: Path) -> None:
    data = tmp_path / "edge"
    made = relay(
        "token", "create", "--data-dir", str(data), "-o", "json", "--expires-in", "2d",
        "--allow", "tcp:*", "--allow", "app.example.com", "--description", "ci box",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token_id = json.loads(made.stdout)["id"]
    listed = relay("token", "list", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == [
        "ID", "STATUS", "CREATED", "EXPIRES", "LAST", "USED", "ALLOW", "DESCRIPTION"
    ]  # fmt: skip
    assert row.split()[:2] == [token_id, "active"]
    assert "tcp:*,app.example.com  ci box" in row
    assert row.count(" - ") == 1  # never used; it has an expiry


@pytest.mark.timeout(60)
def test_version_and_help_show_defaults() -> None:
    for flag in ("-V", "--version"):
        done = relay(flag)
        assert done.returncode == 0 and done.stdout.startswith("relay, version "), done
    helped = relay("http", "--help")
    assert "[default: https]" in helped.stdout  # --https/--no-https
    assert '[default: ""]' not in helped.stdout  # an empty default says nothing
    edge_help = relay("edge", "--help")
    assert "--cert-file" in edge_help.stdout and "--key-file" in edge_help.stdout
    for line in edge_help.stdout.split("\n  -")[1:]:
        assert len(line.split()) > 1, f"an option without help: {line!r}"


@pytest.mark.timeout(90)
def test_the_files_issuer_works_from_the_command_line(tmp_path: Path) -> None:
    from relay.certs.local_ca import LocalCA

    ca = LocalCA.load_or_create(tmp_path / "ca-home")
    cert_pem, key_pem = ca.issue_server_cert(["*.files.test", "files.test"], [])
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    args = edge_args(tmp_path / "edge", free_port(), free_port(), free_port())
    proc = Proc(
        [
            *args,
            "--cert-issuer",
            "files",
            "--cert-file",
            str(tmp_path / "cert.pem"),
            "--key-file",
            str(tmp_path / "key.pem"),
        ]
    )
    try:
        line = proc.wait_line("https/tls (SNI)", timeout=30)
        assert "certificates: files" in line
    finally:
        proc.stop()
