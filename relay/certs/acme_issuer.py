"""Certificates from an ACME CA (RFC 8555), answering HTTP-01 or TLS-ALPN-01 (RFC 8737).

Built on certbot's ``acme`` library, which is synchronous (``requests``): each order runs in a
worker thread, and the coroutine around it retries transient failures (network errors, 5xx,
``badNonce``, ``rateLimited``, polling timeouts) with exponential backoff and jitter. Anything
else becomes a typed error at once: :class:`~relay.errors.AcmeChallengeFailed` when the CA could
not validate a challenge, :class:`~relay.errors.AcmeError` when it refused a request,
:class:`~relay.errors.AcmeUnavailable` when the retries ran out,
:class:`~relay.errors.UnsupportedIdentifier` for wildcards (they need DNS-01, out of scope) and
IP addresses.

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
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

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

from relay.certs.issuers import IssuedCert, normalize_hostname
from relay.certs.local_ca import _write_file_atomic
from relay.control.secrets import SecretBox
from relay.errors import (
    AcmeChallengeFailed,
    AcmeError,
    AcmeUnavailable,
    ConfigError,
    RelayError,
    UnsupportedIdentifier,
)

__all__ = ["ACME_TLS_ALPN", "AcmeIssuer", "Challenge", "tls_alpn01_challenge_cert"]

log = logging.getLogger("relay.certs.acme")

ACME_TLS_ALPN = "acme-tls/1"
#: RFC 8737 id-pe-acmeIdentifier.
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
ACCOUNT_OWNER = "acme"
Challenge = Literal["http-01", "tls-alpn-01"]

#: ACME problem types (urn:ietf:params:acme:error:<code>) worth retrying as they are.
_TRANSIENT_CODES = frozenset({"badNonce", "rateLimited", "serverInternal"})
#: Problem types that mean "the CA could not reach or validate us".
_CHALLENGE_CODES = frozenset(
    {"connection", "dns", "incorrectResponse", "tls", "unauthorized", "caa"}
)


class _Transient(Exception):
    """Internal: a failure worth retrying (wrapped into AcmeUnavailable when retries run out)."""


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
    """Issues certificates from the ACME directory at ``directory_url``."""

    def __init__(
        self,
        directory_url: str,
        account_email: str | None,
        data_dir: Path,
        secret_box: SecretBox,
        *,
        ca_bundle: Path | None = None,
        challenge: Challenge = "http-01",
        max_attempts: int = 5,
        backoff_base: float = 2.0,
        backoff_max: float = 120.0,
        order_timeout: float = 90.0,
        network_timeout: float = 30.0,
    ) -> None:
        if challenge not in ("http-01", "tls-alpn-01"):
            raise ConfigError(f"unsupported ACME challenge {challenge!r}")
        if max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        self.directory_url = directory_url
        self.account_email = account_email
        self.challenge: Challenge = challenge
        self.ca_bundle = ca_bundle
        self.box = secret_box
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.order_timeout = order_timeout
        self.network_timeout = network_timeout
        digest = hashlib.sha256(directory_url.encode()).hexdigest()[:16]
        self.account_dir = Path(data_dir) / "acme" / digest
        self._account: _Account | None = None
        self._account_lock = threading.Lock()
        self._http01: dict[str, bytes] = {}
        self._alpn: dict[str, tuple[bytes, bytes]] = {}

    # -- what the edge calls -----------------------------------------------------------------

    def http01_response(self, token: str) -> bytes | None:
        """The key authorization to serve at ``/.well-known/acme-challenge/<token>``, if that
        token belongs to a pending order."""
        return self._http01.get(token)

    def tls_alpn01_certificate(self, server_name: str) -> tuple[bytes, bytes] | None:
        """``(cert PEM, key PEM)`` of the RFC 8737 certificate for a pending ``server_name``."""
        return self._alpn.get(server_name.lower().rstrip("."))

    # -- Issuer ------------------------------------------------------------------------------

    async def issue(self, hostnames: list[str]) -> IssuedCert:
        names = self._check_names(hostnames)
        last: RelayError | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await asyncio.to_thread(self._issue_blocking, names)
            except Exception as exc:
                transient, err = self._classify(exc)
                if not transient:
                    raise err from exc
                last = err
            if attempt < self.max_attempts:
                delay = min(self.backoff_base * 2 ** (attempt - 1), self.backoff_max)
                delay *= 0.5 + random.random() / 2
                log.warning(
                    "ACME order for %s: %s; retrying in %.1fs (attempt %d of %d)",
                    ", ".join(names),
                    last,
                    delay,
                    attempt,
                    self.max_attempts,
                )
                await asyncio.sleep(delay)
        raise AcmeUnavailable(
            f"ACME CA {self.directory_url} kept failing for {', '.join(names)} "
            f"after {self.max_attempts} attempts: {last}"
        )

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
                    self._http01[token] = key_authz.encode("ascii")
                    tokens.append(token)
                else:
                    self._alpn[ident] = tls_alpn01_challenge_cert(ident, key_authz)
                    alpn_names.append(ident)
                # Not client.answer_challenge: it insists on a Link "up" header that RFC 8555
                # does not require (pebble 2.4 omits it). The authorization is polled below.
                net.post(challb.uri, _Answer(), new_nonce_url=account.directory["newNonce"])
                pending.append(authzr)
            for authzr in pending:
                self._poll_authorization(client, authzr, deadline)
            remaining = max(deadline - time.monotonic(), 1.0)
            finalize_deadline = dt.datetime.now() + dt.timedelta(seconds=remaining)
            orderr = client.finalize_order(orderr, finalize_deadline)
        finally:
            for token in tokens:
                self._http01.pop(token, None)
            for name in alpn_names:
                self._alpn.pop(name, None)
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
            authzr = client.poll(authzr)[0]
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
            if time.monotonic() + sleep > deadline:
                raise _Transient(f"authorization {authzr.uri} still pending at the deadline")
            time.sleep(sleep)
            sleep = min(sleep * 2, 2.0)

    # -- account -----------------------------------------------------------------------------

    def _network(self, key: JWKEC | None) -> ClientNetwork:
        # requests takes a CA bundle path where acme's signature says bool; acme passes it on.
        verify = cast(bool, str(self.ca_bundle)) if self.ca_bundle is not None else True
        return ClientNetwork(
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
        _write_file_atomic(self.account_dir / "account.json", json.dumps(meta).encode(), 0o644)
        log.info("ACME account %s at %s", regr.uri, self.directory_url)
        return _Account(directory, key, regr)

    def _load_or_create_account_key(self) -> JWKEC:
        self.account_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.account_dir / "account.key.sealed"
        name = f"account {self.directory_url}"
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
        _write_file_atomic(path, self.box.seal(pem, owner=ACCOUNT_OWNER, name=name), 0o600)
        return JWKEC(key=new)

    # -- error mapping -----------------------------------------------------------------------

    def _classify(self, exc: BaseException) -> tuple[bool, RelayError]:
        """``(transient?, the RelayError to report)`` for anything an order attempt raised."""
        if isinstance(exc, _Transient):
            return True, AcmeUnavailable(str(exc))
        if isinstance(exc, RelayError):
            return False, exc
        if isinstance(exc, messages.Error):
            code = exc.code or ""
            text = f"{exc.description or code}: {exc.detail or ''}".strip(": ")
            if code == "accountDoesNotExist":
                with self._account_lock:
                    self._account = None  # the CA forgot us; register again on the retry
                return True, AcmeUnavailable(f"ACME account vanished: {text}")
            if code in _TRANSIENT_CODES:
                return True, AcmeUnavailable(f"ACME CA: {text}")
            if code in _CHALLENGE_CODES:
                return False, AcmeChallengeFailed(f"ACME CA: {text}")
            return False, AcmeError(f"ACME CA refused the request ({code or 'unknown'}): {text}")
        if isinstance(exc, requests.exceptions.SSLError):
            return False, AcmeError(
                f"cannot verify the TLS certificate of {self.directory_url} "
                f"(set ca_bundle for a private CA): {exc}"
            )
        if isinstance(exc, requests.exceptions.RequestException):
            return True, AcmeUnavailable(f"cannot reach the ACME CA: {exc}")
        if isinstance(exc, acme_errors.TimeoutError):
            return True, AcmeUnavailable("the ACME order did not complete in time")
        if isinstance(exc, acme_errors.NonceError):
            return True, AcmeUnavailable(f"ACME nonce problem: {exc}")
        if isinstance(exc, acme_errors.IssuanceError):
            return False, AcmeError(f"the ACME CA did not issue: {exc.error}")
        if isinstance(exc, acme_errors.ClientError):
            resp = exc.args[0] if exc.args else None
            if isinstance(resp, requests.Response) and resp.status_code >= 500:
                return True, AcmeUnavailable(f"ACME CA answered HTTP {resp.status_code}")
            return False, AcmeError(f"unexpected answer from the ACME CA: {exc!r}")
        if isinstance(exc, acme_errors.Error | DeserializationError):
            return False, AcmeError(f"ACME protocol error: {exc!r}")
        return False, AcmeError(f"ACME order failed: {exc!r}")


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
