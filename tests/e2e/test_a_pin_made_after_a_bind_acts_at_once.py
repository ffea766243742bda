"""A reservation made (or released) while endpoints are live acts on them at once, as
their bind would be decided now (relay/edge/live_reservations.py), on a real edge in
region ``us`` with real agents, reservations made through the REST API as an operator
makes them:

* a name pinned to ``eu`` while an agent serves it here stops being served within 2 s
  (visitors get what an unserved name gets on one edge: 404 RLY_610), and its agent,
  which serves nothing else, exits 4 with RLY_208, as its bind would now be refused;
* a name or port reserved for another account while served ends within 2 s (RLY_207):
  an agent serving other endpoints too keeps them, hash-checked, and drops the ended
  one at once;
* but one reserved for account B by B's own member key serves on, hash-checked, and is
  refused at its next bind: a member cannot take another account's endpoints down;
* a name under a live wildcard pinned elsewhere is refused at once (421 RLY_631), other
  names under it are served on, hash-checked; released, it is served again;
* a release ends nothing live;
* a reservation written by another process (the store itself), or made in a separate
  `relay control` the edge asks, acts within 2 s too, by the edge's once-a-second poll.

The edge polls credentials (and so reservations) every 30 s here, except in the last test:
what acts within 2 s went through the API's own signal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.api_calls import Answer, Keys, call, two_accounts
from tests.e2e.http_helpers import error_code, one_request
from tests.e2e.origin import Origin, blob
from tests.e2e.procs import (
    RELAY,
    Agent,
    EchoServer,
    Edge,
    Proc,
    echo_roundtrip,
    payload,
)
from tests.e2e.test_agent_config_start import agent_config, forwarding_urls, write_config
from tests.e2e.test_edge_with_remote_control_plane import Control, bootstrap_key
from tests.ports import free_port

API = "/api/v1"
BASE = "relay.localhost"
#: What "within 2 s" may take on a loaded machine for an agent process to notice its
#: Stop and exit (as tests/e2e/test_credentials_end_live_sessions.py allows).
SLACK = 1.0

pytestmark = pytest.mark.timeout(240)


@dataclass(frozen=True)
class World:
    edge: Edge
    admin: str
    account_a: str
    account_b: str
    token_a: str
    #: An API key of account B's own (a member account): reserved:write only.
    member_b: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("live-pins")
    edge = Edge(
        root / "edge", extra=["--region", "us", "--credential-check-interval", "30"]
    ).start()
    try:
        made = two_accounts(edge)
        yield World(edge, made.admin, made.account_a, made.account_b, made.token_a, made.member_b)
    finally:
        edge.stop()


def reserve(world: World, account: str, *, domain: str = "", port: int = 0, **extra: str) -> str:
    """Reserve through the API; the reservation's id."""
    path, body = (
        (f"{API}/reserved_domains", {"domain": domain})
        if domain
        else (f"{API}/reserved_addrs", {"port": port})
    )
    answer = call(world.edge, "POST", path, world.admin, {**body, "account_id": account, **extra})
    assert answer.status == 201, answer.body
    return str(answer.body["id"])


def release(world: World, reservation: str) -> Answer:
    kind = "reserved_domains" if reservation.startswith("rd_") else "reserved_addrs"
    answer = call(world.edge, "DELETE", f"{API}/{kind}/{reservation}", world.admin)
    assert answer.status == 200, answer.body
    return answer


def get(world: World, host: str, path: str = "/hello") -> bytes:
    head = f"GET {path} HTTP/1.1\r\nhost: {host}\r\n".encode()
    return one_request(world.edge.http_port, host, head)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def served_whole(world: World, host: str) -> None:
    """A download and an upload through ``host``, both hash-checked."""
    size = 300_000
    answer = get(world, host, f"/blob/{size}")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:300]
    assert sha(body) == sha(blob(size))
    data = payload(17, 200_000)
    post = f"POST /sink HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(data)}\r\n".encode()
    answer = one_request(world.edge.http_port, host, post, data)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:300]
    assert json.loads(body) == {"size": len(data), "sha256": sha(data)}


def until_not_served(world: World, host: str, since: float, within: float = 5.0) -> float:
    """Seconds from ``since`` until ``host`` is answered by anything but its origin."""
    while True:
        answer = get(world, host)
        if not answer.startswith(b"HTTP/1.1 200"):
            return time.monotonic() - since
        assert time.monotonic() - since < within, f"{host} still served after {within} s"
        time.sleep(0.05)


def not_served(answer: bytes, status: bytes, code: str) -> None:
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:300]
    assert error_code(answer) == code, answer[:600]
    assert b"origin ok" not in answer


def until_closed(port: int, since: float, within: float = 5.0) -> float:
    """Seconds from ``since`` until nothing listens on ``port`` any more."""
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            return time.monotonic() - since
        assert time.monotonic() - since < within, f"port {port} still open after {within} s"
        time.sleep(0.05)


def ended(world: World, target: str) -> list[dict[str, object]]:
    return [d for d in world.edge.audit_details("endpoint.end") if d["target"] == target]


def test_a_name_pinned_elsewhere_while_served_stops_at_once_and_its_agent_exits_4(
    world: World, origin: Origin, agents: list[Agent]
) -> None:
    host = f"pinme.{BASE}"
    agent = Agent(
        world.edge,
        world.token_a,
        str(origin.port),
        kind="http",
        extra=["--no-https", "--subdomain", "pinme"],
    )
    agents.append(agent)
    agent.wait_bound()
    served_whole(world, host)

    asked = time.monotonic()
    reserve(world, world.account_a, domain=host, region="eu")
    answered = time.monotonic()
    took = until_not_served(world, host, asked)
    assert took < 2.0, took
    not_served(get(world, host), b"404", "RLY_610")
    # The agent heard why, with the code its bind would now get, and exits as it would.
    assert agent.proc.wait(2.0 + SLACK) == 4, agent.proc.text()
    assert (
        f"error RLY_208: http://{host}:{world.edge.http_port} is no longer served: {host} "
        "is pinned to region eu; this edge is in region us" in agent.proc.text()
    ), agent.proc.text()
    [audited] = ended(world, host)
    assert (audited["kind"], audited["code"]) == ("http", "RLY_208"), audited
    print(f"pin: API call {(answered - asked) * 1000:.0f} ms, refused {took * 1000:.0f} ms")


def test_a_name_and_a_port_reserved_for_another_account_while_served_end_there(
    world: World, origin: Origin, echo: EchoServer, procs: list[Proc], tmp_path: Path
) -> None:
    """One agent (``relay start``) serves a first-come name and a first-come port. The
    name is reserved for account B: it ends within 2 s (RLY_207), the port serves on and
    the agent drops the name at once (an ``EndpointEnded``); then the port is reserved
    for B: the agent's last endpoint ends and it exits 4. B's agent then binds the name
    and is served."""
    name = "taken"
    host = f"{name}.{BASE}"
    port = world.edge.ports[0] + 2
    config = agent_config(world.edge, world.token_a, echo.port, origin.port, port)
    config["endpoints"][1]["subdomain"] = name
    agent = Proc([*RELAY, "start", "--config", str(write_config(tmp_path / "a.yml", config))])
    procs.append(agent)
    forwarding_urls(agent, 2)
    served_whole(world, host)
    data = os.urandom(1024 * 1024)
    assert sha(echo_roundtrip(port, data)) == sha(data)

    asked = time.monotonic()
    reserve(world, world.account_b, domain=host)
    took = until_not_served(world, host, asked)
    assert took < 2.0, took
    not_served(get(world, host), b"404", "RLY_610")
    assert sha(echo_roundtrip(port, data)) == sha(data)  # its other endpoint serves on
    agent.wait_line(
        f"http://{host}:{world.edge.http_port} is no longer served (error RLY_207: {host} "
        "is reserved by another account); not asked for again, 1 endpoint(s) serve on",
        timeout=2.0 + SLACK,
    )
    assert agent.proc.poll() is None

    asked = time.monotonic()
    reserve(world, world.account_b, port=port)
    assert until_closed(port, asked) < 2.0
    assert agent.proc.wait(2.0 + SLACK) == 4, agent.text()
    assert (
        f"error RLY_207: tcp://127.0.0.1:{port} is no longer served: tcp port {port} is "
        "reserved by another account" in agent.text()
    ), agent.text()
    assert [d["code"] for d in ended(world, host) + ended(world, str(port))] == [
        "RLY_207",
        "RLY_207",
    ]

    # The name is B's now: B's agent binds it and is served.
    keys = Keys(world.edge)
    try:
        _, token_b = keys.store.create_token(
            account_id=world.account_b, pepper=keys.pepper, actor="test"
        )
    finally:
        keys.close()
    owner = Agent(
        world.edge,
        token_b,
        str(origin.port),
        kind="http",
        extra=["--no-https", "--subdomain", name],
    )
    try:
        owner.wait_bound()
        served_whole(world, host)
    finally:
        owner.stop()


def test_a_members_reservation_of_what_another_account_serves_acts_on_its_next_bind(
    world: World, origin: Origin, echo: EchoServer, agents: list[Agent]
) -> None:
    """Account B's own key (a member's, reserved:write) reserves the first-come name and
    the port account A's agents serve. A member must not take another account's live
    endpoints down at will: both are served on, hash-checked, nothing is ended or told;
    the reservation acts on A's next bind (RLY_207, exit 4), as it always did. An
    operator's reservation ends them at once (the test above)."""
    name = "kept"
    host = f"{name}.{BASE}"
    port = world.edge.ports[0] + 7
    web = Agent(
        world.edge,
        world.token_a,
        str(origin.port),
        kind="http",
        extra=["--no-https", "--subdomain", name],
    )
    tcp = Agent(world.edge, world.token_a, echo.port, remote_port=port)
    agents.extend((web, tcp))
    web.wait_bound()
    assert tcp.wait_bound() == port
    served_whole(world, host)
    data = payload(31, 512 * 1024)
    assert sha(echo_roundtrip(port, data)) == sha(data)

    for path, body in (
        (f"{API}/reserved_domains", {"domain": host}),
        (f"{API}/reserved_addrs", {"port": port}),
    ):
        made = call(world.edge, "POST", path, world.member_b, body)
        assert made.status == 201, made.body
        assert made.body["account_id"] == world.account_b, made.body
    time.sleep(1.5)  # the check these started has long run
    served_whole(world, host)
    assert sha(echo_roundtrip(port, data)) == sha(data)
    assert web.proc.proc.poll() is None and tcp.proc.proc.poll() is None
    assert ended(world, host) == [] and ended(world, str(port)) == []
    assert "no longer served" not in web.proc.text() + tcp.proc.text()

    # A's next bind of the name is refused, as before reservations acted on live ones.
    web.stop()
    again = Agent(
        world.edge,
        world.token_a,
        str(origin.port),
        kind="http",
        extra=["--no-https", "--subdomain", name],
    )
    agents.append(again)
    assert again.proc.wait(30) == 4, again.proc.text()
    assert f"{host} is reserved by another account" in again.proc.text(), again.proc.text()
    assert sha(echo_roundtrip(port, data)) == sha(data)  # the port: until its next bind


def test_a_pin_under_a_live_wildcard_refuses_that_name_at_once_and_a_release_serves_it(
    world: World, origin: Origin, agents: list[Agent]
) -> None:
    wild, pinned, other = "*.w.example.com", "p.w.example.com", "www.w.example.com"
    reserve(world, world.account_a, domain=wild)
    agent = Agent(
        world.edge,
        world.token_a,
        str(origin.port),
        kind="http",
        extra=["--no-https", "--domain", wild],
    )
    agents.append(agent)
    agent.wait_bound()
    served_whole(world, pinned)
    served_whole(world, other)

    asked = time.monotonic()
    pin = reserve(world, world.account_a, domain=pinned, region="eu")
    answered = time.monotonic()
    took = until_not_served(world, pinned, asked)
    assert took < 2.0, took
    answer = get(world, pinned)
    not_served(answer, b"421", "RLY_631")
    assert f"{pinned} is served in region eu, not this one".encode() in answer, answer
    served_whole(world, other)  # every other name under the wildcard: served on
    assert agent.proc.proc.poll() is None and ended(world, wild) == []
    print(f"under a wildcard: API {(answered - asked) * 1000:.0f} ms, refused {took * 1000:.0f} ms")

    # Released from its pin, the name is the wildcard's again, at once.
    asked = time.monotonic()
    release(world, pin)
    while not get(world, pinned).startswith(b"HTTP/1.1 200"):
        assert time.monotonic() - asked < 2.0, "still refused 2 s after the release"
        time.sleep(0.05)
    served_whole(world, pinned)
    served_whole(world, other)


def test_a_release_ends_nothing_live_and_a_reservation_after_it_does(
    world: World, origin: Origin, echo: EchoServer, agents: list[Agent]
) -> None:
    """A's reserved custom domain and reserved port, released while served: both serve on
    (nothing is anyone else's there now). Reserved for B afterwards, the name ends at
    once: the release did not stop the edge from checking."""
    host = "own.example.org"
    port = world.edge.ports[0] + 5
    domain_id = reserve(world, world.account_a, domain=host)
    addr_id = reserve(world, world.account_a, port=port)
    web = Agent(
        world.edge,
        world.token_a,
        str(origin.port),
        kind="http",
        extra=["--no-https", "--domain", host],
    )
    tcp = Agent(world.edge, world.token_a, echo.port, remote_port=port)
    agents.extend((web, tcp))
    web.wait_bound()
    tcp.wait_bound()
    data = payload(23, 512 * 1024)

    release(world, domain_id)
    release(world, addr_id)
    time.sleep(1.5)  # the check the releases started has long run
    served_whole(world, host)
    assert sha(echo_roundtrip(port, data)) == sha(data)
    assert web.proc.proc.poll() is None and tcp.proc.proc.poll() is None
    assert ended(world, host) == [] and ended(world, str(port)) == []

    asked = time.monotonic()
    reserve(world, world.account_b, domain=host)
    assert until_not_served(world, host, asked) < 2.0
    assert web.proc.wait(2.0 + SLACK) == 4, web.proc.text()
    assert "error RLY_207" in web.proc.text()
    assert sha(echo_roundtrip(port, data)) == sha(data)  # the port is nobody else's


def test_a_reservation_written_by_another_process_acts_within_2_s(
    tmp_path: Path, origin: Origin, agents: list[Agent]
) -> None:
    """Made in the store directly (as another control-plane process would): the edge
    hears nothing at once, and its once-a-second poll finds it."""
    edge = Edge(tmp_path / "edge", extra=["--region", "us"]).start()
    try:
        _, token = edge.token()
        host = f"polled.{BASE}"
        agent = Agent(
            edge,
            token,
            str(origin.port),
            kind="http",
            extra=["--no-https", "--subdomain", "polled"],
        )
        agents.append(agent)
        agent.wait_bound()
        head = f"GET /hello HTTP/1.1\r\nhost: {host}\r\n".encode()
        assert one_request(edge.http_port, host, head).startswith(b"HTTP/1.1 200")
        asked = time.monotonic()
        edge.reserve_domain(host, region="eu")
        while one_request(edge.http_port, host, head).startswith(b"HTTP/1.1 200"):
            assert time.monotonic() - asked < 2.0, "still served 2 s after the reservation"
            time.sleep(0.05)
        answer = one_request(edge.http_port, host, head)
        assert answer.startswith(b"HTTP/1.1 404") and error_code(answer) == "RLY_610", answer
        assert agent.proc.wait(2.0 + SLACK) == 4, agent.proc.text()
        assert re.search(r"error RLY_208: .* is pinned to region eu", agent.proc.text())
    finally:
        edge.stop()


def test_a_port_pinned_in_a_separate_control_plane_closes_within_2_s(
    tmp_path: Path, echo: EchoServer, agents: list[Agent]
) -> None:
    """The edge asks `relay control` (--control-url), which tells it nothing: the edge's
    once-a-second read of the changes there finds the pin, and the port closes."""
    control = Control(tmp_path / "control", free_port()).start()
    try:
        admin = bootstrap_key(control)
        edge = control.edge(admin, tmp_path)
        try:
            token = control.api(admin, "POST", "/credentials", {"description": "t"})["token"]
            port = edge.ports[0] + 1
            agent = Agent(edge, token, echo.port, remote_port=port)
            agents.append(agent)
            assert agent.wait_bound() == port
            data = payload(29, 256 * 1024)
            assert sha(echo_roundtrip(port, data)) == sha(data)
            asked = time.monotonic()
            control.api(admin, "POST", "/reserved_addrs", {"port": port, "region": "eu"})
            assert until_closed(port, asked) < 2.0
            assert agent.proc.wait(2.0 + SLACK) == 4, agent.proc.text()
            assert (
                f"error RLY_208: tcp://127.0.0.1:{port} is no longer served: tcp port {port} "
                "is pinned to region eu; this edge is in region local" in agent.proc.text()
            ), agent.proc.text()
        finally:
            edge.stop()
    finally:
        control.stop()
