"""The edge's web listeners: plain HTTP, and the TLS port (https termination + tls
passthrough), with the certificate manager behind them."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay._httpfront import HttpVisitor
from relay.certs.issuers import FileIssuer, LocalCAIssuer
from relay.certs.local_ca import LocalCA
from relay.certs.manager import CertificateManager
from relay.config import parse_host_port
from relay.control.secrets import SecretBox
from relay.edge.http import HttpFront
from relay.edge.tls_front import TlsFront
from relay.errors import ConfigError, UnsupportedIdentifier

if TYPE_CHECKING:
    from relay.edge.routes import HostEndpoint
    from relay.edge.server import Edge

log = logging.getLogger("relay.edge.web")


class WebFronts:
    def __init__(self, edge: Edge, edge_cert: Path, edge_key: Path) -> None:
        self.edge = edge
        self.config = edge.config
        self.edge_cert = edge_cert
        self.edge_key = edge_key
        self.http_server: asyncio.AbstractServer | None = None
        self.tls_front: TlsFront | None = None
        self.http_port: int | None = None
        self.https_port: int | None = None
        self.http: HttpFront | None = None
        self.https: HttpFront | None = None
        self.certs: CertificateManager | None = None
        self.acme: Any = None
        self._renewals: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._issuing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        self.certs = self._certificate_manager()
        limits: dict[str, Any] = {
            "loop": loop,
            "max_head": config.http_max_head,
            "max_headers": config.http_max_headers,
            "max_body": config.http_max_body,
            "header_timeout": config.http_header_timeout,
            "idle_timeout": config.http_idle_timeout,
        }
        self.http = HttpFront(
            self.edge.http_routes,
            acme_responder=self._acme_http01,
            redirect_to_https=self._https_location if config.https_redirect else None,
            **limits,
        )
        self.https = HttpFront(self.edge.sni_routes, **limits)
        if config.http_listen:
            host, port = parse_host_port(config.http_listen, what="http_listen")
            http = self.http
            self.http_server = await loop.create_server(
                lambda: HttpVisitor(http, "http"), host, port, reuse_address=True, backlog=1024
            )
            self.http_port = self.http_server.sockets[0].getsockname()[1]
        if config.https_listen:
            host, port = parse_host_port(config.https_listen, what="https_listen")
            self.tls_front = TlsFront(
                self.edge.sni_routes,
                self.https,
                context_for=self.certs.context_for,
                acme_context_for=self._acme_tls_alpn if self.acme is not None else None,
                hello_timeout=config.http_header_timeout,
            )
            self.https_port = self.tls_front.listen(host, port)[1]
        self._renewals = loop.create_task(self.certs.run_renewals(self._stop))

    def _certificate_manager(self) -> CertificateManager:
        config = self.config
        box = SecretBox.load(config.data_dir)
        if config.cert_issuer == "files":
            if config.cert_file is None or config.key_file is None:
                raise ConfigError("cert_issuer files needs cert_file and key_file")
            issuer: Any = FileIssuer(config.cert_file, config.key_file)
        elif config.cert_issuer == "acme":
            from relay.certs.acme_issuer import AcmeIssuer

            if not config.acme_directory:
                raise ConfigError("cert_issuer acme needs acme_directory")
            issuer = AcmeIssuer(
                config.acme_directory,
                config.acme_email,
                config.data_dir,
                box,
                ca_bundle=config.acme_ca_bundle,
                challenge="tls-alpn-01" if config.acme_challenge == "tls-alpn-01" else "http-01",
            )
            self.acme = issuer
        else:
            issuer = LocalCAIssuer(LocalCA.load_or_create(config.data_dir))
        return CertificateManager(
            config.data_dir,
            issuer,
            box,
            issue_on_demand=True,
            allowed=self._serves_https,
        )

    def _serves_https(self, name: str) -> bool:
        endpoint = self.edge.sni_routes.lookup(name)
        return endpoint is not None and endpoint.kind == "https"

    def check_servable(self, hostname: str) -> None:
        """Refuse at bind an https name the issuer can never certify (RLY_806): an ACME
        wildcard (DNS-01 is not supported) would otherwise be accepted and stay dark."""
        if hostname.startswith("*.") and self.acme is not None:
            raise UnsupportedIdentifier(
                f"the edge's ACME issuer cannot certify the wildcard {hostname} "
                "(it would need a DNS-01 challenge); bind the names one by one"
            )

    def certificate_wanted(self, endpoint: HostEndpoint) -> None:
        """An https endpoint was bound (or taken back): make sure a certificate exists
        (ACME issues ahead of the first visitor; the local CA also issues on demand)."""
        hostname = endpoint.hostname
        if self.certs is None or (hostname.startswith("*.") and self.acme is not None):
            return
        task = asyncio.get_running_loop().create_task(self._ensure(hostname))
        self._issuing.add(task)
        task.add_done_callback(self._issuing.discard)

    async def _ensure(self, hostname: str) -> None:
        assert self.certs is not None
        try:
            await self.certs.ensure(hostname)
        except Exception as exc:  # logged; the renewal loop retries with backoff
            log.warning("certificate for %s not issued yet: %s", hostname, exc)

    def _acme_http01(self, token: str) -> bytes | None:
        if self.acme is None:
            return None
        response: bytes | None = self.acme.http01_response(token)
        return response

    def _acme_tls_alpn(self, name: str) -> ssl.SSLContext | None:
        pair = self.acme.tls_alpn01_certificate(name) if self.acme is not None else None
        if pair is None:
            return None
        from relay.certs.manager import context_from_pem

        return context_from_pem(pair[0], pair[1], alpn=("acme-tls/1",))

    def _https_location(self, hostname: str, url: bytes) -> str | None:
        endpoint = self.edge.sni_routes.lookup(hostname)
        if endpoint is None or endpoint.kind != "https" or self.https_port is None:
            return None
        port = self.public_port("https")
        suffix = "" if port == 443 else f":{port}"
        return f"https://{hostname}{suffix}{url.decode('latin-1')}"

    def public_port(self, kind: str) -> int:
        if kind == "http":
            return self.config.http_public_port or self.http_port or 80
        return self.config.https_public_port or self.https_port or 443

    def close(self) -> None:
        """Stop taking visitors (drain)."""
        if self.http_server is not None:
            self.http_server.close()
            self.http_server = None
        if self.tls_front is not None:
            self.tls_front.close()
            self.tls_front = None

    async def stop(self) -> None:
        self.close()
        self._stop.set()
        for task in [self._renewals, *self._issuing]:
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in [self._renewals, *self._issuing] if t is not None),
            return_exceptions=True,
        )
