"""Certificates from an ACME CA (RFC 8555), answering HTTP-01 or TLS-ALPN-01 (RFC 8737).

Built on certbot's ``acme`` library, which is synchronous (``requests``): each order runs in a
worker thread. One call of :meth:`AcmeIssuer.issue` is one attempt (one order): *when* to try
again is the :class:`~relay.certs.manager.CertificateManager`'s decision (capped backoff for as
long as the name is bound), so that a CA that was down for an hour is asked again once it is
back. Failures become typed errors: :class:`~relay.errors.AcmeChallengeFailed` when the CA could
not validate a challenge, :class:`~relay.errors.AcmeError` when it refused a request,
:class:`~relay.errors.AcmeUnavailable` when it could not be reached or failed on its side,
:class:`~relay.errors.UnsupportedIdentifier` for wildcards (they need DNS-01, out of scope) and
IP addresses.

The CA's pace is the CA's: a ``Retry-After`` on any answer (seconds or an HTTP-date; 429
``rateLimited``, 503) holds *every* request to that CA until then — a rate limit may be per
account or per domain, and the answer does not say which — and the failure that reports it is
an :class:`AcmeRetryLater` carrying the time. Two of Let's Encrypt's published limits are kept
on this side too, so that no retry schedule can run into them (:class:`AcmeLimits`): new orders
per account per window, and failed validations per name per hour.

The edge serves the challenges, so this object only *holds* them while an order is pending:

* :meth:`AcmeIssuer.http01_response` — the body for ``/.well-known/acme-challenge/<token>``;
  the edge's HTTP front asks it for any Host before routing.
* :meth:`AcmeIssuer.tls_alpn01_certificate` — the RFC 8737 challenge certificate (SAN = the
  name, critical ``id-pe-acmeIdentifier`` = SHA-256 of the key authorization) that the TLS front
  presents when a ClientHello offers ALPN ``acme-tls/1``.

The account key (ECDSA P-256, ES256) is stored only sealed by the
:class:`~relay.control.secrets.SecretBox`, in ``<data_dir>/acme/<directory hash>/``. Registration
is idempotent: on start the key is presented to ``newAccount`` again, which returns the
existing account (and re-creates it on a CA that forgot it, such as a restarted test CA).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import email.utils
import hashlib
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import requests
from acme import challenges, messages
from acme import errors as acme_errors
from acme.client import ClientNetwork, ClientV2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from josepy.b64 import b64encode
from josepy.errors import DeserializationError
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from relay.certs.acme_challenges import SharedChallenges
from relay.certs.issuers import IssuedCert, normalize_hostname
from relay.certs.local_ca import write_file_atomic
from relay.certs.sealed import (
    ACCOUNT_KEY,
    ACCOUNT_META,
    ACCOUNT_OWNER,
    acme_account_dir,
    acme_account_secret,
    locked,
)
from relay.control.secrets import SecretBox
from relay.errors import (
    AcmeChallengeFailed,
    AcmeError,
    AcmeUnavailable,
    ConfigError,
    RelayError,
    UnsupportedIdentifier,
)

__all__ = [
    "ACME_TLS_ALPN",
    "AcmeIssuer",
    "AcmeLimits",
    "Challenge",
    "parse_retry_after",
    "tls_alpn01_challenge_cert",
]

log = logging.getLogger("relay.certs.acme")

ACME_TLS_ALPN = "acme-tls/1"
#: RFC 8737 id-pe-acmeIdentifier.
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
Challenge = Literal["http-01", "tls-alpn-01"]

#: ACME problem types (urn:ietf:params:acme:error:<code>) that say "not now" rather than "no".
_TRANSIENT_CODES = frozenset({"badNonce", "rateLimited", "serverInternal"})
#: Problem types that mean "the CA could not reach or validate us".
_CHALLENGE_CODES = frozenset(
    {"connection", "dns", "incorrectResponse", "tls", "unauthorized", "caa"}
)
#: A Retry-After further away than this is taken as this (a garbled header must not silence
#: a name for years; Let's Encrypt's longest windows are a week).
MAX_RETRY_AFTER = dt.timedelta(days=30)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_retry_after(value: str | None, now: dt.datetime) -> dt.datetime | None:
    """When a ``Retry-After`` value (RFC 9110 §10.2.3: delay-seconds or an HTTP-date) says
    to ask again; None when there is none or it cannot be read."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return now + min(dt.timedelta(seconds=int(value[:9])), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110: an HTTP-date is always GMT
        when = when.replace(tzinfo=dt.UTC)
    return min(when, now + MAX_RETRY_AFTER)


@dataclass(frozen=True, slots=True)
class AcmeLimits:
    """Limits this side keeps so that no retry schedule runs into the CA's own.

    The defaults are Let's Encrypt's published ones (letsencrypt.org/docs/rate-limits):
    300 new orders per account per 3 hours, 5 failed validations per name per hour. Kept in
    memory (a restart forgets them; the CA's Retry-After still applies).
    """

    orders: int = 300
    orders_window: dt.timedelta = dt.timedelta(hours=3)
    failed_validations: int = 5
    failed_validations_window: dt.timedelta = dt.timedelta(hours=1)

    def shared_by(self, workers: int) -> AcmeLimits:
        """The share of one of ``workers`` processes ordering on one account (each keeps
        its own count): the orders per account split between them, so that together they
        stay within the CA's. Failed validations stay per name: a name is ordered by one
        process at a time (the certificate manager's order lock), nearly always its holder."""
        if workers <= 1:
            return self
        return dataclasses.replace(self, orders=max(1, self.orders // workers))


class _Pace:
    """When this edge may next talk to the CA: its Retry-After, and the limits above.
    Shared by the worker threads of concurrent orders (hence the lock)."""

    def __init__(self, limits: AcmeLimits, clock: Callable[[], dt.datetime]) -> None:
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self.hold_until: dt.datetime | None = None
        self._orders: collections.deque[dt.datetime] = collections.deque()
        self._failures: dict[str, collections.deque[dt.datetime]] = {}

    def hold(self, until: dt.datetime) -> None:
        with self._lock:
            if self.hold_until is None or until > self.hold_until:
                self.hold_until = until
                log.warning("the ACME CA asked to wait until %s", until.isoformat())

    def check(self) -> None:
        """Raise if the CA asked us to wait: no request leaves before its Retry-After."""
        with self._lock:
            hold = self.hold_until
        if hold is not None and hold > self.clock():
            raise AcmeUnavailable(
                f"the ACME CA asked to wait until {hold.isoformat(timespec='seconds')}"
            )

    def not_before(self, name: str) -> dt.datetime | None:
        now = self.clock()
        limits = self.limits
        with self._lock:
            times: list[dt.datetime] = []
            if self.hold_until is not None:
                times.append(self.hold_until)
            orders = self._trim(self._orders, now - limits.orders_window)
            if len(orders) >= limits.orders:
                times.append(orders[-limits.orders] + limits.orders_window)
            failures = self._failures.get(name)
            if failures is not None:
                self._trim(failures, now - limits.failed_validations_window)
                if not failures:
                    del self._failures[name]
                elif len(failures) >= limits.failed_validations:
                    times.append(
                        failures[-limits.failed_validations] + limits.failed_validations_window
                    )
        later = max(times, default=None)
        return later if later is not None and later > now else None

    def reserve_order(self) -> None:
        now = self.clock()
        with self._lock:
            orders = self._trim(self._orders, now - self.limits.orders_window)
            if len(orders) >= self.limits.orders:
                raise AcmeUnavailable(
                    f"{self.limits.orders} ACME orders within "
                    f"{self.limits.orders_window} already (the CA's limit)"
                )
            orders.append(now)

    def validation_failed(self, names: list[str]) -> None:
        now = self.clock()
        with self._lock:
            for name in names:
                self._failures.setdefault(name, collections.deque()).append(now)

    @staticmethod
    def _trim(
        times: collections.deque[dt.datetime], horizon: dt.datetime
    ) -> collections.deque[dt.datetime]:
        while times and times[0] <= horizon:
            times.popleft()
        return times


class _Network(ClientNetwork):
    """acme's network layer, held to the CA's pace: nothing is sent while a Retry-After
    holds, and every Retry-After on an error answer sets the hold."""

    def __init__(self, pace: _Pace, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pace = pace

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self.pace.check()
        response = super()._send_request(method, url, *args, **kwargs)
        if response.status_code >= 400:
            when = parse_retry_after(response.headers.get("Retry-After"), self.pace.clock())
            if when is not None:
                self.pace.hold(when)
        return response


class _Answer(challenges.ChallengeResponse):
    """The empty JSON object (``{}``) that tells the CA a challenge is ready (RFC 8555 7.5.1).

    acme 5 dropped its TLS-ALPN-01 classes; this answers any challenge type alike.
    """

    typ = "relay-answer"  # removed again by ChallengeResponse.to_partial_json

    def __bool__(self) -> bool:
        # A field-less josepy object is an empty mapping, hence falsy, and acme would then
        # send an empty payload: a POST-as-GET that only reads the challenge.
        return True


@dataclass(slots=True)
class _Account:
    directory: messages.Directory
    key: JWKEC
    regr: messages.RegistrationResource


class AcmeIssuer:
    """Issues certificates from the ACME directory at ``directory_url``; one order per
    :meth:`issue` call."""

    def __init__(
        self,
        directory_url: str,
        account_email: str | None,
        data_dir: Path,
        secret_box: SecretBox,
        *,
        ca_bundle: Path | None = None,
        challenge: Challenge = "http-01",
        order_timeout: float = 90.0,
        network_timeout: float = 30.0,
        limits: AcmeLimits | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        if challenge not in ("http-01", "tls-alpn-01"):
            raise ConfigError(f"unsupported ACME challenge {challenge!r}")
        self.directory_url = directory_url
        self.account_email = account_email
        self.challenge: Challenge = challenge
        self.ca_bundle = ca_bundle
        self.box = secret_box
        self.order_timeout = order_timeout
        self.network_timeout = network_timeout
        self.pace = _Pace(limits or AcmeLimits(), clock)
        self.account_dir = acme_account_dir(data_dir, directory_url)
        self._account: _Account | None = None
        self._account_lock = threading.Lock()
        #: Pending challenges, written where every worker of this edge can answer them.
        self.challenges = SharedChallenges(data_dir / "acme" / "challenges", secret_box)

    # -- what the edge calls -----------------------------------------------------------------

    def http01_response(self, token: str) -> bytes | None:
        """The key authorization to serve at ``/.well-known/acme-challenge/<token>``, if that
        token belongs to a pending order."""
        return self.challenges.http01(token)

    def tls_alpn01_certificate(self, server_name: str) -> tuple[bytes, bytes] | None:
        """``(cert PEM, key PEM)`` of the RFC 8737 certificate for a pending ``server_name``."""
        return self.challenges.tls_alpn01(server_name.lower().rstrip("."))

    def not_before(self, hostname: str) -> dt.datetime | None:
        """The earliest time an order for ``hostname`` may be placed (the CA's Retry-After,
        or a limit of :class:`AcmeLimits` reached), or None: now."""
        return self.pace.not_before(hostname.lower().rstrip("."))

    # -- Issuer ------------------------------------------------------------------------------

    async def issue(self, hostnames: list[str]) -> IssuedCert:
        """One order. Raises a typed error when it fails; trying again is the caller's call
        (after :meth:`not_before`)."""
        names = self._check_names(hostnames)
        self.pace.check()
        for name in names:  # whoever calls: a limit reached is not run into
            later = self.pace.not_before(name)
            if later is not None:
                raise AcmeUnavailable(
                    f"not ordering {name} before {later.isoformat(timespec='seconds')}: "
                    "the ACME CA's published limits would be exceeded"
                )
        try:
            return await asyncio.to_thread(self._issue_blocking, names)
        except Exception as exc:
            err = self._classify(exc)
            if isinstance(err, AcmeChallengeFailed):
                self.pace.validation_failed(names)
            raise err from exc

    @staticmethod
    def _check_names(hostnames: list[str]) -> list[str]:
        if not hostnames:
            raise ConfigError("a certificate needs at least one hostname")
        names: list[str] = []
        for h in hostnames:
            try:
                ipaddress.ip_address(h.strip())
            except ValueError:
                pass
            else:
                raise UnsupportedIdentifier(
                    f"ACME certificates for IP addresses ({h}) are not supported"
                )
            n = normalize_hostname(h)
            if n.startswith("*."):
                raise UnsupportedIdentifier(
                    f"{n}: ACME wildcard certificates need the DNS-01 challenge, which relay does "
                    "not support; use the local CA or certificate files for wildcard names"
                )
            if n not in names:
                names.append(n)
        return names

    # -- the blocking order (worker thread) --------------------------------------------------

    def _issue_blocking(self, names: list[str]) -> IssuedCert:
        account = self._get_account()
        net = self._network(account.key)
        net.account = account.regr
        client = ClientV2(account.directory, net)
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        deadline = time.monotonic() + self.order_timeout
        self.pace.reserve_order()
        log.info("ACME order for %s", ", ".join(names))
        orderr = client.new_order(csr.public_bytes(serialization.Encoding.PEM))
        thumb = b64encode(account.key.public_key().thumbprint(hashes.SHA256)).decode()
        tokens: list[str] = []
        alpn_names: list[str] = []
        try:
            pending: list[messages.AuthorizationResource] = []
            for authzr in orderr.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue  # reused authorization
                ident = str(authzr.body.identifier.value).lower()
                challb = self._pick_challenge(authzr, ident)
                token = str(challb.to_partial_json()["token"])
                key_authz = f"{token}.{thumb}"
                if self.challenge == "http-01":
                    self.challenges.put_http01(token, key_authz.encode("ascii"))
                    tokens.append(token)
                else:
                    self.challenges.put_tls_alpn01(
                        ident, tls_alpn01_challenge_cert(ident, key_authz)
                    )
                    alpn_names.append(ident)
                # Not client.answer_challenge: it insists on a Link "up" header that RFC 8555
                # does not require (pebble 2.4 omits it). The authorization is polled below.
                net.post(challb.uri, _Answer(), new_nonce_url=account.directory["newNonce"])
                pending.append(authzr)
            for authzr in pending:
                self._poll_authorization(client, authzr, deadline)
            remaining = max(deadline - time.monotonic(), 1.0)
            # acme's finalization polling honours Retry-After, within this deadline.
            finalize_deadline = dt.datetime.now() + dt.timedelta(seconds=remaining)
            orderr = client.finalize_order(orderr, finalize_deadline)
        finally:
            for token in tokens:
                self.challenges.drop_http01(token)
            for name in alpn_names:
                self.challenges.drop_tls_alpn01(name)
        if not orderr.fullchain_pem:
            raise AcmeError("the ACME CA finalized the order but returned no certificate")
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        issued = IssuedCert.from_pem(orderr.fullchain_pem.encode("ascii"), key_pem)
        log.info("ACME certificate issued for %s (expires %s)", ", ".join(names), issued.not_after)
        return issued

    def _pick_challenge(
        self, authzr: messages.AuthorizationResource, ident: str
    ) -> messages.ChallengeBody:
        offered: list[str] = []
        for challb in authzr.body.challenges:
            typ = str(challb.to_partial_json().get("type"))
            offered.append(typ)
            if typ == self.challenge:
                return challb
        raise AcmeError(
            f"the ACME CA offers no {self.challenge} challenge for {ident} "
            f"(offered: {', '.join(offered) or 'none'})"
        )

    def _poll_authorization(
        self, client: ClientV2, authzr: messages.AuthorizationResource, deadline: float
    ) -> None:
        sleep = 0.2
        while True:
            authzr, response = client.poll(authzr)
            status = authzr.body.status
            if status == messages.STATUS_VALID:
                return
            if status != messages.STATUS_PENDING:
                ident = authzr.body.identifier.value
                problems = [
                    f"{c.to_partial_json().get('type')}: {c.error.description or c.error.code}: "
                    f"{c.error.detail}"
                    for c in authzr.body.challenges
                    if c.error is not None
                ]
                raise AcmeChallengeFailed(
                    f"the ACME CA could not validate {ident} ({status}): "
                    + ("; ".join(problems) or "no detail given")
                )
            # RFC 8555 7.5.1: a pending authorization's Retry-After says when to poll again.
            wait = sleep
            now = self.pace.clock()
            asked = parse_retry_after(response.headers.get("Retry-After"), now)
            if asked is not None:
                wait = max(wait, (asked - now).total_seconds())
            if time.monotonic() + wait > deadline:
                raise AcmeUnavailable(f"authorization {authzr.uri} still pending at the deadline")
            time.sleep(wait)
            sleep = min(sleep * 2, 2.0)

    # -- account -----------------------------------------------------------------------------

    def _network(self, key: JWKEC | None) -> ClientNetwork:
        # requests takes a CA bundle path where acme's signature says bool; acme passes it on.
        verify = cast(bool, str(self.ca_bundle)) if self.ca_bundle is not None else True
        return _Network(
            self.pace,
            key,
            alg=ES256,
            verify_ssl=verify,
            user_agent="relay-edge",
            timeout=int(self.network_timeout),
        )

    def _get_account(self) -> _Account:
        with self._account_lock:
            if self._account is None:
                self._account = self._register()
            return self._account

    def _register(self) -> _Account:
        key = self._load_or_create_account_key()
        net = self._network(key)
        directory = ClientV2.get_directory(self.directory_url, net)
        client = ClientV2(directory, net)
        reg = messages.NewRegistration.from_data(
            email=self.account_email or None, terms_of_service_agreed=True
        )
        try:
            regr = client.new_account(reg)
        except acme_errors.ConflictError as exc:  # the key already has an account
            regr = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        meta = {"directory": self.directory_url, "account": regr.uri, "email": self.account_email}
        write_file_atomic(self.account_dir / ACCOUNT_META, json.dumps(meta).encode(), 0o644)
        log.info("ACME account %s at %s", regr.uri, self.directory_url)
        return _Account(directory, key, regr)

    def _load_or_create_account_key(self) -> JWKEC:
        self.account_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Locked: the workers of one edge start together, and each would otherwise make
        # (and register) an account of its own, of which the last one written stays.
        with locked(self.account_dir):
            return self._load_or_create_account_key_locked()

    def _load_or_create_account_key_locked(self) -> JWKEC:
        path = self.account_dir / ACCOUNT_KEY
        name = acme_account_secret(self.directory_url)
        if path.exists():
            pem = self.box.open(path.read_bytes(), owner=ACCOUNT_OWNER, name=name)
            loaded = serialization.load_pem_private_key(pem, password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise AcmeError(f"{path} does not hold an ECDSA account key")
            return JWKEC(key=loaded)
        new = ec.generate_private_key(ec.SECP256R1())
        pem = new.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        meta = self.account_dir / ACCOUNT_META
        if not meta.exists():
            # The directory URL is part of the key's sealed name: a key rotation needs it
            # beside the key, also when no registration succeeds (then it says no more).
            write_file_atomic(meta, json.dumps({"directory": self.directory_url}).encode(), 0o644)
        write_file_atomic(path, self.box.seal(pem, owner=ACCOUNT_OWNER, name=name), 0o600)
        return JWKEC(key=new)

    # -- error mapping -----------------------------------------------------------------------

    def _classify(self, exc: BaseException) -> RelayError:
        """The RelayError to report for anything an order attempt raised."""
        if isinstance(exc, RelayError):
            return exc
        if isinstance(exc, messages.Error):
            code = exc.code or ""
            text = f"{exc.description or code}: {exc.detail or ''}".strip(": ")
            if code == "accountDoesNotExist":
                with self._account_lock:
                    self._account = None  # the CA forgot us; register again next time
                return AcmeUnavailable(f"ACME account vanished: {text}")
            if code == "rateLimited":
                hold = self.pace.hold_until
                until = f" until {hold.isoformat(timespec='seconds')}" if hold else ""
                return AcmeUnavailable(f"the ACME CA is rate-limiting this edge{until}: {text}")
            if code in _TRANSIENT_CODES:
                return AcmeUnavailable(f"ACME CA: {text}")
            if code in _CHALLENGE_CODES:
                return AcmeChallengeFailed(f"ACME CA: {text}")
            return AcmeError(f"ACME CA refused the request ({code or 'unknown'}): {text}")
        if isinstance(exc, requests.exceptions.SSLError):
            return AcmeError(
                f"cannot verify the TLS certificate of {self.directory_url} "
                f"(set ca_bundle for a private CA): {exc}"
            )
        if isinstance(exc, requests.exceptions.RequestException):
            return AcmeUnavailable(f"cannot reach the ACME CA: {_short(exc)}")
        if isinstance(exc, acme_errors.TimeoutError):
            return AcmeUnavailable("the ACME order did not complete in time")
        if isinstance(exc, acme_errors.NonceError):
            return AcmeUnavailable(f"ACME nonce problem: {exc}")
        if isinstance(exc, acme_errors.IssuanceError):
            return AcmeError(f"the ACME CA did not issue: {exc.error}")
        if isinstance(exc, acme_errors.ClientError):
            resp = exc.args[0] if exc.args else None
            if isinstance(resp, requests.Response) and resp.status_code >= 500:
                return AcmeUnavailable(f"ACME CA answered HTTP {resp.status_code}")
            if isinstance(resp, requests.Response) and resp.status_code == 429:
                return AcmeUnavailable("the ACME CA is rate-limiting this edge (HTTP 429)")
            return AcmeError(f"unexpected answer from the ACME CA: {exc!r}")
        if isinstance(exc, acme_errors.Error | DeserializationError):
            return AcmeError(f"ACME protocol error: {exc!r}")
        return AcmeError(f"ACME order failed: {exc!r}")


def _short(exc: BaseException) -> str:
    """requests' connection errors nest urllib3's repr several levels deep; the innermost
    reason is what an operator (or the agent's user) can act on."""
    inner: BaseException = exc
    for _ in range(8):  # bounded: a cause chain is short, but need not be acyclic
        first = inner.args[0] if inner.args else None
        reason = getattr(inner, "reason", None)
        nested = reason if isinstance(reason, BaseException) else first
        if not isinstance(nested, BaseException):
            break
        inner = nested
    text = str(inner)
    return text if len(text) <= 200 else text[:197] + "..."


def tls_alpn01_challenge_cert(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """``(cert PEM, key PEM)``: the RFC 8737 self-signed certificate for ``name``, carrying the
    critical acmeIdentifier extension = DER OCTET STRING of SHA-256(key authorization)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay ACME challenge")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
