"""Three edge nodes in two regions sharing one real Redis: a visitor at one node for a name
an agent holds on another node of its region is carried there (hash-checked, its address
kept); a name held only in the other region is refused there and none of its bytes cross
(the links between nodes go through taps that count every connection and byte); Redis
restarted mid-transfer loses no stream.

Each node has its own loopback address (127.0.0.2 … .5), all share one TCP port range
and one data directory, standing in for one control plane (its tokens) and one cluster
CA.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import ssl
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from relay.control.store import Store
from relay.control.tokens import load_or_create_pepper
from tests.e2e.api_calls import Keys, call
from tests.e2e.http_helpers import (
    exchange,
    first_served,
    host_of,
    one_request,
    read_until_closed,
    web_agent,
)
from tests.e2e.link_tap import LinkTap
from tests.e2e.origin import NamedOrigin, Origin
from tests.e2e.procs import Agent, EchoServer, Edge, free_port, free_port_range, payload
from tests.e2e.test_cluster_in_namespaces import NO_LINKS
from tests.e2e.test_credentials_end_live_sessions import SLACK, wait_exit
from tests.e2e.test_tls_endpoints import PASS_NAME, TlsEchoServer, tls_echo, tls_upstream  # noqa: F401
from tests.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.timeout(240)


@dataclass
class Node:
    edge: Edge
    tap: LinkTap
    region: str

    @property
    def host(self) -> str:
        return self.edge.host

    def cluster(self) -> dict[str, Any]:
        status: dict[str, Any] = self.edge.worker_status()["cluster"]
        return status


#: The nodes most tests run: a and b in region eu, c in region us.
TWO_REGIONS = (("a", "127.0.0.2", "eu"), ("b", "127.0.0.3", "eu"), ("c", "127.0.0.4", "us"))
#: Three nodes of one region.
ONE_REGION = (("a", "127.0.0.2", "eu"), ("b", "127.0.0.3", "eu"), ("d", "127.0.0.5", "eu"))


@pytest.fixture
def nodes(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, Node]]:
    layout = getattr(request, "param", TWO_REGIONS)
    data_dir = tmp_path / "shared"
    made: dict[str, Node] = {}
    # One TCP port range for all (each node on its own address): a node listens on the
    # ports of its range that another node holds.
    tcp_ports = free_port_range(10)
    try:
        for name, host, region in layout:
            link_port = free_port()
            tap = LinkTap((host, link_port))
            edge = Edge(
                data_dir,
                host=host,
                ports=tcp_ports,
                extra=[
                    "--region",
                    region,
                    "--node-id",
                    name,
                    "--cluster-redis",
                    redis_server.url,
                    "--cluster-listen",
                    f"{host}:{link_port}",
                    "--cluster-advertise",
                    tap.address,
                    # Sessions' credentials are polled twice a minute only: a suspension
                    # that ends a session at once went through Redis.
                    "--credential-check-interval",
                    "30",
                ],
            )
            made[name] = Node(edge, tap, region)
            edge.start()  # one after the other: the first makes the shared data directory
        yield made
    finally:
        for node in made.values():
            node.edge.stop()
            node.tap.close()


def wait_known(node: Node, count: int) -> None:
    """Until ``node`` knows ``count`` names held by other nodes (bounded: 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if node.cluster()["presence"]["remote_names"] >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{node.edge.host} never learned of {count} remote names")


def post_sink(node: Node, port: int, host: str, body: bytes, tls: ssl.SSLContext | None) -> Any:
    head = f"POST /sink HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n"
    answer = exchange(port, host, head.encode(), body, tls=tls, address=node.host)
    return json.loads(answer)


def test_a_visitor_at_another_node_of_the_region_is_carried_to_the_agent(
    nodes: dict[str, Node], origin: Origin, agents: list[Agent]
) -> None:
    a, b = nodes["a"], nodes["b"]
    agent = web_agent(b.edge, agents, str(origin.port), "--no-https", "--subdomain", "far")
    host = host_of(agent)
    wait_known(a, 1)
    for i in range(5):
        body = payload(i, 300_000 + i)  # the head and body span several reads
        assert post_sink(a, a.edge.http_port, host, body, None) == {
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
    # Downloads too, and the origin sees the visitor's own address, not a socket pair's.
    blob = exchange(
        a.edge.http_port,
        host,
        f"GET /blob/3000000 HTTP/1.1\r\nhost: {host}\r\n".encode(),
        address=a.host,
    )
    assert hashlib.sha256(blob).digest() == hashlib.sha256(payload(99, 3_000_000)).digest()
    seen = json.loads(
        exchange(
            a.edge.http_port,
            host,
            f"GET /headers HTTP/1.1\r\nhost: {host}\r\n".encode(),
            address=a.host,
        )
    )
    forwarded_for = [v for k, v in seen["headers"] if k == "x-forwarded-for"]
    assert forwarded_for == ["127.0.0.1"], seen
    # One link from a to b, reused by every visitor; b's tap saw a's bytes go through it.
    assert b.tap.connections == 1
    assert b.tap.bytes_in > 5 * 300_000
    links = a.cluster()["links"]
    assert links["forwarded"] == 7 and links["failed"] == 0
    received = b.cluster()["links"]
    assert received["received"] == 7
    # The first came while the link was being dialled: its socket went over and b served
    # it through a socket pair. The rest were parsed at a and their streams joined at b
    # straight to the agent's.
    assert received["joined"] == 6


def test_an_https_visitor_is_carried_before_its_handshake(
    nodes: dict[str, Node], origin: Origin, agents: list[Agent]
) -> None:
    a, b = nodes["a"], nodes["b"]
    agent = web_agent(b.edge, agents, str(origin.port), "--subdomain", "sealed")
    host = host_of(agent)
    wait_known(a, 1)
    tls = ssl.create_default_context(cafile=str(a.edge.ca_file))
    body = payload(7, 1_000_000)
    assert post_sink(a, a.edge.https_port, host, body, tls) == {
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    # a only peeked at the ClientHello: the handshake and the certificate are b's.
    assert a.cluster()["links"]["forwarded"] == 1
    assert b.cluster()["links"]["received"] == 1
    assert b.cluster()["links"]["joined"] == 0  # served at b as a visitor of its own


def test_a_tls_passthrough_visitor_is_joined_to_the_agent_on_another_node(
    nodes: dict[str, Node],
    agents: list[Agent],
    tls_upstream: TlsEchoServer,  # noqa: F811
) -> None:
    a, b = nodes["a"], nodes["b"]
    agent = web_agent(b.edge, agents, str(tls_upstream.port), "--domain", PASS_NAME, kind="tls")
    assert host_of(agent) == PASS_NAME
    wait_known(a, 1)
    for i in range(3):
        data = payload(30 + i, 2_000_000)
        der, back = tls_echo(a.edge.https_port, tls_upstream, data, address=a.host)
        assert der == tls_upstream.cert_der  # the upstream's own certificate, end to end
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    assert a.cluster()["links"]["forwarded"] == 3
    assert b.cluster()["links"]["joined"] == 3


def test_a_name_held_in_another_region_is_refused_and_never_crosses(
    nodes: dict[str, Node], origin: Origin, agents: list[Agent]
) -> None:
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    plain = web_agent(b.edge, agents, str(origin.port), "--no-https", "--subdomain", "euonly")
    sealed = web_agent(b.edge, agents, str(origin.port), "--subdomain", "eusealed")
    wait_known(c, 2)
    before = {n: (nodes[n].tap.connections, nodes[n].tap.bytes_in) for n in nodes}
    secret = b"PINNED-" + payload(5, 4000)
    for _ in range(3):
        head = (
            f"POST /sink HTTP/1.1\r\nhost: {host_of(plain)}\r\ncontent-length: {len(secret)}\r\n"
        ).encode()
        answer = one_request(c.edge.http_port, host_of(plain), head, secret, address=c.host)
        assert answer.startswith(b"HTTP/1.1 421"), answer[:200]
        assert b"RLY_631" in answer and b"region eu" in answer
    # The TLS port says no with a clean alert (unrecognized_name), before any handshake.
    tls = ssl.create_default_context(cafile=str(c.edge.ca_file))
    with (
        socket.create_connection((c.host, c.edge.https_port), timeout=10) as raw,
        pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"),
    ):
        tls.wrap_socket(raw, server_hostname=host_of(sealed))
    # No node of eu was dialled, and nothing reached either: c holds no link at all.
    after = {n: (nodes[n].tap.connections, nodes[n].tap.bytes_in) for n in nodes}
    assert after == before
    assert c.cluster()["links"] == NO_LINKS
    # The same name at a, in its region, is carried to b as usual.
    body = payload(6, 50_000)
    assert post_sink(a, a.edge.http_port, host_of(plain), body, None)["size"] == len(body)


def test_a_pinned_name_under_a_wildcard_on_another_node_gets_421_when_carried(
    nodes: dict[str, Node], origin: Origin, agents: list[Agent]
) -> None:
    """b (eu) holds ``*.pin.example.com``; ``app.pin.example.com`` is reserved pinned to
    us and no agent holds it. a (eu) knows b's wildcard, not the pin, so it carries the
    name's visitors to b over their link; b answers them on the stream as one edge
    would, 421 RLY_631 naming us (it reset the stream before: a 502 at a). Other names
    under the wildcard are carried and served, hash-checked."""
    a, b = nodes["a"], nodes["b"]
    b.edge.reserve_domain("*.pin.example.com")
    b.edge.reserve_domain("app.pin.example.com", region="us")
    web_agent(b.edge, agents, str(origin.port), "--no-https", "--domain", "*.pin.example.com")
    wait_known(a, 1)
    body = payload(13, 40_000)
    served = post_sink(a, a.edge.http_port, "www.pin.example.com", body, None)
    assert served == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    assert a.cluster()["links"]["links_out"], "the link to b is not up"
    pinned = "app.pin.example.com"
    for _ in range(3):
        head = f"POST /sink HTTP/1.1\r\nhost: {pinned}\r\ncontent-length: 5000\r\n".encode()
        answer = one_request(a.edge.http_port, pinned, head, b"s" * 5000, address=a.host)
        status, _, page = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 421 "), answer[:300]
        assert b"RLY_631" in status and b"served in region us, not this one" in page, answer
    # The first visitor came while a dialled b (served through a socket pair at b); the
    # three refused ones were carried on streams b answered.
    links = b.cluster()["links"]
    assert (links["received"], links["answered"], links["joined"]) == (1, 3, 0), links
    # Served again after the refusals, joined on the same link.
    assert post_sink(a, a.edge.http_port, "www.pin.example.com", body, None) == served
    assert b.cluster()["links"]["joined"] == 1


def test_redis_restarted_mid_transfer_loses_no_stream(
    nodes: dict[str, Node],
    origin: Origin,
    agents: list[Agent],
    redis_server: RedisServer,  # noqa: F811
) -> None:
    a, b = nodes["a"], nodes["b"]
    agent = web_agent(b.edge, agents, str(origin.port), "--no-https", "--subdomain", "steady")
    host = host_of(agent)
    wait_known(a, 1)
    body = payload(8, 48 * 1024 * 1024)
    result: dict[str, Any] = {}

    def upload() -> None:
        try:
            result["answer"] = _slow_post(a, a.edge.http_port, host, body)
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    time.sleep(0.5)
    redis_server.restart()  # empty: every node must publish itself again
    sender.join(120)
    assert "error" not in result, result.get("error")
    assert result["answer"] == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    # The name is back in Redis and new visitors at a are carried again.
    deadline = time.monotonic() + 10
    while any(n.cluster()["presence"]["redis"] != "connected" for n in (a, b)):
        assert time.monotonic() < deadline, "a node never reconnected to Redis"
        time.sleep(0.1)
    # Right after it, before every node has written itself again, a still knows b's
    # names (a key missing from a Redis restarted empty is not a node gone).
    for i in range(5):
        fresh = payload(9 + i, 10_000)
        assert post_sink(a, a.edge.http_port, host, fresh, None)["size"] == len(fresh)


def _slow_post(node: Node, port: int, host: str, body: bytes) -> Any:
    """A POST sent in 1 MiB pieces over a few seconds: still going when Redis restarts."""
    with socket.create_connection((node.host, port), timeout=30) as sock:
        sock.sendall(
            f"POST /sink HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode()
        )
        step = 1024 * 1024
        for offset in range(0, len(body), step):
            sock.sendall(body[offset : offset + step])
            time.sleep(0.05)
        data = read_until_closed(sock, 30)
    status, _, rest = data.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), data[:300]
    return json.loads(rest)


def test_a_suspension_through_one_node_ends_sessions_on_every_node_within_2_s(
    nodes: dict[str, Node], echo: EchoServer, agents: list[Agent]
) -> None:
    """Suspended through a's API, the account's sessions on b (a's region) and on c (the
    other region) end within 2 s, measured at each node (its /status stops listing the
    session), although both poll credentials only every 30 s; the agents are told why."""
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    store = Store.open(f"sqlite:///{a.edge.data_dir / 'relay.db'}")
    try:
        acme = store.create_account("acme")
        _, token = store.create_token(
            description="acme's agent",
            pepper=load_or_create_pepper(a.edge.data_dir),
            account_id=acme.id,
        )
    finally:
        store.close()
    held: dict[str, tuple[Node, Agent, str]] = {}
    for name, node in (("b", b), ("c", c)):
        agent = Agent(node.edge, token, echo.port)
        agents.append(agent)
        agent.wait_bound()
        [session] = _session_ids(node)
        held[name] = (node, agent, session)
    keys = Keys(a.edge)
    try:
        _, key = keys.make(["accounts:write", "accounts:read"])
    finally:
        keys.close()
    asked = time.monotonic()
    answer = call(a.edge, "POST", f"/api/v1/accounts/{acme.id}/suspend", key)
    assert answer.status == 200, answer.body
    # b and c poll every 30 s: only a's word through Redis ends the sessions this soon.
    ended: dict[str, float] = {}
    while len(ended) < len(held) and time.monotonic() - asked < 10:
        for name, (node, _, session) in held.items():
            if name not in ended and session not in _session_ids(node):
                ended[name] = time.monotonic() - asked
        time.sleep(0.02)
    assert set(ended) == set(held), f"sessions still live after 10 s: {ended}"
    assert all(took < 2.0 for took in ended.values()), ended
    for _, agent, _ in held.values():
        code, took = wait_exit(agent, 2.0)
        assert code == 3, agent.proc.text()
        assert time.monotonic() - asked < 2.0 + SLACK, took
        assert "RLY_104" in agent.proc.text(), agent.proc.text()


@pytest.mark.parametrize("nodes", [ONE_REGION], indirect=True)
def test_a_killed_node_s_names_are_served_again_within_5_s(
    nodes: dict[str, Node], origin: Origin, agents: list[Agent]
) -> None:
    a, b, d = nodes["a"], nodes["b"], nodes["d"]
    _, token = a.edge.token()
    # The agent is put on a (b is down while it connects; it comes back at once): when a
    # dies, d still has a's key for up to 5 s, and a sorts before b, so d must pass over
    # the node it cannot reach.
    b.edge.stop()
    agent = Agent(
        a.edge,
        token,
        str(origin.port),
        kind="http",
        extra=[
            "--edge",
            f"{a.edge.address},{b.edge.address}",
            "--no-https",
            "--subdomain",
            "mover",
        ],
    )
    agents.append(agent)
    agent.wait_bound()
    b.edge.start()
    host = host_of(agent)
    wait_known(d, 1)
    # Visitors come to d, which holds nothing: each is carried to the node with the agent.
    body = payload(11, 100_000)
    assert post_sink(d, d.edge.http_port, host, body, None)["size"] == len(body)
    assert _holds(a, agent.url) and not _holds(b, agent.url)
    assert a.edge.proc is not None
    a.edge.proc.kill()
    killed = time.monotonic()
    # Bounded: 8 s of tries, one every 0.1 s; the first that is served again is timed.
    took, answer = first_served(d.edge.http_port, host, body, killed, address=d.host)
    assert took is not None, "never served again"
    assert took < 5.0, took
    _, _, rest = answer.partition(b"\r\n\r\n")
    assert json.loads(rest)["sha256"] == hashlib.sha256(body).hexdigest()
    assert _holds(b, agent.url)
    # a's key outlives it (5 s), and a sorts first, yet every later visitor goes to b.
    assert d.cluster()["presence"]["nodes"] == 2, d.cluster()
    for i in range(10):
        more = payload(20 + i, 20_000)
        assert post_sink(d, d.edge.http_port, host, more, None)["size"] == len(more)
    assert time.monotonic() - killed < 5.0  # a's key had not expired meanwhile


def _holds(node: Node, url: str) -> bool:
    """Whether an endpoint of ``node`` has ``url``'s name (each node has its own port)."""
    name = urlsplit(url).hostname
    return any(urlsplit(e["url"]).hostname == name for e in node.edge.worker_status()["endpoints"])


def test_a_name_held_on_one_node_is_refused_to_another_token_on_another(
    nodes: dict[str, Node], origin: Origin, agents: list[Agent]
) -> None:
    a, b = nodes["a"], nodes["b"]
    _, owner_token = b.edge.token()
    flags = ["--no-https", "--subdomain", "owned", "--pool"]
    owner = Agent(b.edge, owner_token, str(origin.port), kind="http", extra=flags)
    agents.append(owner)
    owner.wait_bound()
    wait_known(a, 1)
    _, other_token = a.edge.token()
    squatter = Agent(a.edge, other_token, str(origin.port), kind="http", extra=flags)
    agents.append(squatter)
    assert squatter.proc.wait(30) == 4, squatter.proc.text()
    assert "RLY_204" in squatter.proc.text() and "node b" in squatter.proc.text()
    # The owner's visitors at a are still carried to it.
    body = payload(12, 30_000)
    assert post_sink(a, a.edge.http_port, host_of(owner), body, None)["size"] == len(body)
    assert a.cluster()["links"]["forwarded"] == 1
    # The same token may share the name from another node (a pool member on a).
    member = Agent(a.edge, owner_token, str(origin.port), kind="http", extra=flags)
    agents.append(member)
    member.wait_bound()
    assert post_sink(a, a.edge.http_port, host_of(owner), body, None)["size"] == len(body)
    assert a.cluster()["links"]["forwarded"] == 1  # served at a by its own member now


@pytest.mark.parametrize("nodes", [ONE_REGION], indirect=True)
def test_pool_members_on_two_nodes_share_the_visitors_of_a_third(
    nodes: dict[str, Node], agents: list[Agent], named: list[NamedOrigin]
) -> None:
    """A node that holds no member of a pool sends its visitors round robin to the
    nodes that do (it sent every one to the first node by id before); once a member
    leaves, all go to the other, and none fails."""
    a, b, d = nodes["a"], nodes["b"], nodes["d"]
    on_b, on_d = NamedOrigin("member-on-b"), NamedOrigin("member-on-d")
    named += [on_b, on_d]
    _, token = b.edge.token()
    flags = ["--no-https", "--subdomain", "shared", "--pool"]
    members = []
    for node, origin in ((b, on_b), (d, on_d)):
        member = Agent(node.edge, token, str(origin.port), kind="http", extra=flags)
        agents.append(member)
        member.wait_bound()
        members.append(member)
    host = host_of(members[0])
    wait_known(a, 2)  # the name, as b holds it and as d does

    def visit() -> bytes:
        return exchange(
            a.edge.http_port, host, f"GET / HTTP/1.1\r\nhost: {host}\r\n".encode(), address=a.host
        )

    seen = Counter(visit() for _ in range(20))
    assert seen == Counter({b"member-on-b": 10, b"member-on-d": 10}), seen
    assert a.cluster()["links"]["forwarded"] == 20
    assert b.tap.connections == 1 and d.tap.connections == 1  # one link each, reused

    members[1].stop()  # the member on d leaves: d's name goes with it
    deadline = time.monotonic() + 10
    while a.cluster()["presence"]["remote_names"] > 1:
        assert time.monotonic() < deadline, "a never learned that d let the name go"
        time.sleep(0.05)
    seen = Counter(visit() for _ in range(10))
    assert seen == Counter({b"member-on-b": 10}), seen


def test_a_silent_network_between_nodes_cuts_its_visitors_within_5_s_and_heals(
    nodes: dict[str, Node], origin: Origin, agents: list[Agent]
) -> None:
    """The network between a and b goes silent (b's tap passes nothing either way and
    closes nothing, as a partition that drops every packet): a download in flight over
    the link is cut within 5 s (the link's pings go unanswered), a new visitor gets 503
    RLY_611 within the dial's 5 s, and once the network is back visitors are carried
    again."""
    a, b = nodes["a"], nodes["b"]
    agent = web_agent(b.edge, agents, str(origin.port), "--no-https", "--subdomain", "across")
    host = host_of(agent)
    wait_known(a, 1)
    body = payload(5, 100_000)
    assert post_sink(a, a.edge.http_port, host, body, None)["sha256"] == (
        hashlib.sha256(body).hexdigest()
    )
    size = 200_000_000  # far more than the buffers on the way hold
    with socket.create_connection((a.host, a.edge.http_port), timeout=30) as visitor:
        visitor.sendall(f"GET /blob/{size} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
        received = len(visitor.recv(65536))
        assert received > 0
        b.tap.silence()
        silent_at = time.monotonic()
        visitor.settimeout(1.0)
        while time.monotonic() - silent_at < 20:
            try:
                chunk = visitor.recv(1 << 20)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += len(chunk)
        cut_after = time.monotonic() - silent_at
    assert received < size, "the download was not cut"
    assert cut_after < 5.0 + SLACK, f"the visitor hung {cut_after:.1f} s on a silent link"

    head = f"POST /sink HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n"
    asked = time.monotonic()
    answer = one_request(a.edge.http_port, host, head.encode(), body, address=a.host)
    took = time.monotonic() - asked
    assert answer.startswith(b"HTTP/1.1 503") and b"RLY_611" in answer, answer[:300]
    assert took < 5.0 + SLACK, f"a new visitor waited {took:.1f} s"

    b.tap.restore()
    served, last = first_served(
        a.edge.http_port, host, body, time.monotonic(), address=a.host, within=15
    )
    assert served is not None, last[:300]
    assert a.edge.proc is not None and "Traceback" not in a.edge.proc.text()


def _session_ids(node: Node) -> list[str]:
    return [s["id"] for s in node.edge.worker_status()["sessions_list"]]


def test_any_node_s_api_lists_stops_and_restarts_the_cluster_s_sessions(
    nodes: dict[str, Node], echo: EchoServer, agents: list[Agent]
) -> None:
    """The API at a speaks for every node: it lists the sessions and endpoints held on b
    and on c (another region), stops b's session (the agent is told not to come back,
    within 2 s) and restarts c's (its agent comes back with its endpoint); another
    account's key sees none of them and stops nothing."""
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    on_b = Agent(b.edge, b.edge.token()[1], echo.port)
    on_c = Agent(c.edge, c.edge.token()[1], echo.port)
    agents.extend([on_b, on_c])
    on_b.wait_bound()
    on_c.wait_bound()
    (b_session,), (c_session,) = _session_ids(b), _session_ids(c)
    assert _session_ids(a) == []
    keys = Keys(a.edge)
    try:
        _, key = keys.make(["sessions:read", "sessions:write", "endpoints:read"])
        stranger = keys.store.create_account("stranger")
        _, stranger_key = keys.make(["sessions:read", "sessions:write"], account=stranger)
    finally:
        keys.close()

    listed = call(a.edge, "GET", "/api/v1/tunnel_sessions", key)
    assert listed.status == 200, listed.body
    regions = {s["id"]: s["region"] for s in listed.body["items"]}
    assert regions == {b_session: "eu", c_session: "us"}
    one = call(a.edge, "GET", f"/api/v1/tunnel_sessions/{c_session}", key)
    assert one.status == 200 and one.body["endpoints"] == [on_c.url], one.body
    urls = {e["url"] for e in call(a.edge, "GET", "/api/v1/endpoints", key).body["items"]}
    assert urls == {on_b.url, on_c.url}

    # Another account's key reaches none of them, on any node.
    assert call(a.edge, "GET", "/api/v1/tunnel_sessions", stranger_key).body["items"] == []
    refused = call(a.edge, "POST", f"/api/v1/tunnel_sessions/{b_session}/stop", stranger_key)
    assert refused.status == 404, refused.body
    assert on_b.proc.proc.poll() is None

    asked = time.monotonic()
    stopped = call(a.edge, "POST", f"/api/v1/tunnel_sessions/{b_session}/stop", key)
    assert stopped.status == 200 and stopped.body["id"] == b_session, stopped.body
    code, took = wait_exit(on_b, 2.0)
    assert code == 1 and "RLY_122" in on_b.proc.text(), on_b.proc.text()
    assert time.monotonic() - asked < 2.0 + SLACK, took

    restarted = call(a.edge, "POST", f"/api/v1/tunnel_sessions/{c_session}/restart", key)
    assert restarted.status == 200, restarted.body
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _session_ids(c) in ([], [c_session]):
        time.sleep(0.05)
    (again,) = _session_ids(c)
    assert again != c_session and on_c.proc.proc.poll() is None
    sent = payload(31, 64_000)
    assert hashlib.sha256(echo_through(c, on_c, sent)).digest() == hashlib.sha256(sent).digest()
    gone = call(a.edge, "POST", f"/api/v1/tunnel_sessions/{b_session}/stop", key)
    assert gone.status == 404, gone.body


def echo_through(node: Node, agent: Agent, data: bytes) -> bytes:
    """``data`` through ``agent``'s TCP endpoint on ``node`` to the echo server and back
    (64 KB fit the loopback buffers: sent whole before reading)."""
    port = int(urlsplit(agent.url).port or 0)
    with socket.create_connection((node.host, port), timeout=5) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        return read_until_closed(conn)


def wait_listening(node: Node, port: int, listening: bool = True) -> None:
    """Until ``node`` listens on ``port`` for another node, or (``listening`` False) no
    longer does (bounded: 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (port in node.cluster()["tcp_ports"]) == listening:
            return
        time.sleep(0.05)
    raise AssertionError(f"{node.host} listening on {port} never became {listening}")


def test_a_tcp_visitor_at_another_node_of_the_region_is_carried_to_the_agent(
    nodes: dict[str, Node], echo: EchoServer, agents: list[Agent]
) -> None:
    a, b = nodes["a"], nodes["b"]
    agent = Agent(b.edge, b.edge.token()[1], echo.port)
    agents.append(agent)
    agent.wait_bound()
    port = int(urlsplit(agent.url).port or 0)
    wait_listening(a, port)
    # The first visitor waits for the link to be dialled; the rest go straight onto it.
    for i in range(5):
        sent = payload(70 + i, 200_000 + i)
        back = echo_at(a.host, port, sent)
        assert hashlib.sha256(back).digest() == hashlib.sha256(sent).digest(), i
    assert a.cluster()["links"]["forwarded"] == 5
    assert b.cluster()["links"]["joined"] == 5  # every one joined to the agent's stream
    assert b.tap.connections == 1
    # The port stays b's: a third node of the region cannot bind it for another token,
    # and b's agent leaving makes a stop listening.
    squatter = Agent(a.edge, a.edge.token()[1], echo.port, remote_port=port)
    agents.append(squatter)
    assert squatter.proc.wait(30) == 4, squatter.proc.text()
    assert "RLY_204" in squatter.proc.text() and "node b" in squatter.proc.text()
    agent.proc.stop()
    wait_listening(a, port, listening=False)


def test_a_tcp_port_held_in_another_region_is_closed_cleanly_and_never_crosses(
    nodes: dict[str, Node], echo: EchoServer, agents: list[Agent]
) -> None:
    a, c = nodes["a"], nodes["c"]
    agent = Agent(c.edge, c.edge.token()[1], echo.port)
    agents.append(agent)
    agent.wait_bound()
    port = int(urlsplit(agent.url).port or 0)
    wait_listening(a, port)
    before = {n: (nodes[n].tap.connections, nodes[n].tap.bytes_in) for n in nodes}
    for _ in range(3):
        with socket.create_connection((a.host, port), timeout=5) as conn:
            conn.settimeout(5)
            assert conn.recv(1024) == b""  # a FIN, not a reset and not a byte
    assert {n: (nodes[n].tap.connections, nodes[n].tap.bytes_in) for n in nodes} == before
    assert a.cluster()["links"]["forwarded"] == 0
    metrics = (
        urllib.request.urlopen(f"http://{a.host}:{a.edge.admin_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    refused = 'relay_visitor_connections_refused_total{kind="tcp",reason="other_region"} 3.0'
    assert refused in metrics


def echo_at(host: str, port: int, data: bytes) -> bytes:
    """``data`` through a TCP endpoint to the echo server and back: sent from a thread
    while this one reads (more than the loopback buffers hold), then half-closed."""
    with socket.create_connection((host, port), timeout=10) as conn:
        sender = threading.Thread(target=_send_all, args=(conn, data), daemon=True)
        sender.start()
        back = read_until_closed(conn)
        sender.join(10)
        return back


def _send_all(conn: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
