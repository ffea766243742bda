"""ACME on an edge of two workers: pebble (real validation, no PEBBLE_VA_ALWAYS_VALID)
reaches whichever worker the kernel gives its connection, every name gets one order and a
certificate, and HTTPS through each carries the bytes (SHA-256 checked by the origin).

A pool of one name with a member on each worker is ordered once: the worker that got the
name's order lock second takes the first one's certificate from disk. Its validation lands
on either worker; the one that did not order answers from the shared challenge files.
New orders are counted by :class:`~tests.e2e.pebble.AcmeProxy` in front of pebble.
Everything on 127.0.0.1; processes are stopped by PID.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from pathlib import Path

import pytest

from tests.e2e.http_helpers import exchange, web_agent
from tests.e2e.origin import Origin
from tests.e2e.pebble import AcmeProxy, Pebble, acme_flags, needs_pebble, verified_leaf
from tests.e2e.procs import Agent, Edge, payload

pytestmark = [
    needs_pebble,
    pytest.mark.slow,
    pytest.mark.timeout(240),
]

WORKERS = 2
ISSUE_TIMEOUT = 90.0
#: Starts of the second pool member allowed to get it onto the other worker.
PLACEMENT_TRIES = 20


def workers_holding(edge: Edge, url: str) -> set[int]:
    return {
        worker
        for worker in range(WORKERS)
        if any(e["url"] == url for e in edge.worker_status(worker)["endpoints"])
    }


def wait_certified(edge: Edge, pebble: Pebble, name: str, root_pem: bytes) -> None:
    deadline = time.monotonic() + ISSUE_TIMEOUT
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            verified_leaf(edge.https_port, name, root_pem)
            return
        except (OSError, ssl.SSLError) as exc:  # the local stand-in until issued
            last = exc
            time.sleep(0.5)
    assert edge.proc is not None
    raise AssertionError(
        f"{name}: no certificate from pebble within {ISSUE_TIMEOUT}s (last: {last!r})\n"
        f"--- edge ---\n{edge.proc.text()}\n--- pebble ---\n{pebble.output()}"
    )


def upload_through(edge: Edge, name: str, root_pem: bytes, seed: int) -> None:
    """A POST over HTTPS trusting only pebble's root; the origin answers its body's hash."""
    tls = ssl.create_default_context(cadata=root_pem.decode())
    body = payload(seed, 60_000 + seed)
    head = f"POST /sink HTTP/1.1\r\nhost: {name}\r\ncontent-length: {len(body)}\r\n"
    answer = json.loads(exchange(edge.https_port, name, head.encode(), body, tls=tls))
    assert answer == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def acme_edge(tmp_path: Path, challenge: str) -> tuple[Edge, Pebble]:
    edge = Edge(tmp_path / "edge", workers=WORKERS)  # ports chosen now, for pebble
    pebble = Pebble(
        tmp_path / "pebble",
        http_port=edge.http_port,
        tls_port=edge.https_port,
        env={"PEBBLE_WFE_NONCEREJECT": "0"},  # orders are counted: no nonce retries
    )
    return edge, pebble


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_names_on_both_workers_are_each_ordered_once_and_served(
    tmp_path: Path,
    origin: Origin,
    agents: list[Agent],
    challenge: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PEBBLE_VA_ALWAYS_VALID", raising=False)
    edge, pebble = acme_edge(tmp_path, challenge)
    tag = challenge.replace("-", "")
    names = [f"w{i}-{tag}.relay.test" for i in range(4)]
    with pebble, AcmeProxy(pebble) as proxy:
        edge.extra += acme_flags(proxy.directory_url, pebble.ca_bundle, challenge=challenge)
        edge.start()
        try:
            for n in names:  # placed by the kernel: validations land on either worker
                web_agent(edge, agents, str(origin.port), "--domain", n)
            root_pem = pebble.root_pem()
            for seed, name in enumerate(names):
                wait_certified(edge, pebble, name, root_pem)
                upload_through(edge, name, root_pem, seed)
            assert len(proxy.order_times()) == len(names), proxy.orders
            log = pebble.output()
            assert log.count("set VALID by completed challenge") == len(names), log
        finally:
            for started in agents:
                started.stop()
            edge.stop()


def test_a_pool_across_workers_is_ordered_once(
    tmp_path: Path, origin: Origin, agents: list[Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PEBBLE_VA_ALWAYS_VALID", raising=False)
    edge, pebble = acme_edge(tmp_path, "http-01")
    name = "pooled.relay.test"
    member = ["--domain", name, "--pool"]
    with pebble, AcmeProxy(pebble) as proxy:
        # Until both members are placed, the CA refuses every new order (429, Retry-After
        # 1 s): so both workers want the name, each with an order to try again, when the
        # CA opens. Each would order it; the order lock makes it one.
        proxy.rate_limit_orders(10_000, "1")
        edge.extra += acme_flags(proxy.directory_url, pebble.ca_bundle)
        edge.start()
        try:
            _, token = edge.token()
            first = Agent(edge, token, str(origin.port), kind="http", extra=member)
            agents.append(first)
            first.wait_bound()
            for _ in range(PLACEMENT_TRIES):
                second = Agent(edge, token, str(origin.port), kind="http", extra=member)
                agents.append(second)
                second.wait_bound()
                if workers_holding(edge, first.url) == set(range(WORKERS)):
                    break
                second.stop()
            assert workers_holding(edge, first.url) == set(range(WORKERS)), "not placed"
            assert edge.proc is not None
            edge.proc.wait_line("the ACME CA asked to wait", timeout=30)
            proxy.rate_limit_orders(0, "")

            root_pem = pebble.root_pem()
            wait_certified(edge, pebble, name, root_pem)
            # The worker that got the lock second took the certificate from disk.
            deadline = time.monotonic() + 30
            while "taken from another worker's order" not in edge.proc.text():
                assert time.monotonic() < deadline, edge.proc.text()
                time.sleep(0.2)
            served = [status for _, status in proxy.orders if status < 400]
            assert len(served) == 1, proxy.orders
            # Visitors land on either member's worker: both serve pebble's certificate.
            for seed in range(12):
                upload_through(edge, name, root_pem, seed)
        finally:
            for started in agents:
                started.stop()
            edge.stop()
