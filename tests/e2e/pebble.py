"""Pebble (Let's Encrypt's test ACME CA, Debian package ``pebble``) for end-to-end tests.

Debian ships ``/usr/bin/pebble`` and ``/usr/bin/pebble-challtestsrv`` but not pebble's test
certificates, so the HTTPS certificate pebble serves its directory with is issued here by a
throwaway :class:`~relay.certs.local_ca.LocalCA` (its ``ca.pem`` is the ``ca_bundle`` the ACME
client trusts). ``pebble-challtestsrv`` runs only as the mock DNS server (every name -> A
127.0.0.1, no AAAA); pebble's validation is real (no ``PEBBLE_VA_ALWAYS_VALID``) and connects to
the challenge servers below. Everything listens on 127.0.0.1; processes are stopped by PID.

Options: ``validity`` (seconds) is pebble's ``certificateValidityPeriod`` (short-lived
certificates for renewal tests); ``env`` adds pebble environment variables, e.g.
``PEBBLE_WFE_NONCEREJECT=0`` where a test counts orders (pebble otherwise rejects 5% of good
nonces, and a failed attempt is ordered again). A :class:`Pebble` can be stopped and started
again on the same ports (a CA that was down); it then has a new root and forgets accounts.

:class:`AcmeProxy` is a real HTTPS server in front of pebble that counts the new orders it
passes and can answer some of them ``429 rateLimited`` with a ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import json
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from relay.certs.acme_issuer import ACME_TLS_ALPN
from relay.certs.local_ca import LocalCA
from relay.certs.manager import context_from_pem
from tests.e2e.procs import Proc, free_port, wait_for_port

PEBBLE = Path("/usr/bin/pebble")
CHALLTESTSRV = Path("/usr/bin/pebble-challtestsrv")
#: Skips a test on a machine without pebble (the tests' own install script brings it).
needs_pebble = pytest.mark.skipif(
    not PEBBLE.exists() or not CHALLTESTSRV.exists(),
    reason="pebble not installed (scripts/install-test-deps.sh)",
)


class Pebble:
    """A running pebble + mock DNS. Use as a context manager (stops both by PID)."""

    def __init__(
        self,
        workdir: Path,
        *,
        http_port: int,
        tls_port: int,
        validity: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca = LocalCA.load_or_create(workdir / "pebble-tls")
        chain, key = self.ca.issue_server_cert(["localhost"], ["127.0.0.1"])
        cert_file, key_file = workdir / "pebble-cert.pem", workdir / "pebble-key.pem"
        cert_file.write_bytes(chain)
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        self.acme_port, self.mgmt_port = free_port(), free_port()
        self.dns_port, self.dns_mgmt_port = free_port(), free_port()
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.acme_port}",
                "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                "certificate": str(cert_file),
                "privateKey": str(key_file),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        if validity is not None:
            config["pebble"]["certificateValidityPeriod"] = validity
        self.env = {"PEBBLE_VA_NOSLEEP": "1", **(env or {})}
        self.config_file = workdir / "pebble-config.json"
        self.config_file.write_text(json.dumps(config))
        self.procs: list[Proc] = []
        self.past_output: list[str] = []  # of processes stopped before

    @property
    def ca_bundle(self) -> Path:
        """Trust anchor for pebble's own HTTPS (directory and management API)."""
        return self.ca.ca_pem_path

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    def start(self) -> Pebble:
        dns = Proc(
            [
                str(CHALLTESTSRV),
                "-dns01",
                f"127.0.0.1:{self.dns_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{self.dns_mgmt_port}",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ]
        )
        self.procs.append(dns)
        wait_for_port(self.dns_mgmt_port, timeout=15, proc=dns.proc)
        pebble = Proc(
            [
                str(PEBBLE),
                "-config",
                str(self.config_file),
                "-dnsserver",
                f"127.0.0.1:{self.dns_port}",
            ],
            env=self.env,
        )
        self.procs.append(pebble)
        wait_for_port(self.acme_port, timeout=15, proc=pebble.proc)
        wait_for_port(self.mgmt_port, timeout=15, proc=pebble.proc)
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=5)
            self.past_output.append(proc.text())
        self.procs.clear()

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def output(self) -> str:
        return "\n".join([*self.past_output, *(p.text() for p in self.procs)])

    def root_pem(self) -> bytes:
        """Pebble's issuing root (management API ``/roots/0``); blocking, 10 s timeout."""
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        url = f"https://127.0.0.1:{self.mgmt_port}/roots/0"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            data: bytes = resp.read()
        return data


# -- a real HTTPS server in front of pebble -------------------------------------------------

#: Request headers not passed on (hop by hop, or recomputed by http.client).
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te"})


class AcmeProxy:
    """An HTTPS reverse proxy on 127.0.0.1 in front of a running :class:`Pebble`.

    Requests keep their Host header, so pebble writes every URL it returns (directory,
    Location, Link, and the JWS ``url`` it checks) for the proxy: the ACME client stays on
    the proxy. It records the time of every newOrder POST (``orders``), and answers the
    next ``n`` of them ``429`` ``urn:ietf:params:acme:error:rateLimited`` with the
    ``Retry-After`` given to :meth:`rate_limit_orders`. Its certificate comes from pebble's
    throwaway CA, so ``pebble.ca_bundle`` trusts both. Stopped by :meth:`stop`.
    """

    def __init__(self, pebble: Pebble) -> None:
        self.pebble = pebble
        self.orders: list[tuple[float, int]] = []  # (wall time, status answered)
        self._reject = 0
        self._retry_after = ""
        self._lock = threading.Lock()
        chain, key = pebble.ca.issue_server_cert(["localhost"], ["127.0.0.1"])
        cert_file = pebble.workdir / "proxy-cert.pem"
        key_file = pebble.workdir / "proxy-key.pem"
        cert_file.write_bytes(chain)
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(str(cert_file), str(key_file))
        self.upstream_ctx = ssl.create_default_context(cafile=str(pebble.ca_bundle))
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_HEAD(self) -> None:
                proxy._forward(self)

            def do_POST(self) -> None:
                proxy._forward(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = server_ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def rate_limit_orders(self, count: int, retry_after: str) -> None:
        with self._lock:
            self._reject = count
            self._retry_after = retry_after

    def order_times(self) -> list[float]:
        with self._lock:
            return [t for t, _ in self.orders]

    def _forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        if handler.command == "POST" and handler.path.rstrip("/").endswith("/order-plz"):
            with self._lock:
                reject = self._reject > 0
                if reject:
                    self._reject -= 1
                self.orders.append((time.time(), 429 if reject else 0))
                retry_after = self._retry_after
            if reject:
                problem = json.dumps(
                    {
                        "type": "urn:ietf:params:acme:error:rateLimited",
                        "detail": "too many new orders recently (test proxy)",
                        "status": 429,
                    }
                ).encode()
                handler.send_response(429)
                handler.send_header("Content-Type", "application/problem+json")
                handler.send_header("Retry-After", retry_after)
                handler.send_header("Content-Length", str(len(problem)))
                handler.end_headers()
                handler.wfile.write(problem)
                return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP}
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.pebble.acme_port, context=self.upstream_ctx, timeout=30
        )
        try:
            conn.request(handler.command, handler.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            handler.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _HOP and name.lower() != "content-length":
                    handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
        except OSError:
            handler.send_error(502)  # pebble is down: the client sees a failing CA
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def __enter__(self) -> AcmeProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- challenge responders (what the edge's fronts will do) ---------------------------------


async def start_http01_server(
    response_for: Callable[[str], bytes | None],
) -> asyncio.Server:
    """A minimal HTTP/1.x responder on 127.0.0.1 for ``/.well-known/acme-challenge/<token>``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            prefix = "/.well-known/acme-challenge/"
            body: bytes | None = None
            if len(parts) == 3 and parts[0] == "GET" and parts[1].startswith(prefix):
                body = response_for(parts[1][len(prefix) :])
            if body is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            await asyncio.wait_for(writer.drain(), timeout=10)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def start_tls_alpn01_server(
    certificate_for: Callable[[str], tuple[bytes, bytes] | None],
) -> asyncio.Server:
    """A TLS server on 127.0.0.1 that presents the RFC 8737 certificate chosen by SNI."""
    base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    base.set_alpn_protocols([ACME_TLS_ALPN])

    def sni(obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> int | None:
        pair = certificate_for(name or "")
        if pair is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        obj.context = context_from_pem(pair[0], pair[1], alpn=[ACME_TLS_ALPN])
        return None

    base.sni_callback = sni

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # the validator only needs the handshake
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=base, ssl_handshake_timeout=10)


def server_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


# -- what the edge's certificate tests share ------------------------------------------------


def acme_flags(directory_url: str, ca_bundle: Path, *, challenge: str = "http-01") -> list[str]:
    """``relay edge`` flags for an ACME issuer (base domain relay.test)."""
    return [
        "--base-domain",
        "relay.test",
        "--cert-issuer",
        "acme",
        "--acme-directory",
        directory_url,
        "--acme-ca-bundle",
        str(ca_bundle),
        "--acme-email",
        "ops@relay.test",
        "--acme-challenge",
        challenge,
    ]


def verified_leaf(port: int, name: str, root_pem: bytes) -> x509.Certificate:
    """One TLS handshake to 127.0.0.1:``port`` for ``name`` trusting only ``root_pem``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=root_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def wait_lines(proc: Proc, needle: str, count: int = 1, timeout: float = 60.0) -> list[str]:
    """Once ``proc`` has printed ``count`` lines containing ``needle``: all of them so far.
    Reads the whole output (not the line queue), so lines printed earlier count too."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in list(proc.output) if needle in line]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline or proc.proc.poll() is not None:
            raise AssertionError(
                f"{len(found)} of {count} lines with {needle!r} within {timeout}s:\n" + proc.text()
            )
        time.sleep(0.1)
