"""`relay keys rotate` while an edge serves https: not one visitor fails during or after the
rotation, a SIGHUP'd edge reads the new keys and opens every re-wrapped certificate key (one
the edge never had in memory included), an edge that was not told opens a key re-wrapped
under a key it never read, and retiring the old keys leaves everything working. All
processes are real, on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.certs.local_ca import LocalCA
from relay.certs.sealed import CERTS_OWNER, cert_paths, sealed_files
from relay.control.keyring import KEK_ENV, KEK_FILE_ENV, kek_id
from relay.control.secrets import SecretBox, sealed_key_id
from tests.e2e.http_helpers import read_until_closed, web_agent
from tests.e2e.origin import Origin
from tests.e2e.procs import RELAY, Agent, Edge, Proc

BASE = "relay.localhost"  # tests/e2e/procs.py's Edge passes --base-domain relay.localhost


def https_get(port: int, name: str, ca_file: Path) -> tuple[str, bytes]:
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


class Visitors:
    """New https connections to ``name``, one after another in a thread, until stopped:
    each must complete its handshake and get the origin's answer."""

    def __init__(self, port: int, name: str, ca_file: Path) -> None:
        self.port, self.name, self.ca_file = port, name, ca_file
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                _, response = https_get(self.port, self.name, self.ca_file)
            except (OSError, AssertionError) as exc:
                self.failures.append(repr(exc))
            else:
                if response.startswith(b"HTTP/1.1 200") and response.endswith(b"origin ok /"):
                    self.ok += 1
                else:
                    self.failures.append(response[:200].decode("latin-1"))
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(20)


def plant(data_dir: Path, name: str) -> str:
    """Store a certificate for ``name`` the way the edge does (key sealed under the data
    directory's current KEK) while the edge runs: it is only read when ``name`` is bound.
    Returns the certificate's fingerprint."""
    chain, key = LocalCA.load_or_create(data_dir).issue_server_cert([name], [], days=30)
    cert_path, key_path = cert_paths(data_dir / "certs", name)
    sealed = SecretBox.load(data_dir, environ={}).seal(key, owner=CERTS_OWNER, name=name)
    key_path.write_bytes(sealed)
    key_path.chmod(0o600)
    cert_path.write_bytes(chain)
    return x509.load_pem_x509_certificate(chain).fingerprint(hashes.SHA256()).hex()


def relay_keys(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (KEK_ENV, KEK_FILE_ENV)}
    return subprocess.run(
        [*RELAY, "keys", *args, "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def current(data_dir: Path) -> str:
    return kek_id((data_dir / "kek").read_bytes())


def blob_ids(data_dir: Path) -> set[str]:
    items, _ = sealed_files(data_dir)
    return {sealed_key_id(i.path.read_bytes()) for i in items}


def wait_line(proc: Proc, *needles: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in proc.output:
            if all(n in line for n in needles):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line with {needles!r}:\n{proc.text()}")


@pytest.mark.timeout(240)
def test_https_keeps_working_through_rotation_sighup_and_retirement(
    edge: Edge, origin: Origin, agents: list[Agent]
) -> None:
    assert edge.proc is not None
    data_dir = edge.data_dir
    app = f"app.{BASE}"
    web_agent(edge, agents, str(origin.port), "--subdomain", "app")
    assert https_get(edge.https_port, app, edge.ca_file)[1].endswith(b"origin ok /")
    first = current(data_dir)
    planted = {n: plant(data_dir, f"{n}.{BASE}") for n in ("one", "two")}
    assert blob_ids(data_dir) == {first}

    visitors = Visitors(edge.https_port, app, edge.ca_file)
    try:
        out = relay_keys(data_dir, "rotate")
        assert out.returncode == 0, out.stdout + out.stderr
        second = current(data_dir)
        assert f"re-wrapped 3 secrets under {second}" in out.stdout
        assert blob_ids(data_dir) == {second}

        # SIGHUP: the edge reads the keys again and checks every stored key opens with them.
        os.kill(edge.proc.pid, signal.SIGHUP)
        wait_line(edge.proc, f"key-encryption keys read again: current {second}, 2 keys")
        assert "3 of 3 stored certificate keys open" in wait_line(edge.proc, f"current {second}")
        out = relay_keys(data_dir, "retire")
        assert out.returncode == 0 and f"retired {first}" in out.stdout, out.stderr
        os.kill(edge.proc.pid, signal.SIGHUP)
        wait_line(
            edge.proc,
            f"key-encryption keys read again: current {second}, 1 keys; 3 of 3 stored",
        )

        # A key re-wrapped under the new key, never in the edge's memory: it opens.
        web_agent(edge, agents, str(origin.port), "--subdomain", "one")
        fingerprint, response = https_get(edge.https_port, f"one.{BASE}", edge.ca_file)
        assert fingerprint == planted["one"]
        assert response.endswith(b"origin ok /")

        # Rotated again and not told: the edge meets a key id it never read, reads the
        # key files again and opens it.
        out = relay_keys(data_dir, "rotate")
        assert out.returncode == 0, out.stdout + out.stderr
        third = current(data_dir)
        web_agent(edge, agents, str(origin.port), "--subdomain", "two")
        fingerprint, response = https_get(edge.https_port, f"two.{BASE}", edge.ca_file)
        assert fingerprint == planted["two"]
        assert response.endswith(b"origin ok /")
        wait_line(edge.proc, f"key-encryption keys re-read: current {third} (was {second})")
        out = relay_keys(data_dir, "retire")
        assert out.returncode == 0 and f"retired {second}" in out.stdout, out.stderr
        time.sleep(0.5)  # visitors keep coming after the last step too
    finally:
        visitors.stop()
    assert not visitors.failures, visitors.failures[:5]
    assert visitors.ok >= 10
    for line in edge.proc.output:
        assert "does not open" not in line and "unusable" not in line, line
    for name in (app, f"one.{BASE}", f"two.{BASE}"):
        assert https_get(edge.https_port, name, edge.ca_file)[1].endswith(b"origin ok /")

    # Only ciphertext at rest: no private key of a sealed secret, in any form, in any file
    # of the live edge's data directory (its SQLite database and WAL included).
    box = SecretBox.load(data_dir, environ={})
    items, _ = sealed_files(data_dir)
    assert len(items) == 3
    dump = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    assert data_dir / "relay.db" in dump
    for item in items:
        pem = box.open(item.path.read_bytes(), owner=item.owner, name=item.name)
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        for path, data in dump.items():
            for needle in (pem, der, scalar, scalar.hex().encode()):
                assert needle not in data, path
