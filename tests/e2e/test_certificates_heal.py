"""Certificates that heal: a real edge, real agents and pebble (real ACME validation).

* A name whose first order failed (the CA was down) keeps being retried with capped backoff
  while it is bound, and gets its certificate once the CA is back; once unbound, it is not
  retried any more.
* A CA's ``Retry-After`` (429 ``rateLimited``, in seconds or as an HTTP-date) holds the next
  order, however short the edge's own backoff is: a real HTTPS proxy in front of pebble answers
  the first newOrder 429, then lets orders through, and records when each arrived.
* The agent is told: pending, issued (with the expiry), failed (code, reason, when again).
* Renewal at two thirds of the lifetime (pebble issues 30-second certificates here), and one
  order per name at a time: a restarted edge whose stored certificate is due orders it once,
  though its renewal pass and the agent's bind both want it.

The backoff is shortened through ``RELAY_CERT_RETRY_BASE``/``RELAY_CERT_RETRY_MAX`` (seconds),
inherited by the edge process. Everything on 127.0.0.1; every process is stopped by PID.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509

from relay.certs.local_ca import LocalCA
from tests.e2e.http_helpers import curl, web_agent
from tests.e2e.origin import Origin
from tests.e2e.pebble import (
    AcmeProxy,
    Pebble,
    acme_flags,
    needs_pebble,
    verified_leaf,
    wait_lines,
)
from tests.e2e.procs import Agent, Edge, free_port

pytestmark = [
    needs_pebble,
    pytest.mark.slow,
]

#: pebble's certificateValidityPeriod for the renewal tests (seconds).
SHORT_LIFE = 30


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEBBLE_VA_ALWAYS_VALID", raising=False)
    monkeypatch.setenv("RELAY_CERT_RETRY_BASE", "0.5")
    monkeypatch.setenv("RELAY_CERT_RETRY_MAX", "2")


def wait_for_leaf(port: int, name: str, root_pem: bytes, timeout: float = 90.0) -> x509.Certificate:
    """Poll the edge's TLS port until it serves a certificate ``root_pem`` verifies."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return verified_leaf(port, name, root_pem)
        except (OSError, ssl.SSLError) as exc:  # an alert or a stand-in until it is issued
            if time.monotonic() > deadline:
                raise AssertionError(f"no verified certificate for {name}: {exc!r}") from exc
            time.sleep(0.25)


def wait_for_orders(proxy: AcmeProxy, count: int, timeout: float) -> list[float]:
    deadline = time.monotonic() + timeout
    while len(proxy.order_times()) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} orders expected within {timeout}s: {proxy.orders}")
        time.sleep(0.1)
    return proxy.order_times()


def _stop_all(agents: list[Agent], edge: Edge) -> None:
    for agent in agents:
        agent.stop()
    edge.stop()


@pytest.mark.timeout(180)
def test_a_certificate_is_ordered_once_the_ca_is_back(
    tmp_path: Path, origin: Origin, agents: list[Agent]
) -> None:
    name = "late.relay.test"
    edge = Edge(tmp_path / "edge")
    # Pebble's ports are chosen, but it is not running: the CA is down at bind time.
    pebble = Pebble(tmp_path / "pebble", http_port=edge.http_port, tls_port=edge.https_port)
    edge.extra = acme_flags(pebble.directory_url, pebble.ca_bundle)
    try:
        edge.start()
        agent = web_agent(edge, agents, str(origin.port), "--domain", name)
        # More failures than the 5 attempts after which the edge used to give up for good,
        # each told to the agent with its code and when it is tried again.
        failed = wait_lines(agent.proc, f"Certificate for {name}: not issued: error RLY_805", 7)
        assert all("cannot reach the ACME CA" in line for line in failed), failed
        assert all("retrying in" in line for line in failed), failed
        assert f"Certificate for {name}: being issued (acme)" in agent.proc.text()

        pebble.start()  # the CA is back
        root_pem = pebble.root_pem()
        leaf = wait_for_leaf(edge.https_port, name, root_pem)
        assert leaf.not_valid_after_utc > dt.datetime.now(dt.UTC)
        wait_lines(agent.proc, f"Certificate for {name}: issued (acme")
        root_file = tmp_path / "pebble-root.pem"
        root_file.write_bytes(root_pem)
        got = curl(f"https://{name}:{edge.https_port}/back", "--cacert", str(root_file))
        assert got.returncode == 0, got.stderr.decode()
        assert got.stdout == b"origin ok /back"
    except BaseException:
        print(pebble.output())
        raise
    finally:
        _stop_all(agents, edge)
        pebble.stop()


@pytest.mark.timeout(120)
def test_retries_stop_once_the_name_is_unbound(
    tmp_path: Path, origin: Origin, agents: list[Agent]
) -> None:
    name = "gone.relay.test"
    nothing_listens = free_port()
    some_ca = LocalCA.load_or_create(tmp_path / "unused-ca")  # trusted, never presented
    edge = Edge(tmp_path / "edge")
    edge.extra = [
        *acme_flags(f"https://127.0.0.1:{nothing_listens}/dir", some_ca.ca_pem_path),
        "--reclaim-grace",
        "1",
    ]
    try:
        edge.start()
        assert edge.proc is not None
        agent = web_agent(edge, agents, str(origin.port), "--domain", name)
        failure = f"certificate {name}: error RLY_805"
        wait_lines(edge.proc, failure, 7, timeout=60)  # retried while bound
        agent.stop()  # the name is released (unbound, or orphaned for 1 s)
        edge.proc.wait_line(f"certificate for {name}: no longer bound", timeout=20)
        after = len(wait_lines(edge.proc, failure))
        time.sleep(4 * 2 + 1)  # four retry caps
        # At most the attempt that was in flight when the name was released.
        assert len(wait_lines(edge.proc, failure)) <= after + 1, edge.proc.text()
    finally:
        _stop_all(agents, edge)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_rate_limited_order_waits_for_retry_after(
    tmp_path: Path, origin: Origin, agents: list[Agent], form: str
) -> None:
    name = f"limited-{form}.relay.test"
    edge = Edge(tmp_path / "edge")
    pebble = Pebble(
        tmp_path / "pebble",
        http_port=edge.http_port,
        tls_port=edge.https_port,
        env={"PEBBLE_WFE_NONCEREJECT": "0"},  # no badNonce: every order here is counted
    )
    with pebble, AcmeProxy(pebble) as proxy:
        # Far longer than the edge's own backoff (at most 2 s here).
        if form == "seconds":
            retry_after, hold = "6", 6.0
        else:
            when = time.time() + 8
            retry_after, hold = email.utils.formatdate(when, usegmt=True), 0.0
        proxy.rate_limit_orders(1, retry_after)
        edge.extra = acme_flags(proxy.directory_url, pebble.ca_bundle)
        try:
            edge.start()
            agent = web_agent(edge, agents, str(origin.port), "--domain", name)
            wait_for_leaf(edge.https_port, name, pebble.root_pem())
            times = proxy.order_times()
            assert len(times) == 2, proxy.orders  # the refused one, then the one served
            if form == "seconds":
                assert times[1] - times[0] >= hold
            else:
                # An HTTP-date has whole seconds: the date sent is ``when`` rounded down.
                assert times[1] >= int(when)
            refused = wait_lines(agent.proc, f"Certificate for {name}: not issued: error RLY_805")
            assert "rate-limiting" in refused[0] and "retrying in" in refused[0], refused
            wait_lines(agent.proc, f"Certificate for {name}: issued (acme")
        except BaseException:
            print(pebble.output())
            raise
        finally:
            _stop_all(agents, edge)


@pytest.mark.timeout(180)
def test_the_agent_hears_pending_then_issued_with_the_expiry(
    tmp_path: Path, origin: Origin, agents: list[Agent]
) -> None:
    name = "told.relay.test"
    edge = Edge(tmp_path / "edge")
    pebble = Pebble(tmp_path / "pebble", http_port=edge.http_port, tls_port=edge.https_port)
    with pebble:
        edge.extra = acme_flags(pebble.directory_url, pebble.ca_bundle)
        try:
            edge.start()
            agent = web_agent(edge, agents, str(origin.port), "--domain", name)
            issued = wait_lines(agent.proc, f"Certificate for {name}: issued (acme", timeout=90)
            pending = f"Certificate for {name}: being issued (acme)"
            lines = agent.proc.output
            assert lines.index(pending) < lines.index(issued[0])
            leaf = verified_leaf(edge.https_port, name, pebble.root_pem())
            expires = leaf.not_valid_after_utc.isoformat(timespec="seconds")
            assert f"valid until {expires}" in issued[0], issued
        except BaseException:
            print(pebble.output())
            raise
        finally:
            _stop_all(agents, edge)


@pytest.mark.timeout(60)
def test_the_agent_hears_a_local_certificate_is_issued_at_once(
    tmp_path: Path, origin: Origin, agents: list[Agent]
) -> None:
    edge = Edge(tmp_path / "edge", extra=["--base-domain", "relay.test"]).start()
    try:
        web_agent(edge, agents, str(origin.port), "--subdomain", "mine")
        agent = agents[0]
        line = wait_lines(agent.proc, "Certificate for mine.relay.test: issued (local", timeout=20)
        assert "valid until" in line[0]
        assert "being issued" not in agent.proc.text()  # the local CA does not make one wait
    finally:
        _stop_all(agents, edge)


@pytest.mark.timeout(180)
def test_a_short_lived_certificate_is_renewed_at_two_thirds_of_its_lifetime(
    tmp_path: Path, origin: Origin, agents: list[Agent]
) -> None:
    name = "brief.relay.test"
    edge = Edge(tmp_path / "edge")
    pebble = Pebble(
        tmp_path / "pebble",
        http_port=edge.http_port,
        tls_port=edge.https_port,
        validity=SHORT_LIFE,
        env={"PEBBLE_WFE_NONCEREJECT": "0"},
    )
    with pebble, AcmeProxy(pebble) as proxy:
        edge.extra = acme_flags(proxy.directory_url, pebble.ca_bundle)
        try:
            edge.start()
            agent = web_agent(edge, agents, str(origin.port), "--domain", name)
            root_pem = pebble.root_pem()
            first = wait_for_leaf(edge.https_port, name, root_pem)
            begin, end = first.not_valid_before_utc, first.not_valid_after_utc
            renew_at = begin + (end - begin) * 2 / 3

            times = wait_for_orders(proxy, 2, timeout=SHORT_LIFE + 30)
            assert renew_at.timestamp() <= times[1] < end.timestamp()
            issued = f"Certificate for {name}: issued (acme"
            wait_lines(agent.proc, issued, 2)
            assert len(proxy.order_times()) == 2, proxy.orders  # not one per pass or backoff
            second = verified_leaf(edge.https_port, name, root_pem)
            assert second.serial_number != first.serial_number
            assert second.not_valid_after_utc > end
        except BaseException:
            print(pebble.output())
            raise
        finally:
            _stop_all(agents, edge)


@pytest.mark.timeout(180)
def test_a_restarted_edge_orders_a_due_certificate_once(
    tmp_path: Path, origin: Origin, agents: list[Agent]
) -> None:
    name = "again.relay.test"
    edge = Edge(tmp_path / "edge")
    pebble = Pebble(
        tmp_path / "pebble",
        http_port=edge.http_port,
        tls_port=edge.https_port,
        validity=SHORT_LIFE,
        env={"PEBBLE_WFE_NONCEREJECT": "0"},
    )
    with pebble, AcmeProxy(pebble) as proxy:
        edge.extra = acme_flags(proxy.directory_url, pebble.ca_bundle)
        try:
            edge.start()
            agent = web_agent(edge, agents, str(origin.port), "--domain", name)
            leaf = wait_for_leaf(edge.https_port, name, pebble.root_pem())
            begin, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
            edge.stop()
            # Restart once the stored certificate is due for renewal (and still valid).
            due = (begin + (end - begin) * 2 / 3).timestamp() + 0.5
            time.sleep(max(due - time.time(), 0))
            edge.start()  # its renewal pass and the agent's rebind both want the name
            wait_for_orders(proxy, 2, timeout=60)
            time.sleep(3)  # the second order of a race came a second after the first
            assert len(proxy.order_times()) == 2, proxy.orders
            wait_lines(agent.proc, f"Certificate for {name}: issued (acme", 2)
        except BaseException:
            print(pebble.output())
            raise
        finally:
            _stop_all(agents, edge)
