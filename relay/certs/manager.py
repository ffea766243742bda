"""Certificates for HTTPS endpoints: cache, storage, on-demand issuance and renewal.

The TLS front asks :meth:`CertificateManager.context_for` for an ``ssl.SSLContext`` by server
name (from an SNI callback or a ClientHello peek); that call is synchronous and served from
memory. :meth:`~CertificateManager.ensure` (on bind) makes sure a certificate exists, loading it
from disk or asking the issuer; :meth:`~CertificateManager.run_renewals` renews in the
background.

On disk, under ``<data_dir>/certs/``: ``<name>.pem`` (the chain, 0644) and
``<name>.key.sealed`` (the private key sealed by :class:`~relay.control.secrets.SecretBox`,
owner ``certs``, name = the hostname; 0600). A wildcard ``*.example.com`` is stored as
``_.example.com.*`` (``_`` is not a valid hostname label, so it cannot collide). No private key
is ever written in plaintext: contexts are loaded through an anonymous in-memory file
(``memfd``) where the OS has one, else through a 0600 temporary file unlinked at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import ssl
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from relay.certs.issuers import (
    IssuedCert,
    Issuer,
    SyncIssuer,
    cert_names,
    name_covered,
    normalize_hostname,
)
from relay.certs.local_ca import _write_file_atomic
from relay.control.secrets import SecretBox
from relay.errors import CertificateError, ConfigError, DataDirError, RelayError, SecretError
from relay.tls import _harden

__all__ = ["CERTS_OWNER", "CertificateManager", "context_from_pem"]

log = logging.getLogger("relay.certs")

#: The SecretBox owner of certificate private keys; the secret's name is the hostname.
CERTS_OWNER = "certs"
HTTPS_ALPN = ("http/1.1",)


def context_from_pem(
    chain_pem: bytes, key_pem: bytes, *, alpn: Sequence[str] = HTTPS_ALPN
) -> ssl.SSLContext:
    """A hardened server context (TLS >= 1.2, Mozilla intermediate ciphers) from PEM in memory."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.set_alpn_protocols(list(alpn))
    try:
        _load_chain_from_memory(ctx, chain_pem, key_pem)
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(f"cannot load certificate into TLS: {exc}") from None
    return ctx


def _load_chain_from_memory(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    data = key_pem.rstrip(b"\n") + b"\n" + chain_pem
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("relay-cert", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            # OpenSSL opens the path twice (chain, then key); each open starts at offset 0.
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix=".relay-cert-")  # mode 0600
    try:
        os.write(fd, data)
        os.close(fd)
        ctx.load_cert_chain(path)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        os.unlink(path)


@dataclass(slots=True)
class _Entry:
    name: str
    names: list[str]
    chain_pem: bytes
    not_after: dt.datetime
    context: ssl.SSLContext
    persist: bool


@dataclass(slots=True)
class _Retry:
    failures: int
    next_attempt: dt.datetime


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateManager:
    """Keeps an ``SSLContext`` per HTTPS hostname, issued by ``issuer`` and stored sealed.

    ``issue_on_demand``: on a cache miss in :meth:`context_for`, issue synchronously if the
    issuer is a :class:`~relay.certs.issuers.SyncIssuer` (the local CA, files) and
    ``allowed(name)`` says the name is one this edge serves. ``clock`` is for tests.
    """

    def __init__(
        self,
        data_dir: Path,
        issuer: Issuer,
        secret_box: SecretBox,
        *,
        renew_before: dt.timedelta = dt.timedelta(days=30),
        issue_on_demand: bool = False,
        allowed: Callable[[str], bool] | None = None,
        retry_base: dt.timedelta = dt.timedelta(minutes=1),
        retry_max: dt.timedelta = dt.timedelta(hours=6),
        alpn: Sequence[str] = HTTPS_ALPN,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        if renew_before < dt.timedelta(0):
            raise ConfigError("renew_before must not be negative")
        self.data_dir = Path(data_dir)
        self.certs_dir = self.data_dir / "certs"
        self.issuer = issuer
        self.box = secret_box
        self.renew_before = renew_before
        self.issue_on_demand = issue_on_demand
        self.allowed = allowed
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.alpn = tuple(alpn)
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._retry: dict[str, _Retry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._sync_lock = threading.Lock()
        self.certs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.load_from_disk()

    # -- lookups (synchronous, in-memory) ----------------------------------------------------

    def names(self) -> list[str]:
        """Names with a cached certificate."""
        return sorted(self._entries)

    def not_after(self, name: str) -> dt.datetime | None:
        entry = self._lookup(name.lower().rstrip("."))
        return entry.not_after if entry else None

    def chain_pem(self, name: str) -> bytes | None:
        entry = self._lookup(name.lower().rstrip("."))
        return entry.chain_pem if entry else None

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        """The context for ``server_name``, or None (the handshake should then fail).

        Fast path: a dict lookup (exact name, then the covering wildcard). On a miss (or an
        expired entry) with ``issue_on_demand``, issues synchronously when the issuer is a
        :class:`~relay.certs.issuers.SyncIssuer` and ``allowed(name)``; that costs about a
        millisecond to issue plus writing two small files. Otherwise an expired certificate is
        still returned (the client then reports expiry, which says more than a failed
        handshake); renewing it is :meth:`run_renewals`' job.
        """
        name = server_name.lower().rstrip(".")
        if not name or len(name) > 253:
            return None
        entry = self._lookup(name)
        if entry is not None and entry.not_after > self.clock():
            return entry.context
        if not self.issue_on_demand or not isinstance(self.issuer, SyncIssuer):
            return entry.context if entry is not None else None
        if self.allowed is None or not self.allowed(name):
            return entry.context if entry is not None else None
        try:
            name = normalize_hostname(name)
            with self._sync_lock:
                entry = self._lookup(name)
                if entry is not None and entry.not_after > self.clock():
                    return entry.context  # another thread issued it meanwhile
                issued = self.issuer.issue_now([name])
                return self._install(name, issued).context
        except RelayError as exc:
            log.warning("on-demand certificate for %s failed: %s", name, exc.one_line())
            return entry.context if entry is not None else None

    def _lookup(self, name: str) -> _Entry | None:
        entry = self._entries.get(name)
        if entry is not None:
            return entry
        _, dot, parent = name.partition(".")
        if dot and parent:
            wild = self._entries.get("*." + parent)
            if wild is not None and name_covered(name, wild.names):
                return wild
        return None

    def _fresh(self, entry: _Entry | None) -> bool:
        return entry is not None and entry.not_after - self.clock() > self.renew_before

    # -- issuance and storage ----------------------------------------------------------------

    async def ensure(self, hostname: str) -> None:
        """Have a certificate for ``hostname`` that is not due for renewal, persisted.

        From the cache, else from disk, else from the issuer. Issuer errors propagate
        (:class:`~relay.errors.CertificateError` and subclasses).
        """
        name = normalize_hostname(hostname)
        if self._fresh(self._lookup(name)):
            return
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if self._fresh(self._lookup(name)):
                return
            loaded = self._load_one(name)
            if loaded is not None and self._fresh(loaded):
                return
            issued = await self.issuer.issue([name])
            self._install(name, issued)
            self._retry.pop(name, None)

    def _install(self, name: str, issued: IssuedCert) -> _Entry:
        leaf = x509.load_pem_x509_certificate(issued.chain_pem)
        names = cert_names(leaf)
        if not name_covered(name, names):
            raise CertificateError(f"issued certificate does not cover {name} (has {names})")
        ctx = context_from_pem(issued.chain_pem, issued.key_pem, alpn=self.alpn)
        if issued.persist:
            sealed = self.box.seal(issued.key_pem, owner=CERTS_OWNER, name=name)
            cert_path, key_path = self._paths(name)
            try:
                # Key first: a crash in between leaves a mismatched pair, detected on load.
                _write_file_atomic(key_path, sealed, 0o600)
                _write_file_atomic(cert_path, issued.chain_pem, 0o644)
            except OSError as exc:
                raise DataDirError(f"cannot store the certificate for {name}: {exc}") from exc
        entry = _Entry(name, names, issued.chain_pem, issued.not_after, ctx, issued.persist)
        self._entries[name] = entry
        log.info("certificate for %s installed (expires %s)", name, issued.not_after.isoformat())
        return entry

    def _paths(self, name: str) -> tuple[Path, Path]:
        stem = "_" + name[1:] if name.startswith("*.") else name
        return self.certs_dir / f"{stem}.pem", self.certs_dir / f"{stem}.key.sealed"

    def load_from_disk(self) -> int:
        """Load every stored certificate into the cache (done by the constructor); a pair that
        is corrupt, mismatched or does not open is logged and skipped (it gets re-issued)."""
        count = 0
        for cert_path in sorted(self.certs_dir.glob("*.pem")):
            stem = cert_path.name[: -len(".pem")]
            name = "*" + stem[1:] if stem.startswith("_.") else stem
            if self._load_one(name) is not None:
                count += 1
        return count

    def _load_one(self, name: str) -> _Entry | None:
        cert_path, key_path = self._paths(name)
        if not cert_path.exists() or not key_path.exists():
            return None
        try:
            chain = cert_path.read_bytes()
            key_pem = self.box.open(key_path.read_bytes(), owner=CERTS_OWNER, name=name)
            issued = IssuedCert.from_pem(chain, key_pem)
            names = issued.names()
            if not name_covered(name, names):
                raise CertificateError(f"{cert_path} does not cover {name}")
            ctx = context_from_pem(chain, key_pem, alpn=self.alpn)
        except (OSError, RelayError) as exc:
            msg = exc.one_line() if isinstance(exc, RelayError) else str(exc)
            level = logging.ERROR if isinstance(exc, SecretError) else logging.WARNING
            log.log(level, "stored certificate for %s is unusable, ignoring it: %s", name, msg)
            return None
        entry = _Entry(name, names, chain, issued.not_after, ctx, True)
        self._entries[name] = entry
        return entry

    def rewrap_keys(self) -> int:
        """Re-wrap every stored key still under an old KEK to the current one; return count."""
        count = 0
        for key_path in sorted(self.certs_dir.glob("*.key.sealed")):
            stem = key_path.name[: -len(".key.sealed")]
            name = "*" + stem[1:] if stem.startswith("_.") else stem
            blob = key_path.read_bytes()
            if self.box.needs_rewrap(blob):
                new = self.box.rewrap(blob, owner=CERTS_OWNER, name=name)
                _write_file_atomic(key_path, new, 0o600)
                count += 1
        return count

    # -- renewal -----------------------------------------------------------------------------

    async def renew_due(self) -> list[str]:
        """One renewal pass: re-issue every cached certificate expiring within
        ``renew_before`` whose retry time has come. Returns the names renewed."""
        now = self.clock()
        renewed: list[str] = []
        for name, entry in list(self._entries.items()):
            if entry.not_after - now > self.renew_before:
                continue
            retry = self._retry.get(name)
            if retry is not None and now < retry.next_attempt:
                continue
            try:
                issued = await self.issuer.issue([name])
                self._install(name, issued)
            except RelayError as exc:
                self._failed(name, f"renewal failed: {exc.one_line()}")
                continue
            except Exception as exc:  # an issuer bug must not stop renewals of other names
                log.exception("renewal of %s crashed", name)
                self._failed(name, f"renewal crashed: {exc!r}")
                continue
            renewed.append(name)
            if issued.not_after - self.clock() <= self.renew_before:
                # e.g. operator files that were not replaced: keep asking, but not in a loop.
                self._failed(name, f"new certificate still expires soon ({issued.not_after})")
            else:
                self._retry.pop(name, None)
        return renewed

    def _failed(self, name: str, why: str) -> None:
        prev = self._retry.get(name)
        failures = (prev.failures if prev else 0) + 1
        delay = min(self.retry_base * (2 ** min(failures - 1, 30)), self.retry_max)
        delay *= 0.5 + random.random() / 2
        self._retry[name] = _Retry(failures, self.clock() + delay)
        log.warning(
            "certificate %s: %s (attempt %d; next try in %ds)",
            name,
            why,
            failures,
            int(delay.total_seconds()),
        )

    def next_retry(self, name: str) -> dt.datetime | None:
        retry = self._retry.get(name)
        return retry.next_attempt if retry else None

    async def run_renewals(
        self, stop: asyncio.Event, *, interval: dt.timedelta = dt.timedelta(hours=1)
    ) -> None:
        """Background loop: :meth:`renew_due` every ``interval`` (sooner when a retry is due)
        until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.renew_due()
            except Exception:
                log.exception("certificate renewal pass failed")
            wait = interval
            now = self.clock()
            for retry in self._retry.values():
                wait = min(wait, max(retry.next_attempt - now, dt.timedelta(seconds=1)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait.total_seconds())
