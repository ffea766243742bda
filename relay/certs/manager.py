"""Certificates for HTTPS endpoints: cache, storage, issuance, retries and renewal.

The TLS front asks :meth:`CertificateManager.context_for` for an ``ssl.SSLContext`` by server
name (from an SNI callback or a ClientHello peek); that call is synchronous and served from
memory.

A name *wants* a certificate while an https endpoint is bound to it
(:meth:`~CertificateManager.want`, called by the edge after the agent got its Bound reply; the
``bound`` predicate says when that ended). For every wanted name the manager keeps one goal: a
certificate that is not due for renewal. It loads one from disk, or orders one; a failed order
is tried again with capped, jittered exponential backoff (:class:`RetryPolicy`) for as long as
the name is bound — a CA that was down at bind time is asked again when it is back — and never
before the issuer's own ``not_before`` (an ACME CA's Retry-After, or its published limits).
Errors that cannot heal (:class:`~relay.errors.UnsupportedIdentifier`,
:class:`~relay.errors.ConfigError`) are not retried. A certificate is renewed at two thirds of
its lifetime (Let's Encrypt's 90 days: 30 days before expiry; a 6-day certificate: 2 days
before).

Whatever starts an order — a bind, a renewal, a retry, :meth:`~CertificateManager.ensure` —
shares the one order in flight for that name (a task per name), so no name is ever ordered
twice at once. Each step is reported through ``on_event`` (:class:`CertEvent`: pending, issued,
failed with the next attempt) so that the edge can tell the agent.

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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509

from relay.certs.issuers import (
    IssuedCert,
    Issuer,
    PacedIssuer,
    SyncIssuer,
    cert_names,
    name_covered,
    normalize_hostname,
)
from relay.certs.local_ca import write_file_atomic
from relay.certs.order_lock import order_lock
from relay.certs.order_quota import OrderQuota
from relay.certs.sealed import CERTS_OWNER, cert_name, cert_paths, locked
from relay.control.secrets import SecretBox
from relay.errors import (
    CertificateError,
    CertificateQuota,
    ConfigError,
    DataDirError,
    RelayError,
    SecretError,
    UnsupportedIdentifier,
)
from relay.tls import _harden

__all__ = [
    "CERTS_OWNER",
    "CertEvent",
    "CertificateManager",
    "RetryPolicy",
    "context_from_pem",
    "renewal_time",
]

log = logging.getLogger("relay.certs")

HTTPS_ALPN = ("http/1.1",)
#: Renew when this fraction of a certificate's lifetime has passed.
RENEW_AT = 2 / 3
#: The background loop's passes start at least this far apart (seconds).
MIN_PASS_GAP = 0.25
#: Certificates made on demand for names no endpoint is bound to exactly (a visitor's
#: name under a wildcard endpoint: the visitor picks it) are kept in memory only, the
#: most recently used this many (each is an SSLContext, about 28 KB).
MAX_ON_DEMAND = 1024


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


def renewal_time(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """When a certificate valid from ``not_before`` to ``not_after`` is due for renewal."""
    return not_before + (not_after - not_before) * RENEW_AT


@dataclass(slots=True)
class _Entry:
    name: str
    names: list[str]
    chain_pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    context: ssl.SSLContext
    persist: bool

    @property
    def renew_at(self) -> dt.datetime:
        return renewal_time(self.not_before, self.not_after)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How soon a name whose order failed is tried again: ``base`` doubling per failure up
    to ``cap``, each delay drawn from its upper half (jitter, so that names that failed
    together do not return together). The issuer's ``not_before`` (a CA's Retry-After)
    overrides both."""

    base: dt.timedelta = dt.timedelta(seconds=10)
    cap: dt.timedelta = dt.timedelta(minutes=10)

    def __post_init__(self) -> None:
        if self.base <= dt.timedelta(0) or self.cap < self.base:
            raise ConfigError("certificate retries need 0 < base <= cap")

    def delay(self, failures: int) -> dt.timedelta:
        raw = min(self.base * (1 << min(max(failures - 1, 0), 30)), self.cap)
        return raw * (0.5 + random.random() / 2)


@dataclass(slots=True)
class _Retry:
    failures: int
    next_attempt: dt.datetime | None  # None: this error cannot heal; not retried
    error: RelayError


@dataclass(frozen=True, slots=True)
class CertEvent:
    """Where a name's certificate stands, for whoever serves that name.

    ``pending``: an order started and the name has no valid certificate. ``issued``:
    ``expires`` says until when. ``failed``: ``error`` says why; ``next_attempt`` when it is
    tried again (None: never, the error cannot heal); ``expires`` is set when a valid
    certificate is still served (a renewal failed).
    """

    name: str
    state: Literal["pending", "issued", "failed"]
    expires: dt.datetime | None = None
    error: RelayError | None = None
    next_attempt: dt.datetime | None = None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _heals(exc: RelayError) -> bool:
    """Whether trying again later may succeed. A CA that is down, refuses, or cannot
    validate the name yet (DNS not pointed here) may change its mind; a name the issuer can
    never certify, or a broken configuration, will not."""
    return not isinstance(exc, UnsupportedIdentifier | ConfigError)


class CertificateManager:
    """Keeps an ``SSLContext`` per HTTPS hostname, issued by ``issuer`` and stored sealed.

    ``issue_on_demand``: on a cache miss in :meth:`context_for`, issue synchronously if the
    issuer is a :class:`~relay.certs.issuers.SyncIssuer` (the local CA, files) and
    ``allowed(name)`` says the name is one this edge serves. ``bound(name)``: whether a name
    passed to :meth:`want` is still bound (retries and renewals for it stop when it is not);
    without it every cached certificate is renewed. ``on_event``: told each
    :class:`CertEvent`. ``order_quota``: how many orders each owner (the account that
    bound a name, given to :meth:`want`) may start lately; an order of a name with no
    valid certificate is charged, a renewal is not (:mod:`relay.certs.order_quota`).
    ``clock`` is for tests.
    """

    def __init__(
        self,
        data_dir: Path,
        issuer: Issuer,
        secret_box: SecretBox,
        *,
        issue_on_demand: bool = False,
        allowed: Callable[[str], bool] | None = None,
        bound: Callable[[str], bool] | None = None,
        on_event: Callable[[CertEvent], None] | None = None,
        retry: RetryPolicy | None = None,
        alpn: Sequence[str] = HTTPS_ALPN,
        order_quota: OrderQuota | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.certs_dir = self.data_dir / "certs"
        self.issuer = issuer
        self.box = secret_box
        self.issue_on_demand = issue_on_demand
        self.allowed = allowed
        self.bound = bound
        self.on_event = on_event
        self.retry = retry or RetryPolicy()
        self.alpn = tuple(alpn)
        self.order_quota = order_quota
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._retry: dict[str, _Retry] = {}
        self._wanted: set[str] = set()
        #: Who bound each wanted name (their orders are charged to them).
        self._owners: dict[str, str] = {}
        self._inflight: dict[str, asyncio.Task[_Entry]] = {}
        self._on_demand: OrderedDict[str, _Entry] = OrderedDict()
        self._wake: asyncio.Event | None = None
        self._sync_lock = threading.Lock()
        self.certs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if bound is None:
            self.load_from_disk()
        # Else each name is loaded when it is bound (``want``): a certificate stored for a
        # name no agent binds again is not held for good.

    # -- lookups (synchronous, in-memory) ----------------------------------------------------

    def names(self) -> list[str]:
        """Names with a cached certificate."""
        return sorted(self._entries)

    def held(self) -> tuple[int, int]:
        """Certificates in memory: (of names, made on demand for names visitors picked)."""
        return len(self._entries), len(self._on_demand)

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
        handshake); renewing it is the background loop's job (:meth:`run`).
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
                made = self._on_demand.get(name)
                if made is not None and made.not_after > self.clock():
                    self._on_demand.move_to_end(name)
                    return made.context
                issued = self.issuer.issue_now([name])
                if name in self._wanted:
                    return self._install(name, issued).context
                return self._made_on_demand(name, issued).context
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
        return entry is not None and self.clock() < entry.renew_at

    def status(self, hostname: str) -> CertEvent | None:
        """Where ``hostname``'s certificate stands now: issued (a valid one is served, even
        while it is being renewed), pending (an order is in flight), failed (the last
        attempt's error and the next attempt), or None (nothing known yet)."""
        name = hostname.lower().rstrip(".")
        entry = self._lookup(name)
        retry = self._retry.get(name)
        if entry is not None and entry.not_after > self.clock():
            return CertEvent(name, "issued", expires=entry.not_after)
        if name in self._inflight:
            return CertEvent(name, "pending")
        if retry is not None:
            return CertEvent(name, "failed", error=retry.error, next_attempt=retry.next_attempt)
        if name in self._wanted:
            return CertEvent(name, "pending")  # waiting for the issuer's not_before
        return None

    def next_retry(self, name: str) -> dt.datetime | None:
        retry = self._retry.get(name)
        return retry.next_attempt if retry else None

    # -- a new issuer (reload) ---------------------------------------------------------------

    def reload_issuer(self, issuer: Issuer) -> list[str]:
        """Issue from ``issuer`` from now on: a reload after the operator replaced (or moved)
        the certificate files. Certificates held in memory only (``persist`` False: the
        previous files') are issued again at once when the issuer can do it at once, so new
        TLS connections get the new pair while live ones keep theirs. A name the new pair
        cannot be had for keeps the certificate it has and is retried like any failure.
        Wanted names whose last order failed are tried again at the next pass, not after
        their backoff: the operator may just have fixed the files. Returns the names that
        got a new certificate."""
        self.issuer = issuer
        self._on_demand.clear()  # made again, by the new issuer, when next asked for
        renewed: list[str] = []
        if isinstance(issuer, SyncIssuer):
            for name in [n for n, e in self._entries.items() if not e.persist]:
                try:
                    with self._sync_lock:
                        entry = self._install(name, issuer.issue_now([name]))
                except RelayError as exc:
                    self._failed(name, exc)
                    continue
                self._retry.pop(name, None)
                renewed.append(name)
                self._emit(CertEvent(name, "issued", expires=entry.not_after))
        for name in [n for n in self._retry if n in self._wanted and n not in self._entries]:
            del self._retry[name]
        self._poke()
        return renewed

    # -- wanted names ------------------------------------------------------------------------

    def quota_changed(self) -> None:
        """The owners' quota changed (a reload): names it put off are judged again at
        the next pass, by the new quota."""
        for name in [n for n, r in self._retry.items() if isinstance(r.error, CertificateQuota)]:
            del self._retry[name]
        self._poke()

    def release(self, hostname: str) -> None:
        """``hostname``'s endpoint went: unless ``bound`` says it is still bound (another
        member holds it), its certificate is pursued no more and leaves memory now."""
        try:
            name = normalize_hostname(hostname)
        except RelayError:
            return  # never wanted: want() takes the same names
        if name in self._wanted and self._unbound(name):
            self._let_go(name)

    def _unbound(self, name: str) -> bool:
        """``bound`` says no endpoint holds ``name`` (never, without ``bound``)."""
        return self.bound is not None and not self.bound(name)

    def _let_go(self, name: str) -> None:
        """A wanted name is bound no more: no more orders, renewals or retries for it,
        and its certificate leaves memory (each is an SSLContext, about 28 KB: an agent
        binding and unbinding names at random grew the edge by that much per name, for
        good). One that the issuer makes again at once (the local CA) leaves the disk
        too; a CA's stays there, and is loaded again if the name is bound again."""
        self._wanted.discard(name)
        self._owners.pop(name, None)
        retry = self._retry.get(name)
        if retry is not None and isinstance(retry.error, CertificateQuota):
            # No CA was asked: whoever binds the name next (another account, maybe) is
            # judged by its own quota, not held by this one's.
            del self._retry[name]
        log.info("certificate for %s: no longer bound; not pursued any more", name)
        if name not in self._inflight:  # else when the order ends (_order_done)
            self._forget(name)

    def _forget(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is None or not entry.persist:
            return
        if not (self.issue_on_demand and isinstance(self.issuer, SyncIssuer)):
            return
        # Another process on this data directory (a worker, a PoP) that serves the name
        # keeps its copy in memory, and makes it again at its next start.
        try:
            with locked(self.certs_dir):
                for path in self._paths(name):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        except OSError as exc:  # the endpoint's removal must go on whatever the disk says
            log.warning("certificate for %s: its files stay: %s", name, exc)

    def want(self, hostname: str, owner: str | None = None) -> CertEvent | None:
        """``hostname`` is bound (by ``owner``, an account) and wants a certificate from
        now on: load it, or order it now if no retry is pending (a retry keeps its time:
        rebinding must not hurry the CA) and the owner's quota allows. Returns the state
        to report now; None when an order just started for a name with no valid
        certificate (the order reports itself), or the quota put it off (reported so)."""
        name = normalize_hostname(hostname)
        self._wanted.add(name)
        if owner is not None:
            self._owners[name] = owner
        if name not in self._inflight:
            entry = self._lookup(name)
            if not self._fresh(entry):
                loaded = self._load_one(name)
                entry = loaded if loaded is not None else entry
            now = self.clock()
            if not self._fresh(entry) and self._attempt_due(name, now):
                if not self._quota_allows(name, now):
                    self._poke()  # the loop learns when it is ordered
                    return None
                self._order_now(name)  # its end wakes the loop
                if entry is None or entry.not_after <= self.clock():
                    return None
                return self.status(name)
        self._poke()  # the loop learns this name's renewal or retry time
        return self.status(name)

    def _relevant(self) -> list[str]:
        """Names to keep certified: those wanted and still bound (and, with no ``bound``
        predicate, every cached one). Names no longer bound are dropped here."""
        for name in [n for n in self._wanted if self._unbound(n)]:
            self._let_go(name)
        names = set(self._wanted)
        if self.bound is None:
            names.update(self._entries)
        now = self.clock()
        # Forget the failures of names nobody wants once their retry time passed: a rebind
        # within the backoff keeps it, later ones start afresh.
        for name in [n for n, r in self._retry.items() if n not in names]:
            when = self._retry[name].next_attempt
            if when is not None and when <= now:
                del self._retry[name]
        return sorted(names)

    def _attempt_due(self, name: str, now: dt.datetime) -> bool:
        retry = self._retry.get(name)
        if retry is not None and (retry.next_attempt is None or retry.next_attempt > now):
            return False
        not_before = self._issuer_not_before(name)
        return not_before is None or not_before <= now

    def _quota_allows(self, name: str, now: dt.datetime) -> bool:
        """Whether an order of ``name`` may start now as far as its owner's quota goes,
        charging it if so. A name with a valid certificate (a renewal) or no owner is not
        charged. Refused: the name waits for the time the quota gives, its state failed
        with CertificateQuota, reported to ``on_event``."""
        owner = self._owners.get(name)
        if self.order_quota is None or owner is None:
            return True
        entry = self._lookup(name)
        if entry is not None and entry.not_after > now:
            return True
        deferred = self.order_quota.take(owner, now)
        if deferred is None:
            return True
        window_h = self.order_quota.window.total_seconds() / 3600
        exc = CertificateQuota(
            f"account {owner} started {self.order_quota.per_owner} certificate orders in "
            f"the last {window_h:g} h (cert_orders_per_account); {name} is ordered at "
            f"{deferred.until.isoformat(timespec='seconds')}"
        )
        if deferred.first:
            # One line each time the account runs past its quota: its other names wait
            # quietly (at most one line per order it may start).
            log.warning("certificate %s: %s", name, exc.one_line())
        prev = self._retry.get(name)
        # Not a failure of the CA's: the backoff does not grow.
        self._retry[name] = _Retry(prev.failures if prev else 0, deferred.until, exc)
        self._emit(CertEvent(name, "failed", error=exc, next_attempt=deferred.until))
        return False

    def _issuer_not_before(self, name: str) -> dt.datetime | None:
        if isinstance(self.issuer, PacedIssuer):
            return self.issuer.not_before(name)
        return None

    # -- issuance and storage ----------------------------------------------------------------

    async def ensure(self, hostname: str) -> None:
        """Have a certificate for ``hostname`` that is not due for renewal, persisted.

        From the cache, else from disk, else from the issuer (joining an order already in
        flight for the name). Issuer errors propagate
        (:class:`~relay.errors.CertificateError` and subclasses).
        """
        name = normalize_hostname(hostname)
        if self._fresh(self._lookup(name)):
            return
        if name not in self._inflight and self._fresh(self._load_one(name)):
            return
        await asyncio.shield(self._order_now(name))

    def _order_now(self, name: str) -> asyncio.Task[_Entry]:
        """The order in flight for ``name``, started if there is none: one per name."""
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._order(name))
            self._inflight[name] = task
            task.add_done_callback(lambda done: self._order_done(name, done))
        return task

    def _order_done(self, name: str, task: asyncio.Task[_Entry]) -> None:
        if self._inflight.get(name) is task:
            del self._inflight[name]
        if not task.cancelled():
            task.exception()  # reported by _order; retrieved so asyncio does not log it again
        if name not in self._wanted and self._unbound(name):
            self._forget(name)  # let go while its order ran
        self._poke()

    async def _order(self, name: str) -> _Entry:
        current = self._lookup(name)
        valid = current is not None and current.not_after > self.clock()
        if not valid and not isinstance(self.issuer, SyncIssuer):
            self._emit(CertEvent(name, "pending"))
        try:
            if isinstance(self.issuer, SyncIssuer):
                entry = self._install(name, await self.issuer.issue([name]))
            else:
                entry = await self._order_alone(name)
        except RelayError as exc:
            self._failed(name, exc)
            raise
        except Exception as exc:  # an issuer bug: reported like a failure, retried like one
            log.exception("certificate order for %s crashed", name)
            err = CertificateError(f"certificate order crashed: {exc!r}")
            self._failed(name, err)
            raise err from exc
        if self._fresh(entry):
            self._retry.pop(name, None)
        else:
            # e.g. operator files that were not replaced: served, and asked again later.
            self._failed(
                name,
                CertificateError(
                    f"the new certificate is already due for renewal ({entry.not_after})"
                ),
                report=False,
            )
        self._emit(CertEvent(name, "issued", expires=entry.not_after))
        return entry

    async def _order_alone(self, name: str) -> _Entry:
        """Order ``name`` holding its order lock, unless the process that held it before us
        (another worker of this edge) stored a certificate that is fresh."""
        async with order_lock(self.certs_dir, self._paths(name)[0].name[: -len(".pem")]):
            stored = self._load_one(name)
            if stored is not None and self._fresh(stored):
                log.info("certificate for %s: taken from another worker's order", name)
                return stored
            return self._install(name, await self.issuer.issue([name]))

    def _failed(self, name: str, exc: RelayError, *, report: bool = True) -> None:
        prev = self._retry.get(name)
        failures = (prev.failures if prev else 0) + 1
        now = self.clock()
        next_attempt: dt.datetime | None = None
        if _heals(exc):
            next_attempt = now + self.retry.delay(failures)
            not_before = self._issuer_not_before(name)
            if not_before is not None and not_before > next_attempt:
                next_attempt = not_before  # the CA's Retry-After beats our own backoff
        self._retry[name] = _Retry(failures, next_attempt, exc)
        if next_attempt is None:
            when = "it cannot succeed as configured; not retried"
        else:
            when = f"next try in {int((next_attempt - now).total_seconds())}s"
        log.warning("certificate %s: %s (attempt %d; %s)", name, exc.one_line(), failures, when)
        if report:
            entry = self._lookup(name)
            expires = entry.not_after if entry is not None and entry.not_after > now else None
            self._emit(
                CertEvent(name, "failed", expires=expires, error=exc, next_attempt=next_attempt)
            )

    def _emit(self, event: CertEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # whoever listens must not break issuance
            log.exception("certificate event handler failed for %s", event.name)

    def _made_on_demand(self, name: str, issued: IssuedCert) -> _Entry:
        """Keep a certificate made for a name a visitor picked (under a wildcard
        endpoint) in memory only, among the MAX_ON_DEMAND most recently used: a visitor
        sending a new name in every ClientHello used to add a stored certificate and its
        context each time, for good."""
        entry = self._install(name, issued, keep=False)
        self._on_demand[name] = entry
        self._on_demand.move_to_end(name)
        while len(self._on_demand) > MAX_ON_DEMAND:
            self._on_demand.popitem(last=False)
        return entry

    def _install(self, name: str, issued: IssuedCert, *, keep: bool = True) -> _Entry:
        """The entry of ``issued`` for ``name``; ``keep``: stored (if it persists) and
        cached as ``name``'s certificate, else only returned."""
        leaf = x509.load_pem_x509_certificate(issued.chain_pem)
        names = cert_names(leaf)
        if not name_covered(name, names):
            raise CertificateError(f"issued certificate does not cover {name} (has {names})")
        ctx = context_from_pem(issued.chain_pem, issued.key_pem, alpn=self.alpn)
        if keep and issued.persist:
            sealed = self.box.seal(issued.key_pem, owner=CERTS_OWNER, name=name)
            cert_path, key_path = self._paths(name)
            try:
                # Locked: a key rotation re-wrapping this key must not write the old one back.
                with locked(self.certs_dir):
                    # Key first: a crash in between leaves a mismatched pair, detected on load.
                    write_file_atomic(key_path, sealed, 0o600)
                    write_file_atomic(cert_path, issued.chain_pem, 0o644)
            except OSError as exc:
                raise DataDirError(f"cannot store the certificate for {name}: {exc}") from exc
        entry = _Entry(
            name,
            names,
            issued.chain_pem,
            leaf.not_valid_before_utc,
            leaf.not_valid_after_utc,
            ctx,
            issued.persist,
        )
        if not keep:
            return entry
        self._entries[name] = entry
        log.info(
            "certificate for %s installed (expires %s, renewal from %s)",
            name,
            entry.not_after.isoformat(),
            entry.renew_at.isoformat(timespec="seconds"),
        )
        return entry

    def _paths(self, name: str) -> tuple[Path, Path]:
        return cert_paths(self.certs_dir, name)

    def load_from_disk(self) -> int:
        """Load every stored certificate into the cache (done by the constructor without
        ``bound``); a pair that is corrupt, mismatched or does not open is logged and
        skipped (it gets re-issued)."""
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
            leaf = x509.load_pem_x509_certificate(chain)
        except (OSError, RelayError, ValueError) as exc:
            msg = exc.one_line() if isinstance(exc, RelayError) else str(exc)
            level = logging.ERROR if isinstance(exc, SecretError) else logging.WARNING
            log.log(level, "stored certificate for %s is unusable, ignoring it: %s", name, msg)
            return None
        entry = _Entry(name, names, chain, leaf.not_valid_before_utc, issued.not_after, ctx, True)
        self._entries[name] = entry
        return entry

    def rewrap_keys(self) -> int:
        """Re-wrap every stored key still under an old KEK to the current one; return count."""
        count = 0
        for key_path in sorted(self.certs_dir.glob("*.key.sealed")):
            with locked(self.certs_dir):
                blob = key_path.read_bytes()
                if self.box.needs_rewrap(blob):
                    new = self.box.rewrap(blob, owner=CERTS_OWNER, name=cert_name(key_path))
                    write_file_atomic(key_path, new, 0o600)
                    count += 1
        return count

    def check_stored_keys(self) -> tuple[int, dict[str, str]]:
        """Open (decrypt only) every stored private key with the keys in use: how many
        open, and why each of the others does not, by name. After a key rotation this
        says, before any visitor needs one, whether every key still opens."""
        opened = 0
        failed: dict[str, str] = {}
        for key_path in sorted(self.certs_dir.glob("*.key.sealed")):
            name = cert_name(key_path)
            try:
                self.box.open(key_path.read_bytes(), owner=CERTS_OWNER, name=name)
            except OSError as exc:
                failed[name] = str(exc)
            except RelayError as exc:
                failed[name] = exc.one_line()
            else:
                opened += 1
        return opened, failed

    # -- the background loop: retries and renewals -------------------------------------------

    def _start_due(self) -> dt.datetime | None:
        """Start an order for every relevant name that has no certificate fresh enough and
        whose next attempt has come; return when the next one will have come."""
        now = self.clock()
        upcoming: list[dt.datetime] = []
        for name in self._relevant():
            if name in self._inflight:
                continue
            entry = self._lookup(name)
            if self._fresh(entry):
                assert entry is not None
                upcoming.append(entry.renew_at)
                continue
            if self._attempt_due(name, now) and self._quota_allows(name, now):
                self._order_now(name)
                continue
            retry = self._retry.get(name)
            if retry is not None and retry.next_attempt is not None:
                upcoming.append(retry.next_attempt)
            not_before = self._issuer_not_before(name)
            if not_before is not None:
                upcoming.append(not_before)
        return min(upcoming, default=None)

    async def renew_due(self) -> list[str]:
        """One pass: order (and await) every relevant name that is due — no certificate, or
        past two thirds of its lifetime — and whose retry time has come. Returns the names
        that got a certificate."""
        self._start_due()
        names = list(self._inflight)
        results = await asyncio.gather(
            *(asyncio.shield(self._inflight[n]) for n in names), return_exceptions=True
        )
        return [n for n, r in zip(names, results, strict=True) if isinstance(r, _Entry)]

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(
        self, stop: asyncio.Event, *, interval: dt.timedelta = dt.timedelta(hours=1)
    ) -> None:
        """Background loop until ``stop`` is set: start what is due (retries of wanted names
        without a certificate, renewals), then sleep until the next thing is due, an order
        ends or a name is wanted (at most ``interval``). Orders still in flight at the end
        are cancelled."""
        wake = self._wake = asyncio.Event()
        stopping = asyncio.ensure_future(stop.wait())
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                started = loop.time()
                wake.clear()
                try:
                    upcoming = self._start_due()
                except Exception:  # a bug here must not end retries for good
                    log.exception("certificate pass failed")
                    upcoming = None
                now = self.clock()
                wait = interval
                if upcoming is not None:
                    # Not below 50 ms: the wall clock may lag the loop's timer a little.
                    wait = max(min(upcoming - now, interval), dt.timedelta(milliseconds=50))
                woken = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait(
                        {woken, stopping},
                        timeout=wait.total_seconds(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    woken.cancel()
                # A burst of wakes (a thousand agents binding again, a thousand orders
                # failing) makes one pass per MIN_PASS_GAP, not one per wake: a pass looks
                # at every wanted name. Later, never sooner: no retry is hurried.
                rest = started + MIN_PASS_GAP - loop.time()
                if rest > 0 and not stop.is_set():
                    await asyncio.wait({stopping}, timeout=rest)
        finally:
            stopping.cancel()
            self._wake = None
            tasks = list(self._inflight.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
