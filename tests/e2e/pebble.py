"""Pebble (Let's Encrypt's test ACME CA, Debian package ``pebble``) for end-to-end tests.

Debian ships ``/usr/bin/pebble`` and ``/usr/bin/pebble-challtestsrv`` but not pebble's test
certificates, so the HTTPS certificate pebble serves its directory with is issued here by a
throwaway :class:`~relay.certs.local_ca.LocalCA` (its ``ca.pem`` is the ``ca_bundle`` the ACME
client trusts). ``pebble-challtestsrv`` runs only as the mock DNS server (every name -> A
127.0.0.1, no AAAA); pebble's validation is real (no ``PEBBLE_VA_ALWAYS_VALID``) and connects to
the challenge servers below. Everything listens on 127.0.0.1; processes are stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import urllib.request
from collections.abc import Callable
from pathlib import Path

from relay.certs.acme_issuer import ACME_TLS_ALPN
from relay.certs.local_ca import LocalCA
from relay.certs.manager import context_from_pem
from tests.e2e.procs import Proc, free_port, wait_for_port

PEBBLE = Path("/usr/bin/pebble")
CHALLTESTSRV = Path("/usr/bin/pebble-challtestsrv")


class Pebble:
    """A running pebble + mock DNS. Use as a context manager (stops both by PID)."""

    def __init__(self, workdir: Path, *, http_port: int, tls_port: int) -> None:
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
        self.config_file = workdir / "pebble-config.json"
        self.config_file.write_text(json.dumps(config))
        self.procs: list[Proc] = []

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
        env = {"PEBBLE_VA_NOSLEEP": "1"}
        pebble = Proc(
            [
                str(PEBBLE),
                "-config",
                str(self.config_file),
                "-dnsserver",
                f"127.0.0.1:{self.dns_port}",
            ],
            env=env,
        )
        self.procs.append(pebble)
        wait_for_port(self.acme_port, timeout=15, proc=pebble.proc)
        wait_for_port(self.mgmt_port, timeout=15, proc=pebble.proc)
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=5)
        self.procs.clear()

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def output(self) -> str:
        return "\n".join(p.text() for p in self.procs)

    def root_pem(self) -> bytes:
        """Pebble's issuing root (management API ``/roots/0``); blocking, 10 s timeout."""
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        url = f"https://127.0.0.1:{self.mgmt_port}/roots/0"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            data: bytes = resp.read()
        return data


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
