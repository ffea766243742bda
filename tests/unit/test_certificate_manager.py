"""CertificateManager with the local CA and operator files: issue, cache, restart, renewal at
two thirds of the lifetime, retries while a name is bound, one order per name at a time, sealed
keys only, on-demand issuance, and real TLS handshakes picking certificates by SNI."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509

from relay.certs.acme_issuer import parse_retry_after
from relay.certs.issuers import FileIssuer, IssuedCert, LocalCAIssuer, name_covered
from relay.certs.local_ca import LocalCA
from relay.certs.manager import CertEvent, CertificateManager, RetryPolicy, context_from_pem
from relay.control.secrets import SecretBox
from relay.edge.web import retry_policy_from_env
from relay.errors import (
    AcmeUnavailable,
    CertificateNameMismatch,
    ConfigError,
    SecretAuthenticationFailed,
    UnsupportedIdentifier,
)


class CountingIssuer(LocalCAIssuer):
    """The local CA issuer, counting calls; can be told to fail."""

    def __init__(self, ca: LocalCA, *, days: int = 90) -> None:
        super().__init__(ca, days=days)
        self.calls: list[list[str]] = []
        self.fail = False

    def issue_now(self, hostnames: list[str]) -> IssuedCert:
        self.calls.append(list(hostnames))
        if self.fail:
            raise AcmeUnavailable("CA is down (test)")
        return super().issue_now(hostnames)


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA.load_or_create(tmp_path / "data")


@pytest.fixture
def kek() -> bytes:
    return os.urandom(32)


@pytest.fixture
def box(kek: bytes) -> SecretBox:
    return SecretBox({"k1": kek}, "k1")


@pytest.fixture
def issuer(ca: LocalCA) -> CountingIssuer:
    return CountingIssuer(ca)


def _manager(
    tmp_path: Path, issuer: LocalCAIssuer | FileIssuer, box: SecretBox, **kw: object
) -> CertificateManager:
    return CertificateManager(tmp_path / "data", issuer, box, **kw)  # type: ignore[arg-type]


def _leaf(mgr: CertificateManager, name: str) -> x509.Certificate:
    pem = mgr.chain_pem(name)
    assert pem is not None
    return x509.load_pem_x509_certificate(pem)


def _sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName)


def _no_plaintext_keys(data_dir: Path) -> None:
    for path in data_dir.rglob("*"):
        if path.is_file() and path != data_dir / "ca" / "ca.key":  # the CA key: out of scope
            assert b"PRIVATE KEY" not in path.read_bytes(), path


# -- issue, store, cache, restart ----------------------------------------------------------


@pytest.mark.asyncio
async def test_ensure_issues_persists_sealed_and_caches(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox
) -> None:
    mgr = _manager(tmp_path, issuer, box)
    await mgr.ensure("App.Example.COM.")
    assert issuer.calls == [["app.example.com"]]
    assert _sans(_leaf(mgr, "app.example.com")) == ["app.example.com"]

    certs = tmp_path / "data" / "certs"
    assert sorted(p.name for p in certs.iterdir()) == [
        "app.example.com.key.sealed",
        "app.example.com.pem",
    ]
    assert stat.S_IMODE((certs / "app.example.com.key.sealed").stat().st_mode) == 0o600
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    key_pem = box.open(
        (certs / "app.example.com.key.sealed").read_bytes(), owner="certs", name="app.example.com"
    )
    assert b"BEGIN PRIVATE KEY" in key_pem
    _no_plaintext_keys(tmp_path / "data")

    await mgr.ensure("app.example.com")  # cached: no new issuance
    assert len(issuer.calls) == 1
    assert mgr.context_for("APP.example.com") is mgr.context_for("app.example.com") is not None
    assert mgr.context_for("other.example.com") is None


@pytest.mark.asyncio
async def test_restart_loads_from_disk_without_issuing(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox
) -> None:
    first = _manager(tmp_path, issuer, box)
    await first.ensure("a.example.com")
    await first.ensure("*.wild.example.com")
    assert len(issuer.calls) == 2

    fresh_issuer = CountingIssuer(issuer.ca)
    second = _manager(tmp_path, fresh_issuer, box)
    assert second.names() == ["*.wild.example.com", "a.example.com"]
    assert second.context_for("a.example.com") is not None  # no ensure() needed
    assert second.context_for("x.wild.example.com") is not None
    await second.ensure("a.example.com")
    await second.ensure("*.wild.example.com")
    assert fresh_issuer.calls == []
    assert _leaf(second, "a.example.com") == _leaf(first, "a.example.com")
    assert (tmp_path / "data" / "certs" / "_.wild.example.com.pem").exists()


@pytest.mark.asyncio
async def test_stored_key_under_another_kek_or_tampered_is_reissued(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox, caplog: pytest.LogCaptureFixture
) -> None:
    first = _manager(tmp_path, issuer, box)
    await first.ensure("a.example.com")
    old = _leaf(first, "a.example.com")
    sealed = tmp_path / "data" / "certs" / "a.example.com.key.sealed"
    blob = bytearray(sealed.read_bytes())
    blob[-1] ^= 1
    sealed.write_bytes(bytes(blob))

    second = _manager(tmp_path, issuer, box)
    assert second.context_for("a.example.com") is None
    assert "unusable" in caplog.text and "RLY_902" in caplog.text
    await second.ensure("a.example.com")
    assert _leaf(second, "a.example.com").serial_number != old.serial_number
    assert len(issuer.calls) == 2


@pytest.mark.asyncio
async def test_a_stored_key_moved_to_another_name_does_not_open(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox
) -> None:
    mgr = _manager(tmp_path, issuer, box)
    await mgr.ensure("a.example.com")
    certs = tmp_path / "data" / "certs"
    with pytest.raises(SecretAuthenticationFailed):
        box.open((certs / "a.example.com.key.sealed").read_bytes(), owner="certs", name="b")


@pytest.mark.asyncio
async def test_rewrap_keys_after_kek_rotation(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox, kek: bytes
) -> None:
    mgr = _manager(tmp_path, issuer, box)
    await mgr.ensure("a.example.com")
    await mgr.ensure("*.w.example.com")
    new_kek = os.urandom(32)
    rotated = SecretBox({"k1": kek, "k2": new_kek}, "k2")
    assert _manager(tmp_path, issuer, rotated).rewrap_keys() == 2
    assert _manager(tmp_path, issuer, rotated).rewrap_keys() == 0
    only_new = _manager(tmp_path, issuer, SecretBox({"k2": new_kek}, "k2"))
    assert only_new.names() == ["*.w.example.com", "a.example.com"]
    assert len(issuer.calls) == 2  # nothing was re-issued


# -- renewal -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


@pytest.mark.asyncio
async def test_renewal_at_two_thirds_of_the_lifetime(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox
) -> None:
    clock = Clock()
    issuer.days = 30  # at most 30 days: a fixed "30 days before expiry" renewed it at once
    mgr = _manager(tmp_path, issuer, box, clock=clock)
    await mgr.ensure("a.example.com")
    old = _leaf(mgr, "a.example.com")

    assert await mgr.renew_due() == []  # fresh
    clock.offset = dt.timedelta(days=19)  # 19 of 30 days: not yet two thirds
    assert await mgr.renew_due() == []
    assert len(issuer.calls) == 1
    clock.offset = dt.timedelta(days=20, hours=1)  # past two thirds: due
    issuer.days = 90
    assert await mgr.renew_due() == ["a.example.com"]
    new = _leaf(mgr, "a.example.com")
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc > old.not_valid_after_utc
    assert mgr.next_retry("a.example.com") is None
    assert await mgr.renew_due() == []

    # The renewed certificate is what a restart loads.
    again = _manager(tmp_path, CountingIssuer(issuer.ca), box, clock=clock)
    assert _leaf(again, "a.example.com") == new


@pytest.mark.asyncio
async def test_a_one_day_certificate_is_ordered_once_per_two_thirds_day(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox
) -> None:
    clock = Clock()
    issuer.days = 1
    mgr = _manager(tmp_path, issuer, box, clock=clock)
    await mgr.ensure("short.example.com")
    for hours in (0, 1, 8, 15):
        clock.offset = dt.timedelta(hours=hours)
        assert await mgr.renew_due() == []
    assert len(issuer.calls) == 1
    clock.offset = dt.timedelta(hours=16, minutes=5)
    assert await mgr.renew_due() == ["short.example.com"]
    assert len(issuer.calls) == 2
    assert await mgr.renew_due() == []  # the new one is fresh: no order every pass


@pytest.mark.asyncio
async def test_ensure_renews_a_certificate_due_for_renewal(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox
) -> None:
    clock = Clock()
    issuer.days = 30
    mgr = _manager(tmp_path, issuer, box, clock=clock)
    await mgr.ensure("a.example.com")
    clock.offset = dt.timedelta(days=25)
    second = _manager(tmp_path, issuer, box, clock=clock)
    await second.ensure("a.example.com")  # stored one is due: issue a fresh one
    assert len(issuer.calls) == 2
    assert second.not_after("a.example.com") == _leaf(second, "a.example.com").not_valid_after_utc


@pytest.mark.asyncio
async def test_failed_renewal_backs_off_with_a_bound(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox
) -> None:
    clock = Clock()
    issuer.days = 40
    policy = RetryPolicy(base=dt.timedelta(minutes=1), cap=dt.timedelta(minutes=10))
    mgr = _manager(tmp_path, issuer, box, clock=clock, retry=policy)
    await mgr.ensure("a.example.com")
    clock.offset = dt.timedelta(days=30)
    issuer.fail = True
    delays: list[dt.timedelta] = []
    for _ in range(8):
        before = len(issuer.calls)
        assert await mgr.renew_due() == []
        assert len(issuer.calls) == before + 1
        retry_at = mgr.next_retry("a.example.com")
        assert retry_at is not None
        delays.append(retry_at - clock())
        assert await mgr.renew_due() == []  # not yet due again: no new attempt
        assert len(issuer.calls) == before + 1
        clock.offset += delays[-1] + dt.timedelta(seconds=1)
    assert delays[0] <= dt.timedelta(minutes=1)
    assert delays[3] > dt.timedelta(minutes=3)  # grows (1, 2, 4, 8 min, with jitter >= 0.5)
    assert all(d <= dt.timedelta(minutes=10) for d in delays)  # bounded

    issuer.fail = False
    issuer.days = 90
    assert await mgr.renew_due() == ["a.example.com"]
    assert mgr.next_retry("a.example.com") is None


@pytest.mark.asyncio
async def test_run_loop_renews_and_stops(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox
) -> None:
    clock = Clock()
    issuer.days = 40
    mgr = _manager(tmp_path, issuer, box, clock=clock)
    await mgr.ensure("a.example.com")
    clock.offset = dt.timedelta(days=30)
    issuer.days = 90
    stop = asyncio.Event()
    task = asyncio.create_task(mgr.run(stop, interval=dt.timedelta(seconds=30)))
    for _ in range(100):
        if len(issuer.calls) == 2:
            break
        await asyncio.sleep(0.02)
    assert len(issuer.calls) == 2
    stop.set()
    await asyncio.wait_for(task, timeout=5)


# -- wanted names: retried while bound, one order at a time, events -----------------------


class GatedIssuer(CountingIssuer):
    """The local CA issuer whose async issue waits for a gate: an order that takes time."""

    def __init__(self, ca: LocalCA) -> None:
        super().__init__(ca)
        self.gate = asyncio.Event()

    async def issue(self, hostnames: list[str]) -> IssuedCert:
        await asyncio.wait_for(self.gate.wait(), timeout=10)
        return self.issue_now(hostnames)


@pytest.mark.asyncio
async def test_bind_renewal_and_ensure_share_one_order_per_name(
    tmp_path: Path, ca: LocalCA, box: SecretBox
) -> None:
    clock = Clock()
    issuer = GatedIssuer(ca)
    issuer.days = 30
    first = _manager(tmp_path, CountingIssuer(ca, days=30), box, clock=clock)
    await first.ensure("a.example.com")
    clock.offset = dt.timedelta(days=21)  # the stored certificate is due at startup

    mgr = _manager(tmp_path, issuer, box, clock=clock, bound=lambda _: True)
    assert mgr.want("a.example.com") is not None  # valid meanwhile: "issued", order started
    renewal = asyncio.create_task(mgr.renew_due())
    binds = [asyncio.create_task(mgr.ensure("a.example.com")) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert mgr.want("a.example.com") is not None  # a second bind (take-over) joins too
    issuer.gate.set()
    await asyncio.wait_for(asyncio.gather(renewal, *binds), timeout=10)
    assert issuer.calls == [["a.example.com"]]
    assert await renewal == ["a.example.com"]


@pytest.mark.asyncio
async def test_a_failed_first_issuance_is_retried_while_bound_then_stops(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox
) -> None:
    bound = {"a.example.com"}
    events: list[CertEvent] = []
    policy = RetryPolicy(base=dt.timedelta(milliseconds=20), cap=dt.timedelta(milliseconds=80))
    mgr = _manager(
        tmp_path, issuer, box, bound=bound.__contains__, on_event=events.append, retry=policy
    )
    stop = asyncio.Event()
    runner = asyncio.create_task(mgr.run(stop))
    try:
        issuer.fail = True
        assert mgr.want("a.example.com") is None  # ordered at once; it reports itself
        for _ in range(400):  # bounded (8 s): 8 failures, passes >= MIN_PASS_GAP apart
            if len(issuer.calls) >= 8:
                break
            await asyncio.sleep(0.02)
        assert len(issuer.calls) >= 8  # not "5 attempts, then never again"
        failed = [e for e in events if e.state == "failed"]
        assert failed and all(e.error is not None and e.error.code == "RLY_805" for e in failed)
        assert all(e.next_attempt is not None for e in failed)
        status = mgr.status("a.example.com")
        assert status is not None and status.state in ("failed", "pending")

        issuer.fail = False  # the CA is back
        for _ in range(200):
            if mgr.context_for("a.example.com") is not None:
                break
            await asyncio.sleep(0.02)
        assert mgr.context_for("a.example.com") is not None
        assert events[-1].state == "issued" and events[-1].expires is not None
        assert mgr.next_retry("a.example.com") is None

        # Unbound: no more attempts for it, whatever happens to its certificate.
        issuer.fail = True
        bound.discard("a.example.com")
        mgr.want("b.example.com")  # wakes the loop; b is not bound, so it is dropped too
        calls = len(issuer.calls)
        await asyncio.sleep(1.0)  # several passes and caps long
        assert len(issuer.calls) <= calls + 1  # at most the order b started at want()
    finally:
        stop.set()
        await asyncio.wait_for(runner, timeout=5)


@pytest.mark.asyncio
async def test_errors_that_cannot_heal_are_not_retried(
    tmp_path: Path, ca: LocalCA, box: SecretBox
) -> None:
    class WildcardRefuser(CountingIssuer):
        def issue_now(self, hostnames: list[str]) -> IssuedCert:
            self.calls.append(list(hostnames))
            raise UnsupportedIdentifier("cannot (test)")

    issuer = WildcardRefuser(ca)
    events: list[CertEvent] = []
    mgr = _manager(tmp_path, issuer, box, bound=lambda _: True, on_event=events.append)
    with pytest.raises(UnsupportedIdentifier):
        await mgr.ensure("a.example.com")
    assert mgr.next_retry("a.example.com") is None
    assert events[-1].state == "failed" and events[-1].next_attempt is None
    assert await mgr.renew_due() == []
    assert len(issuer.calls) == 1


@pytest.mark.asyncio
async def test_the_issuers_not_before_beats_the_backoff(
    tmp_path: Path, ca: LocalCA, box: SecretBox
) -> None:
    class PacedFailure(CountingIssuer):
        hold = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30)

        def not_before(self, hostname: str) -> dt.datetime | None:
            return self.hold if self.fail else None

    issuer = PacedFailure(ca)
    issuer.fail = True
    policy = RetryPolicy(base=dt.timedelta(seconds=1), cap=dt.timedelta(seconds=2))
    mgr = _manager(tmp_path, issuer, box, retry=policy, bound=lambda _: True)
    with pytest.raises(AcmeUnavailable):
        await mgr.ensure("a.example.com")
    assert mgr.next_retry("a.example.com") == issuer.hold
    assert mgr.want("a.example.com") is not None  # a rebind does not hurry the CA
    assert len(issuer.calls) == 1


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert parse_retry_after("120", now) == now + dt.timedelta(seconds=120)
    assert parse_retry_after("Fri, 02 Jan 2026 03:10:00 GMT", now) == dt.datetime(
        2026, 1, 2, 3, 10, tzinfo=dt.UTC
    )
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("99999999999", now) == now + dt.timedelta(days=30)


def test_certificate_retry_backoff_from_the_environment() -> None:
    policy = retry_policy_from_env({"RELAY_CERT_RETRY_BASE": "0.5", "RELAY_CERT_RETRY_MAX": "3"})
    assert policy == RetryPolicy(base=dt.timedelta(seconds=0.5), cap=dt.timedelta(seconds=3))
    assert retry_policy_from_env({}) == RetryPolicy()
    assert RetryPolicy().cap == dt.timedelta(minutes=10)
    for bad in ({"RELAY_CERT_RETRY_MAX": "x"}, {"RELAY_CERT_RETRY_BASE": "-1"}):
        with pytest.raises(ConfigError):
            retry_policy_from_env(bad)
    with pytest.raises(ConfigError):
        retry_policy_from_env({"RELAY_CERT_RETRY_BASE": "60", "RELAY_CERT_RETRY_MAX": "30"})


# -- on demand, files, wildcards -----------------------------------------------------------


def test_on_demand_issuance_only_for_allowed_names(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox
) -> None:
    allowed = {"x.ondemand.test"}
    mgr = _manager(tmp_path, issuer, box, issue_on_demand=True, allowed=allowed.__contains__)
    assert mgr.context_for("evil.test") is None
    assert issuer.calls == []
    ctx = mgr.context_for("X.ondemand.test")
    assert ctx is not None
    assert mgr.context_for("x.ondemand.test") is ctx
    assert issuer.calls == [["x.ondemand.test"]]
    # A name no endpoint is bound to (a visitor's, under a wildcard) is not stored: only
    # wanted names are (tests/unit/test_certificates_leave_memory_with_their_names.py).
    assert not (tmp_path / "data" / "certs" / "x.ondemand.test.key.sealed").exists()
    _no_plaintext_keys(tmp_path / "data")


def test_on_demand_failure_returns_none(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox
) -> None:
    issuer.fail = True
    mgr = _manager(tmp_path, issuer, box, issue_on_demand=True, allowed=lambda _: True)
    assert mgr.context_for("x.test") is None


def test_on_demand_off_by_default(tmp_path: Path, issuer: CountingIssuer, box: SecretBox) -> None:
    mgr = _manager(tmp_path, issuer, box, allowed=lambda _: True)
    assert mgr.context_for("x.test") is None
    assert issuer.calls == []


@pytest.mark.asyncio
async def test_file_issuer_serves_covered_names_and_never_writes(
    tmp_path: Path, ca: LocalCA, box: SecretBox
) -> None:
    chain, key = ca.issue_server_cert(["*.files.test", "files.test"], [])
    ops = tmp_path / "operator"
    ops.mkdir()
    (ops / "cert.pem").write_bytes(chain)
    (ops / "key.pem").write_bytes(key)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in ops.iterdir()}
    mgr = _manager(tmp_path, FileIssuer(ops / "cert.pem", ops / "key.pem"), box)
    await mgr.ensure("files.test")
    await mgr.ensure("a.files.test")
    await mgr.ensure("*.files.test")
    assert mgr.context_for("b.files.test") is not None
    with pytest.raises(CertificateNameMismatch, match=r"a\.b\.files\.test") as exc_info:
        await mgr.ensure("a.b.files.test")
    assert exc_info.value.code == "RLY_802"
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in ops.iterdir()} == before
    # The operator's key stays where the operator put it: nothing copied into the data dir.
    assert list((tmp_path / "data" / "certs").iterdir()) == []


def test_name_covered_rules() -> None:
    assert name_covered("a.example.com", ["*.example.com"])
    assert not name_covered("example.com", ["*.example.com"])
    assert not name_covered("a.b.example.com", ["*.example.com"])
    assert name_covered("*.example.com", ["*.example.com"])
    assert not name_covered("*.example.com", ["a.example.com"])
    assert name_covered("A.Example.com.", ["a.example.com"])


@pytest.mark.asyncio
async def test_invalid_names_are_config_errors(
    tmp_path: Path, issuer: CountingIssuer, box: SecretBox
) -> None:
    mgr = _manager(tmp_path, issuer, box)
    for bad in ("", "-a.test", "a..test", "a_b.test", "*.*.test", "x" * 300):
        with pytest.raises(ConfigError):
            await mgr.ensure(bad)
    assert mgr.context_for("") is None
    assert mgr.context_for("x" * 300) is None


def test_context_is_hardened(ca: LocalCA) -> None:
    chain, key = ca.issue_server_cert(["a.test"], [])
    ctx = context_from_pem(chain, key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert all(c["protocol"] in ("TLSv1.2", "TLSv1.3") for c in ctx.get_ciphers())


# -- real TLS handshakes -------------------------------------------------------------------


@contextmanager
def sni_server(
    pick: Callable[[str], ssl.SSLContext | None],
) -> Iterator[tuple[int, list[BaseException]]]:
    """A TLS server on 127.0.0.1 whose SNI callback asks ``pick`` for the context."""
    base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    base.minimum_version = ssl.TLSVersion.TLSv1_2

    def sni(obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> int | None:
        ctx = pick(name or "")
        if ctx is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        obj.context = ctx
        return None

    base.sni_callback = sni
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if stop.is_set():
                conn.close()
                return
            conn.settimeout(10)
            try:
                with base.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello " + (tls.selected_alpn_protocol() or "-").encode())
            except (OSError, ssl.SSLError) as exc:
                errors.append(exc)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = int(listener.getsockname()[1])
    try:
        yield port, errors
    finally:
        stop.set()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        thread.join(10)
        listener.close()


def _connect(port: int, ca: LocalCA, name: str) -> tuple[x509.Certificate, bytes]:
    client = ssl.create_default_context(cafile=str(ca.ca_pem_path))
    client.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        return x509.load_der_x509_certificate(der), tls.recv(100)


@pytest.mark.asyncio
async def test_tls_handshake_picks_certificate_by_sni(
    tmp_path: Path, ca: LocalCA, issuer: CountingIssuer, box: SecretBox
) -> None:
    mgr = _manager(tmp_path, issuer, box)
    for name in ("one.test", "two.test", "*.wild.test"):
        await mgr.ensure(name)
    with sni_server(mgr.context_for) as (port, errors):
        for sni, want in (
            ("one.test", ["one.test"]),
            ("two.test", ["two.test"]),
            ("a.wild.test", ["*.wild.test"]),
        ):
            cert, greeting = await asyncio.to_thread(_connect, port, ca, sni)
            assert _sans(cert) == want
            assert greeting == b"hello http/1.1"
        for unknown in ("three.test", "a.b.wild.test"):
            with pytest.raises(ssl.SSLError):
                await asyncio.to_thread(_connect, port, ca, unknown)
        assert errors  # the server saw the refused handshakes


@pytest.mark.asyncio
async def test_tls_handshake_after_restart_and_on_demand(
    tmp_path: Path, ca: LocalCA, issuer: CountingIssuer, box: SecretBox
) -> None:
    first = _manager(tmp_path, issuer, box)
    await first.ensure("stored.test")
    mgr = _manager(
        tmp_path, issuer, box, issue_on_demand=True, allowed=lambda n: n.endswith(".bound.test")
    )
    with sni_server(mgr.context_for) as (port, _):
        cert, _ = await asyncio.to_thread(_connect, port, ca, "stored.test")
        assert _sans(cert) == ["stored.test"]
        cert, _ = await asyncio.to_thread(_connect, port, ca, "new.bound.test")
        assert _sans(cert) == ["new.bound.test"]
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(_connect, port, ca, "not.allowed.test")
    _no_plaintext_keys(tmp_path / "data")
