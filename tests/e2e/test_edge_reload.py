"""SIGHUP reloads the edge's configuration file (the same flags still on top) without
dropping a stream: live keys take effect (the access log starts a new file after a
rotation's rename, a shorter idle timeout cuts new silent connections, rotated certificate
files are served to new TLS connections), a key that needs a restart is named in one
WARNING and changes nothing, and a file that no longer loads is refused in one ERROR line
while the edge serves on."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from relay import __version__
from relay.certs.local_ca import LocalCA
from tests.e2e.http_helpers import host_of, raw_request, read_until_closed, web_agent
from tests.e2e.origin import Origin
from tests.e2e.procs import Agent, EchoServer, Edge, Proc, payload
from tests.e2e.test_access_log_and_request_metrics import lines_of
from tests.e2e.test_admin_listener import get, sample
from tests.e2e.test_tls_endpoints import PASS_NAME, TlsEchoServer, tls_echo

BASE = "relay.localhost"  # tests/e2e/procs.py's Edge passes --base-domain relay.localhost


def https_fingerprint(port: int, name: str, ca_file: Path) -> tuple[str, bytes]:
    """The SHA-256 fingerprint of the certificate a new TLS connection for ``name`` gets
    (verified against ``ca_file``), and the response to GET / on it."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        response = read_until_closed(tls)
    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex(), response


def fingerprint_of(chain_pem: bytes) -> str:
    return x509.load_pem_x509_certificate(chain_pem).fingerprint(hashes.SHA256()).hex()


def echo_chunk(sock: socket.socket, seed: int, size: int = 300_000) -> None:
    """Send ``size`` bytes on a live echo stream and check what comes back by its hash."""
    data = payload(seed, size)
    sock.sendall(data)
    got = hashlib.sha256()
    received = 0
    deadline = time.monotonic() + 30
    while received < size and time.monotonic() < deadline:
        chunk = sock.recv(min(65536, size - received))
        assert chunk, "the stream was closed"
        got.update(chunk)
        received += len(chunk)
    assert received == size
    assert got.hexdigest() == hashlib.sha256(data).hexdigest()


def cut_after(port: int, limit: float) -> tuple[float, bytes]:
    """Open a connection that sends nothing: how long until the edge cuts it (at most
    ``limit`` seconds of waiting), and what it said first."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        try:
            said = sock.recv(65536)
        except ConnectionResetError:
            said = b""
        except TimeoutError:
            return limit, b"(still open)"
    return time.monotonic() - started, said


def still_open(sock: socket.socket) -> bool:
    sock.settimeout(0.3)
    try:
        return sock.recv(1) != b""
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False


def lines_with(proc: Proc, *needles: str) -> list[str]:
    return [line for line in proc.output if all(n in line for n in needles)]


def wait_lines(proc: Proc, needle: str, count: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = lines_with(proc, needle)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{count} lines with {needle!r} wanted:\n{proc.text()}")


@pytest.mark.timeout(150)
def test_sighup_applies_live_keys_without_dropping_a_stream_and_names_the_rest(
    tmp_path: Path, echo: EchoServer, origin: Origin, agents: list[Agent]
) -> None:
    operator_ca = LocalCA.load_or_create(tmp_path / "operator-ca")
    cert_file, key_file = tmp_path / "site.pem", tmp_path / "site.key"
    first_chain, first_key = operator_ca.issue_server_cert([f"*.{BASE}"], [])
    cert_file.write_bytes(first_chain)
    key_file.write_bytes(first_key)
    access_log = tmp_path / "access.log"
    config_file = tmp_path / "edge.yml"
    settings = {
        "cert_issuer": "files",
        "cert_file": str(cert_file),
        "key_file": str(key_file),
        "access_log": str(access_log),
        "http_idle_timeout": 60,
        "region": "before",
    }
    config_file.write_text(yaml.safe_dump(settings))
    # The flag must keep beating the file on every reload.
    edge = Edge(
        tmp_path / "edge",
        extra=["--config", str(config_file), "--http-header-timeout", "60"],
    ).start()
    assert edge.proc is not None
    try:
        _, token = edge.token()
        tcp = Agent(edge, token, echo.port)
        agents.append(tcp)
        tcp_port = tcp.wait_bound()
        web_agent(edge, agents, str(origin.port), "--subdomain", "app")
        app = f"app.{BASE}"

        with socket.create_connection(("127.0.0.1", tcp_port), timeout=30) as stream:
            echo_chunk(stream, 1)
            seen, response = https_fingerprint(edge.https_port, app, operator_ca.ca_pem_path)
            assert seen == fingerprint_of(first_chain)
            assert response.startswith(b"HTTP/1.1 200"), response
            assert any(app in line for line in lines_of(access_log, 1))
            old_silent = socket.create_connection(("127.0.0.1", edge.http_port), timeout=10)

            # Rotate: the access log renamed, the certificate files replaced in place; and
            # the file changed: two live keys, one flag-overridden key, one restart key.
            access_log.rename(tmp_path / "access.log.1")
            second_chain, second_key = operator_ca.issue_server_cert([f"*.{BASE}"], [])
            key_file.write_bytes(second_key)
            cert_file.write_bytes(second_chain)
            settings.update(http_idle_timeout=1, http_header_timeout=0.3, region="after")
            settings["log_format"] = "text"  # unchanged: not named anywhere
            config_file.write_text(yaml.safe_dump(settings))
            os.kill(edge.proc.pid, signal.SIGHUP)
            info = edge.proc.wait_line("INFO relay.edge: reloaded", timeout=10)
            assert "changed http_idle_timeout;" in info, info
            assert "kept region" in info and "access log reopened" in info, info
            warnings = lines_with(edge.proc, "WARNING", "restart the edge to change it")
            assert len(warnings) == 1, edge.proc.text()
            assert "region (stays before, asked after)" in warnings[0]
            assert "http_header_timeout" not in edge.proc.text()  # the flag still wins

            # The stream carries on; live keys took effect for what starts now.
            echo_chunk(stream, 2)
            seen, response = https_fingerprint(edge.https_port, app, operator_ca.ca_pem_path)
            assert seen == fingerprint_of(second_chain)
            assert response.startswith(b"HTTP/1.1 200"), response
            unknown, _ = https_fingerprint(
                edge.https_port, f"nobody.{BASE}", operator_ca.ca_pem_path
            )
            assert unknown == fingerprint_of(second_chain)  # the stand-in too
            assert any(app in line for line in lines_of(access_log, 1))
            # The renamed file has the one request from before the reload, and no more.
            assert len(lines_of(tmp_path / "access.log.1", 1)) == 1
            took, said = cut_after(edge.http_port, limit=10)
            assert took < 5 and said == b"", (took, said)  # idle (1 s), not header (60 s)
            assert still_open(old_silent), "a connection from before kept its limits"
            old_silent.close()
            _, metrics = get(edge, "/metrics")
            build = {"version": __version__, "role": "edge", "region": "before"}
            assert sample(metrics, "relay_build_info", **build) == 1

            # A file that no longer loads: refused in one ERROR line, nothing changes.
            config_file.write_text("http_idle_timeout: [60\n")
            os.kill(edge.proc.pid, signal.SIGHUP)
            errors = wait_lines(edge.proc, " ERROR ", 1)
            time.sleep(0.5)  # a second ERROR line would be here by now
            assert lines_with(edge.proc, " ERROR ") == errors and len(errors) == 1
            assert "refused" in errors[0] and "RLY_401" in errors[0], errors
            echo_chunk(stream, 3)
            took, said = cut_after(edge.http_port, limit=10)
            assert took < 5 and said == b"", (took, said)  # still the reloaded 1 s
            assert edge.proc.proc.poll() is None
        for agent in agents:
            agent.stop()
        assert edge.stop() == 0
    finally:
        for agent in agents:
            agent.stop()
        edge.stop()


@pytest.mark.timeout(120)
def test_reloads_turn_the_access_log_on_switch_the_log_format_and_raise_the_log_level(
    tmp_path: Path, echo: EchoServer, origin: Origin, agents: list[Agent]
) -> None:
    upstream = TlsEchoServer(tmp_path / "upstream", PASS_NAME)
    config_file = tmp_path / "edge.yml"
    config_file.write_text(yaml.safe_dump({"region": "one"}))
    edge = Edge(tmp_path / "edge", extra=["--config", str(config_file)])
    try:
        edge.start()
        assert edge.proc is not None
        _, token = edge.token()
        tcp = Agent(edge, token, echo.port)
        agents.append(tcp)
        tcp_port = tcp.wait_bound()
        web_agent(edge, agents, str(upstream.port), "--domain", PASS_NAME, kind="tls")
        web = host_of(web_agent(edge, agents, str(origin.port), "--no-https"))
        request = f"GET /one HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n".encode()
        data = payload(7, 50_000)
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=30) as before:
            echo_chunk(before, 8)  # open while the log is turned on: never logged

            # On: the access log, as text.
            access_log = tmp_path / "access.log"
            config_file.write_text(yaml.safe_dump({"region": "one", "access_log": "access.log"}))
            os.kill(edge.proc.pid, signal.SIGHUP)
            info = edge.proc.wait_line("INFO relay.edge: reloaded", timeout=10)
            assert "changed access_log;" in info, info
            _, back = tls_echo(edge.https_port, upstream, data)
            assert back == data
            with socket.create_connection(("127.0.0.1", tcp_port), timeout=30) as after:
                echo_chunk(after, 9)
            assert raw_request(edge.http_port, request).startswith(b"HTTP/1.1 200")
        lines_of(access_log, 3)
        time.sleep(0.6)  # a line for the connection from before would be here by now
        text = access_log.read_text().splitlines()
        assert sorted(line.split()[1] for line in text) == ["http", "tcp", "tls"], text
        assert any(f" tcp tcp://127.0.0.1:{tcp_port} " in line for line in text), text
        assert any(f" tls tls://{PASS_NAME} " in line for line in text), text
        assert any(" GET /one 200 " in line for line in text), text

        # JSON from now on, in the same file; warnings only: the reload's INFO line is
        # not written, its WARNING is (as JSON).
        quieter = {"access_log": "access.log", "log_format": "json", "log_level": "warning"}
        config_file.write_text(yaml.safe_dump({"region": "two", **quieter}))
        os.kill(edge.proc.pid, signal.SIGHUP)
        warning = json.loads(edge.proc.wait_line("restart the edge to change it", timeout=10))
        assert warning["level"] == "warning"
        assert "region (stays one, asked two)" in warning["message"]
        assert raw_request(edge.http_port, request.replace(b"/one", b"/two")).startswith(
            b"HTTP/1.1 200"
        )
        lines = lines_of(access_log, 4)
        assert lines[:3] == text
        record = json.loads(lines[3])
        assert (record["kind"], record["target"], record["status"]) == ("http", "/two", 200)
        time.sleep(0.5)  # the INFO line, if it were written, would be here by now
        assert len(lines_with(edge.proc, "reloaded")) == 1
        for agent in agents:
            agent.stop()
        assert edge.stop() == 0
    finally:
        for agent in agents:
            agent.stop()
        edge.stop()
        upstream.close()


@pytest.mark.timeout(90)
def test_tls_passthrough_connections_are_in_an_access_log_given_at_start(
    tmp_path: Path, agents: list[Agent]
) -> None:
    """Not a reload, but the same switch: the TLS port must know at start that the edge
    keeps an access log (it was made before the log, and never logged)."""
    upstream = TlsEchoServer(tmp_path / "upstream", PASS_NAME)
    access_log = tmp_path / "access.log"
    edge = Edge(tmp_path / "edge", extra=["--access-log", str(access_log)])
    try:
        edge.start()
        web_agent(edge, agents, str(upstream.port), "--domain", PASS_NAME, kind="tls")
        data = payload(10, 20_000)
        assert tls_echo(edge.https_port, upstream, data)[1] == data
        (line,) = lines_of(access_log, 1)
        assert f" tls tls://{PASS_NAME} 127.0.0.1:" in line, line
    finally:
        for agent in agents:
            agent.stop()
        edge.stop()
        upstream.close()
