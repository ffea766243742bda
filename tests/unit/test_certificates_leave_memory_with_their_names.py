"""A certificate is held while its name is: what agents and visitors pick cannot grow the
edge for good (relay/certs/manager.py).

* A bound name's certificate leaves memory when its endpoint goes (``release``), or at the
  next pass when ``bound`` says so; the local CA's leaves the disk too (it is made again
  in a millisecond), a CA's stays there and is loaded again, not ordered, on a rebind.
* An order still in flight when its name goes is forgotten when it ends.
* A name a visitor picks (under a wildcard endpoint) gets a certificate made on demand,
  kept in memory only, among the MAX_ON_DEMAND most recently used.

Measured before (an edge on the local CA, `/tmp`-style scripts in the issue's note): every
https name an agent bound and unbound kept about 27 KB of memory and two files, and so
did every name a visitor sent under a wildcard endpoint, for good.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from relay.certs import manager as manager_mod
from relay.certs.issuers import IssuedCert
from relay.certs.local_ca import LocalCA
from relay.certs.manager import CertificateManager
from relay.control.secrets import SecretBox
from tests.unit.test_certificate_manager import Clock, GatedIssuer
from tests.unit.test_certificate_orders_have_a_quota_per_account import (
    CountingIssuer,
    _settle,
)


# A class that is not a SyncIssuer: no issue_now attribute for the Protocol check.
class AsyncOnly:
    def __init__(self, inner: GatedIssuer) -> None:
        self.inner = inner

    async def issue(self, hostnames: list[str]) -> IssuedCert:
        return await self.inner.issue(hostnames)


def stored(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "certs").iterdir() if not p.name.startswith("."))


def manager(
    data_dir: Path,
    issuer: object,
    bound: set[str],
    allowed: set[str] | None = None,
    **kw: Any,
) -> CertificateManager:
    return CertificateManager(
        data_dir,
        issuer,  # type: ignore[arg-type]
        SecretBox({"k1": b"k" * 32}, "k1"),
        issue_on_demand=True,
        allowed=(allowed or set()).__contains__,
        bound=bound.__contains__,
        **kw,
    )


@pytest.mark.asyncio
async def test_a_local_certificate_leaves_memory_and_disk_with_its_endpoint(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    issuer = CountingIssuer(LocalCA.load_or_create(data_dir))
    bound = {"a.example.com", "b.example.com"}
    mgr = manager(data_dir, issuer, bound, allowed=set(bound))
    mgr.want("a.example.com")
    mgr.want("b.example.com")
    await _settle(mgr)
    assert mgr.held() == (2, 0)
    assert len(stored(data_dir)) == 4  # chain and sealed key of each

    bound.discard("a.example.com")
    mgr.release("a.example.com")
    assert mgr.held() == (1, 0)
    assert mgr.names() == ["b.example.com"]
    assert stored(data_dir) == ["b.example.com.key.sealed", "b.example.com.pem"]

    # A release while the name is still bound (another member holds it) changes nothing.
    mgr.release("b.example.com")
    assert mgr.held() == (1, 0)
    # Bound again: made again, at once.
    bound.add("a.example.com")
    mgr.want("a.example.com")
    await _settle(mgr)
    assert mgr.held() == (2, 0) and issuer.calls.count("a.example.com") == 2


@pytest.mark.asyncio
async def test_a_cas_certificate_leaves_memory_but_not_the_disk(tmp_path: Path) -> None:
    """An order from a CA costs a rate-limited order: a rebind loads it, not orders it."""
    data_dir = tmp_path / "data"
    slow = GatedIssuer(LocalCA.load_or_create(data_dir))
    slow.gate.set()
    bound = {"a.example.com"}
    mgr = manager(data_dir, AsyncOnly(slow), bound)
    assert mgr.want("a.example.com") is None
    await _settle(mgr)
    assert mgr.held() == (1, 0)

    bound.clear()
    mgr.release("a.example.com")
    assert mgr.held() == (0, 0)
    assert stored(data_dir) == ["a.example.com.key.sealed", "a.example.com.pem"]

    bound.add("a.example.com")
    again = mgr.want("a.example.com")
    assert again is not None and again.state == "issued"  # loaded from disk
    assert slow.calls == [["a.example.com"]]  # one order in all
    assert mgr.held() == (1, 0)


@pytest.mark.asyncio
async def test_a_name_let_go_while_its_order_runs_is_forgotten_when_it_ends(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    slow = GatedIssuer(LocalCA.load_or_create(data_dir))
    bound = {"a.example.com"}
    mgr = manager(data_dir, AsyncOnly(slow), bound)
    assert mgr.want("a.example.com") is None  # the order waits at the gate
    await asyncio.sleep(0.05)
    bound.clear()
    mgr.release("a.example.com")
    slow.gate.set()
    await _settle(mgr)
    assert slow.calls == [["a.example.com"]]
    assert mgr.held() == (0, 0)


@pytest.mark.asyncio
async def test_a_pass_lets_go_of_names_no_longer_bound(tmp_path: Path) -> None:
    """Without ``release`` (whatever ended the binding), the next pass lets go."""
    data_dir = tmp_path / "data"
    bound = {"a.x.io"}
    mgr = manager(data_dir, CountingIssuer(LocalCA.load_or_create(data_dir)), bound)
    mgr.want("a.x.io")
    await _settle(mgr)
    bound.clear()
    assert await mgr.renew_due() == []
    assert mgr.held() == (0, 0) and stored(data_dir) == []


def test_names_visitors_pick_are_made_on_demand_in_memory_only_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_mod, "MAX_ON_DEMAND", 3)
    data_dir = tmp_path / "data"
    issuer = CountingIssuer(LocalCA.load_or_create(data_dir))
    names = [f"v{i}.deep.wild.example.com" for i in range(5)]
    # What a wildcard endpoint covers: any name under it, a visitor's choice.
    mgr = manager(data_dir, issuer, set(), allowed=set(names))
    contexts = [mgr.context_for(name) for name in names]
    assert all(ctx is not None for ctx in contexts)
    assert mgr.held() == (0, 3)  # the 3 most recently used
    assert stored(data_dir) == []  # nothing stored for a visitor's name
    assert mgr.context_for(names[4]) is contexts[4]  # kept: not made again
    assert mgr.context_for(names[0]) is not None  # evicted: made again
    assert issuer.calls == [*names, names[0]]
    assert mgr.held() == (0, 3)
    assert mgr.context_for("elsewhere.example.com") is None  # not allowed: nothing made


def test_a_bound_name_made_on_demand_is_kept_as_its_certificate(tmp_path: Path) -> None:
    """A visitor's ClientHello that comes before the bind's order: the bound name's
    certificate is made then, and stored as the order would have."""
    data_dir = tmp_path / "data"
    issuer = CountingIssuer(LocalCA.load_or_create(data_dir))
    bound = {"a.example.com"}
    mgr = manager(data_dir, issuer, bound, allowed=set(bound))
    mgr._wanted.add("a.example.com")  # wanted, its order not yet run
    assert mgr.context_for("a.example.com") is not None
    assert mgr.held() == (1, 0)
    assert stored(data_dir) == ["a.example.com.key.sealed", "a.example.com.pem"]


@pytest.mark.asyncio
async def test_a_name_let_go_and_bound_again_while_it_renews_keeps_being_served(
    tmp_path: Path,
) -> None:
    """Unbound and bound again while its renewal is in flight: its valid certificate is
    served throughout (it used to leave memory, and the rebind found none)."""
    data_dir = tmp_path / "data"
    slow = GatedIssuer(LocalCA.load_or_create(data_dir))
    slow.gate.set()
    bound = {"a.example.com"}
    clock = Clock()
    mgr = manager(data_dir, AsyncOnly(slow), bound, clock=clock)
    mgr.want("a.example.com")
    await _settle(mgr)
    slow.gate.clear()
    clock.offset = dt.timedelta(days=61)  # past two thirds of 90 days: due, still valid
    mgr._order_now("a.example.com")  # its renewal, waiting at the gate
    await asyncio.sleep(0.05)
    assert "a.example.com" in mgr._inflight
    bound.clear()
    mgr.release("a.example.com")
    bound.add("a.example.com")
    again = mgr.want("a.example.com")
    assert again is not None and again.state == "issued"
    assert mgr.context_for("a.example.com") is not None
    slow.gate.set()
    await _settle(mgr)
    assert mgr.held() == (1, 0)  # still held: the name is bound again
    assert mgr.context_for("a.example.com") is not None
    assert slow.calls == [["a.example.com"]] * 2  # the renewal was an order of its own


@pytest.mark.asyncio
async def test_files_that_cannot_be_removed_do_not_stop_a_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    bound = {"a.example.com"}
    mgr = manager(data_dir, CountingIssuer(LocalCA.load_or_create(data_dir)), bound)
    mgr.want("a.example.com")
    await _settle(mgr)

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "read-only data directory (test)")

    monkeypatch.setattr(Path, "unlink", refuse)
    bound.clear()
    mgr.release("a.example.com")  # does not raise: the endpoint's removal goes on
    assert mgr.held() == (0, 0)
    assert any("its files stay" in r.getMessage() for r in caplog.records)
