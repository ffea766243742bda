"""ACME with several workers of one edge: what one worker's order sets up, any worker
answers, and a name is ordered by one worker at a time.

Two objects on one data directory stand for two workers here: each has its own memory and
opens its own files, as two processes do (flock conflicts between two open file
descriptions, within a process as across processes). One test holds the lock from a real
child process and kills it.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from relay.certs.acme_challenges import MAX_AGE, SharedChallenges
from relay.certs.acme_issuer import AcmeIssuer, AcmeLimits, tls_alpn01_challenge_cert
from relay.certs.issuers import IssuedCert, LocalCAIssuer
from relay.certs.local_ca import LocalCA
from relay.certs.manager import CertificateManager
from relay.certs.order_lock import order_lock
from relay.control.secrets import SecretBox
from relay.errors import CertificateError

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
BOX = SecretBox({"k1": os.urandom(32)}, "k1")


# --- challenges ------------------------------------------------------------------------------


def test_a_challenge_set_up_by_one_worker_is_answered_by_another(tmp_path: Path) -> None:
    directory = tmp_path / "acme" / "challenges"
    ordering, other = SharedChallenges(directory, BOX), SharedChallenges(directory, BOX)
    assert other.http01(TOKEN) is None

    ordering.put_http01(TOKEN, b"key-authorization")
    assert other.http01(TOKEN) == b"key-authorization"
    pair = tls_alpn01_challenge_cert("app.relay.test", f"{TOKEN}.thumb")
    ordering.put_tls_alpn01("app.relay.test", pair)
    assert other.tls_alpn01("app.relay.test") == pair
    assert other.tls_alpn01("other.relay.test") is None

    # Only the edge's user reads them: the directory is 0700, each file 0600.
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    modes = {stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    assert modes == {0o600}

    ordering.drop_http01(TOKEN)
    ordering.drop_tls_alpn01("app.relay.test")
    assert other.http01(TOKEN) is None
    assert other.tls_alpn01("app.relay.test") is None
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize(
    "token", ["", "../../certs/x", "a/b", "a.b", "x" * 257, "tok en", "%2e%2e", "\x00"]
)
def test_a_token_that_is_not_base64url_is_never_looked_up(tmp_path: Path, token: str) -> None:
    directory = tmp_path / "challenges"
    shared = SharedChallenges(directory, BOX)
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "x").write_bytes(b"secret")
    (directory / "a.b").write_bytes(b"not a challenge")
    assert shared.http01(token) is None
    with pytest.raises(ValueError):
        shared.put_http01(token, b"x")


@pytest.mark.parametrize("name", ["", "../x", "*.relay.test", "a/b.test", "-a.test", "A.TEST"])
def test_a_name_that_is_not_a_plain_hostname_is_never_looked_up(tmp_path: Path, name: str) -> None:
    shared = SharedChallenges(tmp_path / "challenges", BOX)
    assert shared.tls_alpn01(name) is None
    with pytest.raises(ValueError):
        shared.put_tls_alpn01(name, (b"c", b"k"))


def test_a_killed_workers_challenges_are_ignored_then_removed(tmp_path: Path) -> None:
    directory = tmp_path / "challenges"
    now = [time.time()]
    SharedChallenges(directory, BOX).put_http01(TOKEN, b"old")  # its worker never dropped it
    reader = SharedChallenges(directory, BOX, clock=lambda: now[0])
    assert reader.http01(TOKEN) == b"old"
    now[0] += MAX_AGE + 1
    assert reader.http01(TOKEN) is None
    assert list(directory.iterdir()) == []

    # A worker starting later sweeps what is older than that.
    SharedChallenges(directory, BOX).put_http01(TOKEN, b"old")
    SharedChallenges(directory, BOX, clock=lambda: now[0])
    assert list(directory.iterdir()) == []


def test_a_challenge_key_is_sealed_on_disk_and_opens_only_for_its_name(tmp_path: Path) -> None:
    directory = tmp_path / "challenges"
    ordering, other = SharedChallenges(directory, BOX), SharedChallenges(directory, BOX)
    pair = tls_alpn01_challenge_cert("app.relay.test", "x.y")
    ordering.put_tls_alpn01("app.relay.test", pair)
    [stored] = directory.iterdir()
    assert b"PRIVATE KEY" not in stored.read_bytes()  # no private key in plaintext
    # Copied onto another name's file, it does not open: no challenge there.
    (directory / "tls-alpn-01.evil.relay.test.sealed").write_bytes(stored.read_bytes())
    assert other.tls_alpn01("evil.relay.test") is None
    # Nor under another edge's keys.
    stranger = SharedChallenges(directory, SecretBox({"k2": os.urandom(32)}, "k2"))
    assert stranger.tls_alpn01("app.relay.test") is None
    assert other.tls_alpn01("app.relay.test") == pair


def test_a_tls_alpn_file_without_its_key_is_no_challenge(tmp_path: Path) -> None:
    directory = tmp_path / "challenges"
    shared = SharedChallenges(directory, BOX)
    cert, _key = tls_alpn01_challenge_cert("app.relay.test", "x.y")
    sealed = BOX.seal(cert, owner="acme", name="challenge app.relay.test")
    (directory / "tls-alpn-01.app.relay.test.sealed").write_bytes(sealed)
    assert shared.tls_alpn01("app.relay.test") is None


def test_two_issuers_of_one_data_dir_answer_each_others_challenges(tmp_path: Path) -> None:
    box = SecretBox({"k1": os.urandom(32)}, "k1")
    one = AcmeIssuer("https://127.0.0.1:1/dir", None, tmp_path, box)
    two = AcmeIssuer("https://127.0.0.1:1/dir", None, tmp_path, box)
    one.challenges.put_http01(TOKEN, b"authz")
    assert two.http01_response(TOKEN) == b"authz"
    pair = tls_alpn01_challenge_cert("app.relay.test", "x.y")
    one.challenges.put_tls_alpn01("app.relay.test", pair)
    assert two.tls_alpn01_certificate("APP.relay.test.") == pair


def test_the_orders_per_account_are_split_between_workers() -> None:
    limits = AcmeLimits()
    assert limits.shared_by(1) == limits
    assert limits.shared_by(4).orders == 75
    assert limits.shared_by(4).failed_validations == limits.failed_validations
    assert 8 * limits.shared_by(8).orders <= limits.orders
    assert limits.shared_by(1000).orders == 1


# --- one order per name ----------------------------------------------------------------------


class SlowCA:
    """An issuer that is not a SyncIssuer (as ACME is not): each order takes ``delay``
    seconds. Certificates come from a local CA; ``calls`` counts orders, shared by the
    two "workers"."""

    def __init__(self, ca: LocalCA, calls: list[str], delay: float) -> None:
        self._issuer = LocalCAIssuer(ca)
        self.calls = calls
        self.delay = delay

    async def issue(self, hostnames: list[str]) -> IssuedCert:
        self.calls.append(hostnames[0])
        await asyncio.sleep(self.delay)
        return self._issuer.issue_now(hostnames)


def _serial(mgr: CertificateManager, name: str) -> int:
    pem = mgr.chain_pem(name)
    assert pem is not None
    return x509.load_pem_x509_certificate(pem).serial_number


@pytest.mark.asyncio
async def test_two_workers_wanting_one_name_order_it_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ca = LocalCA.load_or_create(data)
    box = SecretBox({"k1": os.urandom(32)}, "k1")
    calls: list[str] = []
    workers = [
        CertificateManager(data, SlowCA(ca, calls, 0.5), box, bound=lambda _: True)
        for _ in range(2)
    ]
    names = [f"n{i}.relay.test" for i in range(4)]
    await asyncio.wait_for(
        asyncio.gather(*(w.ensure(n) for w in workers for n in names)), timeout=20
    )
    assert sorted(calls) == names  # each name once, whichever worker got there first
    for name in names:
        assert _serial(workers[0], name) == _serial(workers[1], name)


@pytest.mark.asyncio
async def test_the_order_lock_waits_for_another_process_and_is_freed_by_its_death(
    tmp_path: Path,
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"os.makedirs({str(certs / '.orders')!r}, exist_ok=True)\n"
            f"fd = os.open({str(certs / '.orders' / 'a.relay.test.lock')!r}, "
            "os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
        with pytest.raises(CertificateError, match="has not ended within"):
            async with order_lock(certs, "a.relay.test", wait=0.5):
                pass
        # Another name is not held up.
        async with order_lock(certs, "b.relay.test", wait=0.5):
            pass
        holder.kill()  # a worker killed mid-order: the kernel drops its lock
        holder.wait(timeout=10)
        started = time.monotonic()
        async with order_lock(certs, "a.relay.test", wait=5):
            pass
        assert time.monotonic() - started < 1
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
