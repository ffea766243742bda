"""The edge's web listeners: plain HTTP, and the TLS port (https termination + tls
passthrough), with the certificate manager behind them.

Certificates: an https endpoint's name is handed to the
:class:`~relay.certs.manager.CertificateManager` once its agent has the Bound reply
(:meth:`WebFronts.certificate_wanted`); from then on the manager keeps it certified — retrying a
failed order with capped backoff for as long as the name is bound — and every step goes to the
agent as a ``CertStatus`` (pending, issued with its expiry, failed with the code, the reason and
when it is tried again).

Retries start ``RELAY_CERT_RETRY_BASE`` seconds after a failure (default 10) and double up to
``RELAY_CERT_RETRY_MAX`` (default 600), jittered; a CA's Retry-After comes first. Both are
environment variables of ``relay edge`` (tests set them shorter).

Visitors the TLS port has no certificate for: where the edge can still present *some*
certificate covering the name, it finishes the handshake and answers with a page instead of a
bare ``unrecognized_name`` alert —

* an unknown name under the base domain: 404 RLY_610, with the local CA's ``*.<base_domain>``
  certificate (issuer ``local``) or the operator's certificate if it covers the name (issuer
  ``files``); an ACME edge has no wildcard (DNS-01 is not supported), so it keeps the alert;
* a bound https name whose certificate is not issued yet: 503 RLY_615, with the same stand-in
  certificates (the local CA's base-domain wildcard serves for every issuer: the visitor sees
  an untrusted certificate, then why). Without one the alert stays, and the edge logs once per
  name why.

Names outside the base domain that no endpoint serves always get the alert.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from relay._httpfront import HttpVisitor
from relay.certs.issuers import FileIssuer, LocalCAIssuer, name_covered
from relay.certs.local_ca import LocalCA
from relay.certs.manager import (
    CertEvent,
    CertificateManager,
    RetryPolicy,
    context_from_pem,
    renewal_time,
)
from relay.certs.order_quota import OrderQuota, share_of
from relay.config import EdgeConfig, parse_host_port
from relay.control.keyring import KeySet
from relay.control.secrets import SecretBox
from relay.edge.http import HttpFront, RouteResult, no_tunnel
from relay.edge.routes import HostEndpoint
from relay.edge.tls_front import TlsFront
from relay.errors import (
    CertificateQuota,
    ConfigError,
    ListenError,
    RelayError,
    UnsupportedIdentifier,
)
from relay.protocol import CertStatus

if TYPE_CHECKING:
    from relay.edge.server import Edge

log = logging.getLogger("relay.edge.web")

#: Environment variables for the certificate retry backoff (seconds; see the module doc).
RETRY_BASE_ENV = "RELAY_CERT_RETRY_BASE"
RETRY_MAX_ENV = "RELAY_CERT_RETRY_MAX"
#: A CertStatus message is one line for a person; CA problem details can be long.
MAX_STATUS_MESSAGE = 1000
#: The operator's certificate files are read again at most this often for stand-ins.
FILES_RELOAD = dt.timedelta(seconds=60)
#: At most this many names remembered as "alert already logged" (each is a bound name).
MAX_ALERT_LOG_NAMES = 10_000


def retry_policy_from_env(env: dict[str, str] | None = None) -> RetryPolicy:
    """The certificate retry backoff, from ``RELAY_CERT_RETRY_BASE``/``_MAX`` if set."""
    env = dict(os.environ) if env is None else env
    default = RetryPolicy()
    values: list[dt.timedelta] = []
    for var, fallback in ((RETRY_BASE_ENV, default.base), (RETRY_MAX_ENV, default.cap)):
        text = env.get(var, "").strip()
        if not text:
            values.append(fallback)
            continue
        try:
            seconds = float(text)
        except ValueError:
            raise ConfigError(f"{var}={text!r} is not a number of seconds") from None
        if not 0 < seconds <= 86400:
            raise ConfigError(f"{var}={text!r} must be between 0 and 86400 seconds")
        values.append(dt.timedelta(seconds=seconds))
    base, cap = values
    if cap < base:
        raise ConfigError(f"{RETRY_MAX_ENV} must not be below {RETRY_BASE_ENV}")
    return RetryPolicy(base=base, cap=cap)


class _AnswerFront(HttpFront):
    """For HTTPS connections the edge finished with a stand-in certificate: every request
    gets an error page, never a stream to an agent."""

    def route(
        self,
        hostname: str,
        url: bytes,
        scheme: str,
        transport: Any,
        accept: str | None,
        tls_endpoint: str | None = None,
        may_hand_off: bool = False,
        head: bool = False,
    ) -> RouteResult:
        endpoint = self.routes.lookup(hostname)
        if (
            endpoint is not None
            and tls_endpoint is not None
            and endpoint.endpoint_id == tls_endpoint
        ):
            return self._error(
                503,
                "RLY_615",
                f"the certificate for {hostname} is not issued yet; "
                "the edge keeps asking for it, try again in a few minutes",
            )
        if endpoint is None:
            return self._error(*no_tunnel(hostname))
        return self._error(421, "RLY_630", f"{hostname} is not the name this TLS connection is for")


#: A stand-in certificate as made: its context, its names, when to make it again.
_Made = tuple[ssl.SSLContext, list[str], dt.datetime]


class _StandIn:
    """A certificate held in memory only (never written: it is cheap to make again), made
    again once two thirds of its lifetime have passed."""

    def __init__(self, names: list[str], make: Callable[[], _Made]) -> None:
        self.names = names
        self._make = make
        self._context: ssl.SSLContext | None = None
        self._renew_at = dt.datetime.min.replace(tzinfo=dt.UTC)

    def context(self) -> ssl.SSLContext | None:
        now = dt.datetime.now(dt.UTC)
        if now >= self._renew_at:  # the first call, time to renew, or to try again
            try:
                made: _Made | None = self._make()
            except (RelayError, OSError) as exc:
                log.warning("stand-in certificate unavailable: %s", exc)
                made = None
            if made is None:
                self._context = None
                self._renew_at = now + FILES_RELOAD  # try again later, not per visitor
                return None
            self._context, self.names, self._renew_at = made
        return self._context

    def covers(self, name: str) -> bool:
        return name_covered(name, self.names)


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
        self.answers: _AnswerFront | None = None
        self.certs: CertificateManager | None = None
        self.box: SecretBox | None = None
        self._next_keys: KeySet | None = None
        self.acme: Any = None
        #: With acme: each account's share of the certificate orders (relay/certs/order_quota.py).
        self.order_quota: OrderQuota | None = None
        self.issuer_kind = "local"
        self._runner: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._base_wildcard: _StandIn | None = None
        self._files: _StandIn | None = None
        self._alert_logged: set[str] = set()

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
            "metrics": self.edge.metrics,
        }
        self.http = HttpFront(
            self.edge.http_routes,
            acme_responder=self._acme_http01,
            redirect_to_https=self._https_location if config.https_redirect else None,
            **limits,
        )
        self.https = HttpFront(self.edge.sni_routes, **limits)
        self.answers = _AnswerFront(self.edge.sni_routes, **limits)
        self._prepare_stand_ins()
        if config.http_listen:
            host, port = parse_host_port(config.http_listen, what="http_listen")
            http = self.http
            try:
                self.http_server = await loop.create_server(
                    lambda: HttpVisitor(http, "http"),
                    host,
                    port,
                    reuse_address=True,
                    reuse_port=self.edge.worker is not None or None,
                    backlog=1024,
                )
            except OSError as exc:
                raise ListenError.for_address(config.http_listen, "--http-listen", exc) from None
            self.http_port = self.http_server.sockets[0].getsockname()[1]
        if config.https_listen:
            host, port = parse_host_port(config.https_listen, what="https_listen")
            self.tls_front = TlsFront(
                self.edge.sni_routes,
                self.https,
                context_for=self.certs.context_for,
                acme_context_for=self._acme_tls_alpn if self.acme is not None else None,
                hello_timeout=config.http_header_timeout,
                fallback_for=self._stand_in_for,
                metrics=self.edge.metrics,
                log_access=self.edge.access_log is not None,
            )
            try:
                self.https_port = self.tls_front.listen(
                    host, port, reuse_port=self.edge.worker is not None
                )[1]
            except OSError as exc:
                self.close()
                raise ListenError.for_address(config.https_listen, "--https-listen", exc) from None
        self._runner = loop.create_task(self.certs.run(self._stop))

    def _certificate_manager(self) -> CertificateManager:
        config = self.config
        box = self.box = SecretBox.load(config.data_dir)
        self.issuer_kind = config.cert_issuer
        if config.cert_issuer == "files":
            if config.cert_file is None or config.key_file is None:
                raise ConfigError("cert_issuer files needs cert_file and key_file")
            issuer: Any = FileIssuer(config.cert_file, config.key_file)
        elif config.cert_issuer == "acme":
            from relay.certs.acme_issuer import AcmeIssuer, AcmeLimits

            if not config.acme_directory:
                raise ConfigError("cert_issuer acme needs acme_directory")
            issuer = AcmeIssuer(
                config.acme_directory,
                config.acme_email,
                config.data_dir,
                box,
                ca_bundle=config.acme_ca_bundle,
                challenge="tls-alpn-01" if config.acme_challenge == "tls-alpn-01" else "http-01",
                limits=AcmeLimits().shared_by(config.workers),
            )
            self.acme = issuer
            self.order_quota = OrderQuota(share_of(config.cert_orders_per_account, config.workers))
        else:
            self.issuer_kind = "local"
            issuer = LocalCAIssuer(LocalCA.load_or_create(config.data_dir))
        return CertificateManager(
            config.data_dir,
            issuer,
            box,
            issue_on_demand=True,
            allowed=self._serves_https,
            bound=self._bound_https,
            on_event=self._certificate_event,
            retry=retry_policy_from_env(),
            order_quota=self.order_quota,
        )

    def _serves_https(self, name: str) -> bool:
        endpoint = self.edge.sni_routes.lookup(name)
        return endpoint is not None and endpoint.kind == "https"

    def _bound_https(self, name: str) -> bool:
        return self._https_endpoint(name) is not None

    def _https_endpoint(self, name: str) -> HostEndpoint | None:
        """The https endpoint bound to exactly ``name`` (a wanted certificate's owner)."""
        endpoint = self.edge.by_key.get(f"sni:{name}")
        if isinstance(endpoint, HostEndpoint) and endpoint.kind == "https":
            return endpoint
        return None

    def check_servable(self, hostname: str) -> None:
        """Refuse at bind an https name the issuer can never certify (RLY_806): an ACME
        wildcard (DNS-01 is not supported) would otherwise be accepted and stay dark."""
        if hostname.startswith("*.") and self.acme is not None:
            raise UnsupportedIdentifier(
                f"the edge's ACME issuer cannot certify the wildcard {hostname} "
                "(it would need a DNS-01 challenge); bind the names one by one"
            )

    # --- certificates for bound names ----------------------------------------------------

    def certificate_wanted(self, endpoint: HostEndpoint) -> None:
        """An https endpoint was bound (or taken back): from now on, for as long as it stays
        bound, its name is kept certified; the agent hears where that stands now and at
        every step (an order that starts now reports itself)."""
        hostname = endpoint.hostname
        if self.certs is None or (hostname.startswith("*.") and self.acme is not None):
            return
        self._alert_logged.discard(hostname)
        record = self.edge.tokens.get(endpoint.holder.token_id)
        try:
            now = self.certs.want(hostname, record.account_id if record is not None else None)
        except RelayError as exc:
            log.warning("certificate for %s cannot be pursued: %s", hostname, exc.one_line())
            return
        if now is not None:
            self._send_status(endpoint, now)

    def certificate_released(self, hostname: str) -> None:
        """The https endpoint of ``hostname`` went: its certificate leaves memory now
        (relay/certs/manager.py ``release``), not at the manager's next pass."""
        if self.certs is not None:
            self.certs.release(hostname)

    def _certificate_event(self, event: CertEvent) -> None:
        if isinstance(event.error, CertificateQuota):
            # Not an attempt: the account's quota put the order off (no CA was asked).
            self.edge.metrics.certificates.labels(self.issuer_kind, "deferred").inc()
        elif event.state != "pending":
            self.edge.metrics.certificates.labels(self.issuer_kind, event.state).inc()
        endpoint = self._https_endpoint(event.name)
        if endpoint is not None:
            if event.state == "issued":
                self._alert_logged.discard(event.name)
            self._send_status(endpoint, event)

    def _send_status(self, endpoint: HostEndpoint, event: CertEvent) -> None:
        session = endpoint.holder.session
        if session is None or session.control is None or session.link is None:
            return
        if session.link.closed:
            return
        expires = event.expires.isoformat(timespec="seconds") if event.expires else ""
        code = message = ""
        if event.state == "failed" and event.error is not None:
            code = event.error.code
            message = _failure_text(event)
        session.control.send(
            CertStatus(
                endpoint.endpoint_id,
                endpoint.hostname,
                event.state,
                self.issuer_kind,
                expires=expires,  # on a failure: the certificate still served, if any
                code=code,
                message=message,
            )
        )

    # --- stand-in certificates for names the TLS port has none for ------------------------

    def _prepare_stand_ins(self) -> None:
        config = self.config
        base = config.base_domain.lower().rstrip(".")
        data_dir = config.data_dir

        def base_wildcard() -> _Made:
            ca = LocalCA.load_or_create(data_dir)
            names = [f"*.{base}"]
            chain, key = ca.issue_server_cert(names, [], days=30)
            leaf = _leaf_times(chain)
            return context_from_pem(chain, key), names, renewal_time(*leaf)

        self._base_wildcard = _StandIn([f"*.{base}"], base_wildcard)
        if config.cert_issuer == "files" and config.cert_file and config.key_file:
            self._files = _files_stand_in(FileIssuer(config.cert_file, config.key_file))

    def _stand_in_for(
        self, name: str, endpoint: HostEndpoint | None
    ) -> tuple[ssl.SSLContext, HttpFront] | None:
        """A certificate the TLS port can finish a handshake with for ``name``, which has no
        certificate of its own, and the front that answers its requests with a page; None:
        refuse with the alert. Called once per such connection, never for names that have
        their certificate."""
        assert self.answers is not None
        name = name.lower().rstrip(".")
        base = self.config.base_domain.lower().rstrip(".")
        if endpoint is None and not name.endswith("." + base):
            return None  # not ours to explain: the alert
        candidates: list[_StandIn] = []
        if self._files is not None:
            candidates.append(self._files)
        if self._base_wildcard is not None and (endpoint is not None or self.acme is None):
            # ACME has no wildcard of its own: an unknown name keeps the alert there.
            candidates.append(self._base_wildcard)
        for stand_in in candidates:
            ctx = stand_in.context()
            if ctx is not None and stand_in.covers(name):
                return ctx, self.answers
        if endpoint is not None:
            self._log_alert_once(name)
        return None

    def _log_alert_once(self, name: str) -> None:
        if name in self._alert_logged:
            return
        if len(self._alert_logged) >= MAX_ALERT_LOG_NAMES:
            self._alert_logged.clear()
        self._alert_logged.add(name)
        status = self.certs.status(name) if self.certs is not None else None
        why = "no order has finished yet"
        if status is not None and status.state == "failed" and status.error is not None:
            why = f"the last order failed: {status.error.one_line()}"
        elif status is not None and status.state == "pending":
            why = "its order is in progress"
        log.warning(
            "TLS visitors for %s get an unrecognized_name alert: its certificate is not issued "
            "yet (%s), and the edge has no other certificate covering %s to explain it with",
            name,
            why,
            name,
        )

    # --- ACME challenges -------------------------------------------------------------------

    def _acme_http01(self, token: str) -> bytes | None:
        if self.acme is None:
            return None
        response: bytes | None = self.acme.http01_response(token)
        return response

    def _acme_tls_alpn(self, name: str) -> ssl.SSLContext | None:
        pair = self.acme.tls_alpn01_certificate(name) if self.acme is not None else None
        if pair is None:
            return None
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

    # --- reload ------------------------------------------------------------------------------

    def prepare_reload(self, config: EdgeConfig) -> FileIssuer | None:
        """What a reload to ``config`` needs that can fail, done before anything changes:
        with the files issuer, the certificate pair read and checked (it is read again on
        every reload, whether or not its paths changed: rotation replaces the files in
        place). The key-encryption keys are read again too (a rotation changed them, a key
        was retired). Raises RelayError: the reload is then refused as a whole."""
        self._next_keys = self.box.read_keys() if self.box is not None else None
        if self.issuer_kind != "files":
            return None
        if config.cert_file is None or config.key_file is None:
            raise ConfigError("cert_issuer files needs cert_file and key_file")
        issuer = FileIssuer(config.cert_file, config.key_file)
        issuer.load()
        return issuer

    def apply_reload(self, config: EdgeConfig, issuer: FileIssuer | None) -> list[str]:
        """Take ``config``'s live settings: HTTP limits and timeouts for connections
        accepted from now on (a connection copies them when it starts), the redirect and
        the public ports for requests and binds from now on, and ``issuer``'s certificates
        (from :meth:`prepare_reload`) for TLS handshakes from now on. Returns the names
        whose certificate was issued again."""
        self.config = config
        self._use_keys()
        for front in (self.http, self.https, self.answers):
            if front is None:
                continue
            front.max_head = config.http_max_head
            front.max_headers = config.http_max_headers
            front.max_body = config.http_max_body
            front.header_timeout = config.http_header_timeout
            front.idle_timeout = config.http_idle_timeout
        if self.http is not None:
            self.http.redirect_to_https = self._https_location if config.https_redirect else None
        if self.tls_front is not None:
            self.tls_front.hello_timeout = config.http_header_timeout
        if self.order_quota is not None and self.certs is not None:
            self.order_quota.per_owner = share_of(config.cert_orders_per_account, config.workers)
            self.certs.quota_changed()
        if issuer is None or self.certs is None:
            return []
        self._files = _files_stand_in(issuer)
        return self.certs.reload_issuer(issuer)

    def _use_keys(self) -> None:
        """Seal and open with the keys :meth:`prepare_reload` read, and say whether every
        stored certificate key still opens with them (an operator who just rotated or
        retired a key learns it now, not when a visitor needs one)."""
        keys, self._next_keys = self._next_keys, None
        if keys is None or self.box is None:
            return
        self.box.use(keys)
        opened, failed = self.certs.check_stored_keys() if self.certs is not None else (0, {})
        log.info(
            "key-encryption keys read again: current %s, %d keys; %d of %d stored "
            "certificate keys open",
            keys.current,
            len(keys.keys),
            opened,
            opened + len(failed),
        )
        for name, why in failed.items():
            log.error("stored certificate key for %s does not open: %s", name, why)

    def adopt_http(self, conn: Any, carried: bytes) -> None:
        """A plain-HTTP visitor another worker accepted and handed over, with the bytes it
        read (at least the first request's head): served here from those bytes on."""
        if self.http_server is None:  # draining: it gets what a closed listener gives
            conn.close()
            return
        http = self.http
        loop = asyncio.get_running_loop()
        task = loop.create_task(
            loop.connect_accepted_socket(lambda: HttpVisitor(http, "http", None, carried), conn)
        )
        task.add_done_callback(_adoption_done)

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
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)


def _adoption_done(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("a handed-over visitor ended before it was served: %s", task.exception())


def _files_stand_in(issuer: FileIssuer) -> _StandIn:
    def files() -> _Made:
        cert = issuer.load()
        ctx = context_from_pem(cert.chain_pem, cert.key_pem)
        # Read the operator's files again now and then: they may be replaced.
        return ctx, cert.names(), dt.datetime.now(dt.UTC) + FILES_RELOAD

    return _StandIn([], files)


def _failure_text(event: CertEvent) -> str:
    assert event.error is not None
    text = str(event.error)
    if len(text) > MAX_STATUS_MESSAGE:  # the reason may be cut, never when it is retried
        text = text[: MAX_STATUS_MESSAGE - 3] + "..."
    if event.expires is not None:
        text = (
            f"renewal failed: {text} (the current certificate stays valid until "
            f"{event.expires.isoformat(timespec='seconds')})"
        )
    if event.next_attempt is None:
        text += "; not retried: this cannot succeed as configured"
    else:
        wait = max((event.next_attempt - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)
        shown = f"{wait:.1f}" if wait < 10 else f"{wait:.0f}"
        text += f"; retrying in {shown}s (at {event.next_attempt.isoformat(timespec='seconds')})"
    return text


def _leaf_times(chain_pem: bytes) -> tuple[dt.datetime, dt.datetime]:
    leaf = x509.load_pem_x509_certificate(chain_pem)
    return leaf.not_valid_before_utc, leaf.not_valid_after_utc
