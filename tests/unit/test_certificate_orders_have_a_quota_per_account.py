"""Each account may start ``cert_orders_per_account`` certificate orders in 3 hours
(relay/certs/order_quota.py, charged by the CertificateManager): one tenant binding https
names at random cannot spend the ACME account's orders that every tenant shares. Past
its quota a name waits (RLY_807) for the time the quota gives; other accounts order on;
renewals are not charged."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.certs import order_quota
from relay.certs.issuers import IssuedCert, LocalCAIssuer
from relay.certs.local_ca import LocalCA
from relay.certs.manager import CertEvent, CertificateManager
from relay.certs.order_quota import WINDOW, Deferred, OrderQuota, share_of
from relay.config import load_edge_config
from relay.control.secrets import SecretBox
from relay.errors import AcmeUnavailable, ConfigError

T0 = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


# -- the quota alone --------------------------------------------------------------------


def test_an_owner_past_its_quota_waits_for_its_oldest_order_to_leave_the_window() -> None:
    quota = OrderQuota(3)
    assert [quota.take("a", at(m)) for m in (0, 10, 20)] == [None, None, None]
    assert quota.take("a", at(30)) == Deferred(at(0) + WINDOW, first=True)
    assert quota.take("a", at(40)) == Deferred(at(0) + WINDOW, first=False)  # said once
    assert quota.take("b", at(40)) is None  # another account orders on
    assert quota.charged("a", at(40)) == 3  # refusals charge nothing
    assert quota.take("a", at(0) + WINDOW) is None  # the first order left the window
    assert quota.take("a", at(1) + WINDOW) == Deferred(at(10) + WINDOW, first=True)


def test_a_quota_of_zero_is_no_quota() -> None:
    quota = OrderQuota(0)
    assert all(quota.take("a", at(0)) is None for _ in range(1000))


def test_a_lowered_quota_waits_until_the_owner_is_below_it() -> None:
    quota = OrderQuota(5)
    for m in range(5):
        assert quota.take("a", at(m)) is None
    quota.per_owner = 2  # a reload
    # Below 2 in the window once the orders of minutes 0, 1, 2 and 3 left it.
    assert quota.take("a", at(10)) == Deferred(at(3) + WINDOW, first=True)


def test_a_negative_quota_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="per_owner"):
        OrderQuota(-1)
    path = tmp_path / "edge.yml"
    path.write_text("cert_orders_per_account: -1\n")
    with pytest.raises(ConfigError, match="cert_orders_per_account must be >= 0"):
        load_edge_config(path, {})
    path.write_text("cert_orders_per_account: 5\n")
    assert load_edge_config(path, {}).cert_orders_per_account == 5


def test_owners_counted_at_once_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(order_quota, "MAX_OWNERS", 3)
    quota = OrderQuota(1)
    for i, owner in enumerate("abc"):
        assert quota.take(owner, at(i)) is None
    # Full of owners with an order in the window: the one whose last order is oldest goes.
    assert quota.take("d", at(5)) is None
    assert quota.charged("a", at(5)) == 0 and quota.charged("b", at(5)) == 1
    # Past the window every one of them is forgotten at once, and d is counted anew.
    assert quota.take("e", at(5) + WINDOW) is None
    assert quota.take("d", at(6) + WINDOW) is None


def test_workers_share_an_accounts_quota() -> None:
    assert share_of(30, 1) == 30
    assert share_of(30, 4) == 7
    assert share_of(3, 8) == 1  # never 0: that would be no quota at all
    assert share_of(0, 8) == 0


@settings(max_examples=200, deadline=None)
@given(
    per_owner=st.integers(min_value=1, max_value=5),
    steps=st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(min_value=0, max_value=90)),
        min_size=1,
        max_size=60,
    ),
)
def test_no_owner_gets_more_than_its_quota_in_any_window(
    per_owner: int, steps: list[tuple[str, int]]
) -> None:
    """Any owners, any pace: the grants of one owner within any WINDOW never exceed
    per_owner, a refusal names a time to come, and at that time the owner is granted."""
    quota = OrderQuota(per_owner)
    now = T0
    granted: dict[str, list[dt.datetime]] = {}
    for owner, gap_minutes in steps:
        now += dt.timedelta(minutes=gap_minutes)
        deferred = quota.take(owner, now)
        if deferred is None:
            granted.setdefault(owner, []).append(now)
            continue
        assert deferred.until > now
        probe = OrderQuota(per_owner)
        for t in granted[owner]:
            assert probe.take(owner, t) is None
        assert probe.take(owner, deferred.until) is None
    for times in granted.values():
        for i, start in enumerate(times):
            assert sum(1 for t in times[i:] if t < start + WINDOW) <= per_owner


# -- charged by the certificate manager -----------------------------------------------


class CountingIssuer(LocalCAIssuer):
    def __init__(self, ca: LocalCA) -> None:
        super().__init__(ca, days=90)
        self.calls: list[str] = []

    def issue_now(self, hostnames: list[str]) -> IssuedCert:
        self.calls.extend(hostnames)
        return super().issue_now(hostnames)


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


async def _settle(mgr: CertificateManager) -> None:
    for _ in range(100):  # bounded: the orders of the local CA end at once
        if not mgr._inflight:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("orders still in flight")


def _quota_manager(
    tmp_path: Path,
    issuer: LocalCAIssuer,
    quota: OrderQuota,
    bound: Callable[[str], bool],
    **kw: Any,
) -> CertificateManager:
    return CertificateManager(
        tmp_path / "data",
        issuer,
        SecretBox({"k1": os.urandom(32)}, "k1"),
        bound=bound,
        order_quota=quota,
        **kw,
    )


@pytest.mark.asyncio
async def test_an_account_past_its_quota_waits_while_others_order(tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(tmp_path / "data")
    issuer = CountingIssuer(ca)
    clock = Clock()
    events: list[CertEvent] = []
    mgr = _quota_manager(
        tmp_path, issuer, OrderQuota(2), lambda _: True, on_event=events.append, clock=clock
    )
    started = clock.now
    assert mgr.want("a1.example.com", "acct-a") is None  # ordered: it reports itself
    assert mgr.want("a2.example.com", "acct-a") is None
    assert mgr.want("a3.example.com", "acct-a") is None  # put off: reported as an event
    third = events[-1]
    assert third.name == "a3.example.com" and third.state == "failed"
    assert third.error is not None and third.error.code == "RLY_807"
    assert "cert_orders_per_account" in str(third.error)
    assert third.next_attempt == started + WINDOW
    assert mgr.want("b1.example.com", "acct-b") is None  # another account orders on
    await _settle(mgr)
    assert sorted(issuer.calls) == ["a1.example.com", "a2.example.com", "b1.example.com"]

    # A pass before the time changes nothing: a3 waits, b's and a's names are fresh.
    clock.now = started + WINDOW - dt.timedelta(seconds=1)
    assert await mgr.renew_due() == []
    assert len(issuer.calls) == 3
    # A rebind does not hurry it either, and charges nothing.
    assert mgr.want("a3.example.com", "acct-a") == third  # as it stands, from status()

    # Its time: a3 is ordered, charged to a (who then has 1 in the window).
    clock.now = started + WINDOW
    assert await mgr.renew_due() == ["a3.example.com"]
    assert mgr.status("a3.example.com") == CertEvent(
        "a3.example.com", "issued", expires=mgr.not_after("a3.example.com")
    )

    # Renewals are not charged: at two thirds of 90 days (the local CA dates its
    # certificates by the real clock, so all four are due) a's three names are renewed
    # with its quota of 2, and b's.
    clock.now = started + dt.timedelta(days=61)
    renewed = await mgr.renew_due()
    assert sorted(renewed) == [f"{n}.example.com" for n in ("a1", "a2", "a3", "b1")]
    # ... and a new name of a's is still within its quota after them.
    assert mgr.want("a4.example.com", "acct-a") is None
    await _settle(mgr)
    assert issuer.calls[-1] == "a4.example.com"


@pytest.mark.asyncio
async def test_a_name_past_its_quota_found_by_the_loop_is_reported(tmp_path: Path) -> None:
    """A retry that comes due while its account is past its quota (found by a pass of the
    loop, not by a bind) is reported to whoever serves the name: the agent hears RLY_807
    and when."""
    ca = LocalCA.load_or_create(tmp_path / "data")

    class FailingOnce(CountingIssuer):
        def issue_now(self, hostnames: list[str]) -> IssuedCert:
            if not self.calls:
                self.calls.extend(hostnames)
                raise AcmeUnavailable("the CA is down (test)")
            return super().issue_now(hostnames)

    issuer = FailingOnce(ca)
    clock = Clock()
    events: list[CertEvent] = []
    mgr = _quota_manager(
        tmp_path, issuer, OrderQuota(1), lambda _: True, on_event=events.append, clock=clock
    )
    assert mgr.want("a1.example.com", "acct-a") is None  # charged, and it fails
    await _settle(mgr)
    retry_at = mgr.next_retry("a1.example.com")
    assert retry_at is not None and events[-1].error is not None
    assert events[-1].error.code == "RLY_805"
    clock.now = retry_at  # due, but the failed order was a's one of the window
    assert await mgr.renew_due() == []
    assert events[-1].state == "failed" and events[-1].error is not None
    assert events[-1].error.code == "RLY_807"
    assert events[-1].next_attempt is not None and events[-1].next_attempt > retry_at


@pytest.mark.asyncio
async def test_a_name_put_off_and_let_go_is_judged_afresh_for_whoever_binds_it_next(
    tmp_path: Path,
) -> None:
    """Account a, past its quota, lets a name go; account b binds it: b's quota decides,
    not a's hold (b used to wait up to 3 h, told of a's account)."""
    issuer = CountingIssuer(LocalCA.load_or_create(tmp_path / "data"))
    bound = {"mine.example.com", "contested.example.com"}
    mgr = _quota_manager(tmp_path, issuer, OrderQuota(1), bound.__contains__)
    assert mgr.want("mine.example.com", "acct-a") is None
    assert mgr.want("contested.example.com", "acct-a") is None  # put off
    assert mgr.next_retry("contested.example.com") is not None
    bound.discard("contested.example.com")
    mgr.release("contested.example.com")
    bound.add("contested.example.com")
    assert mgr.want("contested.example.com", "acct-b") is None  # ordered for b at once
    await _settle(mgr)
    assert issuer.calls == ["mine.example.com", "contested.example.com"]
    assert mgr.status("contested.example.com") is not None
    assert mgr.status("contested.example.com").state == "issued"  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_a_name_put_off_at_its_bind_is_ordered_at_its_time_by_the_loop(
    tmp_path: Path,
) -> None:
    """The loop sleeps up to an hour when nothing is due: a name the quota puts off at its
    bind wakes it, so it is ordered when the quota says, not an hour later."""
    issuer = CountingIssuer(LocalCA.load_or_create(tmp_path / "data"))
    bound = {"a1.example.com", "a2.example.com"}
    quota = OrderQuota(1, window=dt.timedelta(seconds=0.5))
    mgr = _quota_manager(tmp_path, issuer, quota, bound.__contains__)
    stop = asyncio.Event()
    runner = asyncio.create_task(mgr.run(stop))
    try:
        mgr.want("a1.example.com", "acct-a")
        await _settle(mgr)
        await asyncio.sleep(0.3)  # the loop is asleep: nothing is due for 60 days
        assert mgr.want("a2.example.com", "acct-a") is None  # put off for 0.5 s at most
        for _ in range(300):  # bounded: 3 s
            if "a2.example.com" in issuer.calls:
                break
            await asyncio.sleep(0.01)
        assert issuer.calls == ["a1.example.com", "a2.example.com"]
    finally:
        stop.set()
        await asyncio.wait_for(runner, timeout=5)


@pytest.mark.asyncio
async def test_a_lowered_or_lifted_quota_judges_the_names_it_put_off_again(
    tmp_path: Path,
) -> None:
    issuer = CountingIssuer(LocalCA.load_or_create(tmp_path / "data"))
    bound = {"a1.example.com", "a2.example.com"}
    quota = OrderQuota(1)
    mgr = _quota_manager(tmp_path, issuer, quota, bound.__contains__)
    mgr.want("a1.example.com", "acct-a")
    assert mgr.want("a2.example.com", "acct-a") is None
    await _settle(mgr)
    assert issuer.calls == ["a1.example.com"]
    quota.per_owner = 0  # a reload lifts it
    mgr.quota_changed()
    assert await mgr.renew_due() == ["a2.example.com"]
