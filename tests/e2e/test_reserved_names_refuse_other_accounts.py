"""Reserved names belong to one account, on a real edge with real agents: for http,
https, tls and tcp, the account that reserved a name (or port) binds it and serves bytes;
every other account's agent is refused with RLY_207 and exits 4; a custom domain nobody
reserved is refused to everyone; an unreserved name under the base domain goes to
whoever binds it first; random TCP ports never land on a reserved port. Reservations are
made as an operator would, with `relay domains|addrs reserve` through the REST API."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.edge.tls_front import ALERT_UNRECOGNIZED_NAME
from tests.e2e.api_calls import Keys, call
from tests.e2e.http_helpers import curl, host_of, one_request, read_until_closed
from tests.e2e.origin import Origin, blob
from tests.e2e.procs import (
    RELAY,
    Agent,
    EchoServer,
    Edge,
    echo_roundtrip,
    free_port_range,
    payload,
)
from tests.e2e.test_tls_endpoints import TlsEchoServer

API = "/api/v1"
BASE = "relay.localhost"  # tests/e2e/procs.py's Edge passes --base-domain relay.localhost
HOST_KINDS = ("http", "https", "tls")


@dataclass(frozen=True)
class World:
    """One edge, an operator logged in to its API, and two member accounts (A and B),
    each with an authtoken whose bind ACL is the default ``*``."""

    edge: Edge
    env: dict[str, str]
    account_a: str
    account_b: str
    token_a: str
    token_b: str


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, f"relay {' '.join(args)}: exit {done.returncode}\n{done}"
    return done.stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("reserved")
    edge = Edge(root / "edge", extra=["--region", "eu"]).start()
    keys: Keys | None = None
    try:
        keys = Keys(edge)
        _, admin = keys.make(["admin"])
        keys.close()
        keys = None
        base = {k: v for k, v in os.environ.items() if k not in ("RELAY_API_KEY", "RELAY_API")}
        env = {
            **base,
            "RELAY_API_KEY": admin,
            "RELAY_API": f"http://127.0.0.1:{edge.admin_port}",
            "RELAY_CONFIG_DIR": str(root / "config"),
        }
        ids = []
        tokens = []
        for name in ("team-a", "team-b"):
            account = json.loads(cli(env, "accounts", "create", name, "-o", "json"))
            ids.append(account["id"])
            tokens.append(cli(env, "credentials", "create", "--account", account["id"]).strip())
        yield World(edge, env, ids[0], ids[1], tokens[0], tokens[1])
    finally:
        if keys is not None:
            keys.close()
        edge.stop()


def agent_for(world: World, token: str, upstream: str, kind: str, *flags: str) -> Agent:
    """`relay http` (plain with --no-https, else https), `relay tls` or `relay tcp`."""
    command = "http" if kind in ("http", "https") else kind
    extra = [*flags, "--no-https"] if kind == "http" else list(flags)
    return Agent(world.edge, token, upstream, kind=command, extra=extra)


def serving(
    world: World, agents: list[Agent], token: str, upstream: str, kind: str, *flags: str
) -> Agent:
    agent = agent_for(world, token, upstream, kind, *flags)
    agents.append(agent)
    agent.wait_bound()
    return agent


def refused(world: World, token: str, upstream: str, kind: str, *flags: str) -> str:
    """The agent's output; it must have exited 4 (a bind error) on its own."""
    agent = agent_for(world, token, upstream, kind, *flags)
    try:
        code = agent.proc.wait(30)
    finally:
        agent.stop()
    assert code == 4, agent.proc.text()
    return agent.proc.text()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def web_bytes_pass(world: World, agent: Agent, tmp_path: Path) -> None:
    """A download and an upload through the endpoint, both hash-checked."""
    edge = world.edge if agent.url.startswith("https:") else None
    size = 300_000
    got = curl(f"{agent.url}/blob/{size}", edge=edge)
    assert got.returncode == 0, got.stderr.decode()
    assert sha(got.stdout) == sha(blob(size))
    body = payload(7, 200_000)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    sent = curl(f"{agent.url}/sink", "--data-binary", f"@{upload}", edge=edge)
    assert sent.returncode == 0, sent.stderr.decode()
    assert json.loads(sent.stdout) == {"size": len(body), "sha256": sha(body)}


def tls_bytes_pass(world: World, upstream: TlsEchoServer, name: str) -> None:
    """End-to-end TLS to the upstream (its certificate the only trust anchor): what the
    upstream echoes comes back whole."""
    ctx = ssl.create_default_context(cadata=upstream.cert_pem.decode())
    data = payload(11, 512 * 1024)
    back = bytearray()
    step = 64 * 1024  # in lock-step: the echo never waits on a reader that is writing
    with (
        socket.create_connection(("127.0.0.1", world.edge.https_port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        assert tls.getpeercert(binary_form=True) == upstream.cert_der
        for i in range(0, len(data), step):
            tls.sendall(data[i : i + step])
            while len(back) < min(i + step, len(data)):
                chunk = tls.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {len(back)} bytes")
                back += chunk
    assert sha(bytes(back)) == sha(data)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", HOST_KINDS)
def test_a_reserved_domain_is_served_to_its_account_and_refused_to_others(
    world: World, origin: Origin, agents: list[Agent], tmp_path: Path, kind: str
) -> None:
    name = f"{kind}.example.com"
    fcfs = f"fcfs-{kind}.{BASE}"
    made = json.loads(
        cli(world.env, "domains", "reserve", name, "--account", world.account_a, "-o", "json")
    )
    assert (made["domain"], made["account_id"]) == (name, world.account_a)
    assert made["id"] in cli(world.env, "domains", "list", "--account", world.account_a)
    upstreams: dict[str, TlsEchoServer] = {}  # tls: an upstream of its own per name

    def upstream(for_name: str) -> str:
        if kind != "tls":
            return str(origin.port)
        upstreams[for_name] = TlsEchoServer(tmp_path / for_name, for_name)
        return str(upstreams[for_name].port)

    def bytes_pass(agent: Agent, served: str) -> None:
        if kind == "tls":
            tls_bytes_pass(world, upstreams[served], served)
        else:
            web_bytes_pass(world, agent, tmp_path)

    try:
        owner_upstream = upstream(name)
        owner = serving(world, agents, world.token_a, owner_upstream, kind, "--domain", name)
        assert host_of(owner) == name and owner.url.startswith(f"{kind}://")
        bytes_pass(owner, name)

        # Another account's agent is refused, though its token's ACL is '*'.
        text = refused(world, world.token_b, owner_upstream, kind, "--domain", name)
        assert f"error RLY_207: {name} is reserved by another account" in text
        bytes_pass(owner, name)  # the owner serves on

        # A custom domain nobody reserved: refused to every account, told how to fix it.
        nobody = f"nobody-{kind}.example.com"
        for token in (world.token_a, world.token_b):
            text = refused(world, token, owner_upstream, kind, "--domain", nobody)
            assert f"error RLY_207: {nobody} is not reserved for this token's account" in text
            assert f"relay domains reserve {nobody}" in text

        # Under the base domain an unreserved name is first come, first served: B's now.
        first = serving(world, agents, world.token_b, upstream(fcfs), kind, "--domain", fcfs)
        bytes_pass(first, fcfs)
        text = refused(world, world.token_a, owner_upstream, kind, "--domain", fcfs)
        assert "error RLY_204" in text
        bytes_pass(first, fcfs)
    finally:
        for server in upstreams.values():
            server.close()

    refusals = [
        (d["kind"], d["target"], d["code"]) for d in world.edge.audit_details("bind.refuse")
    ]
    assert (kind, name, "RLY_207") in refusals
    assert (kind, nobody, "RLY_207") in refusals


@pytest.mark.timeout(180)
def test_a_reserved_wildcard_covers_every_name_under_it_for_its_account_only(
    world: World, origin: Origin, agents: list[Agent], tmp_path: Path
) -> None:
    cli(world.env, "domains", "reserve", "*.wild.example.com", "--account", world.account_a)
    upstream = str(origin.port)
    # A binds a name under its wildcard, and the wildcard itself, with the default ACL.
    named = serving(
        world, agents, world.token_a, upstream, "http", "--domain", "x.wild.example.com"
    )
    web_bytes_pass(world, named, tmp_path)
    serving(world, agents, world.token_a, upstream, "http", "--domain", "*.wild.example.com")
    got = curl(f"http://deep.name.wild.example.com:{world.edge.http_port}/hello")
    assert got.returncode == 0 and got.stdout == b"origin ok /hello", got
    for name in ("y.wild.example.com", "a.b.wild.example.com", "*.wild.example.com"):
        text = refused(world, world.token_b, upstream, "https", "--domain", name)
        assert f"error RLY_207: {name} is reserved by another account" in text
    # B cannot reserve its way in under A's wildcard either (409 RLY_602).
    done = subprocess.run(
        [*RELAY, "domains", "reserve", "z.wild.example.com", "--account", world.account_b],
        capture_output=True,
        text=True,
        timeout=60,
        env=world.env,
        check=False,
    )
    assert done.returncode == 1, done
    assert "error RLY_602: z.wild.example.com falls under *.wild.example.com" in done.stderr


@pytest.mark.timeout(180)
def test_a_reserved_tcp_port_is_served_to_its_account_and_refused_to_others(
    world: World, echo: EchoServer, agents: list[Agent]
) -> None:
    low, high = world.edge.ports
    reserved_port, open_port = low + 3, low + 4
    made = json.loads(
        cli(
            world.env,
            "addrs",
            "reserve",
            str(reserved_port),
            "--account",
            world.account_a,
            "--region",
            "eu",
            "-o",
            "json",
        )
    )
    assert (made["port"], made["account_id"], made["region"]) == (
        reserved_port,
        world.account_a,
        "eu",
    )
    upstream = str(echo.port)
    owner = Agent(world.edge, world.token_a, upstream, remote_port=reserved_port)
    agents.append(owner)
    assert owner.wait_bound() == reserved_port
    data = payload(3, 2 * 1024 * 1024)
    assert sha(echo_roundtrip(reserved_port, data)) == sha(data)

    other = Agent(world.edge, world.token_b, upstream, remote_port=reserved_port)
    try:
        assert other.proc.wait(30) == 4, other.proc.text()
    finally:
        other.stop()
    assert f"error RLY_207: tcp port {reserved_port} is reserved by another account" in (
        other.proc.text()
    )

    assert sha(echo_roundtrip(reserved_port, data)) == sha(data)

    # An unreserved port goes to whoever asks first.
    first = Agent(world.edge, world.token_b, upstream, remote_port=open_port)
    agents.append(first)
    assert first.wait_bound() == open_port
    late = Agent(world.edge, world.token_a, upstream, remote_port=open_port)
    try:
        assert late.proc.wait(30) == 4, late.proc.text()
    finally:
        late.stop()
    assert "error RLY_204" in late.proc.text()
    assert sha(echo_roundtrip(open_port, data)) == sha(data)
    assert high > open_port  # the ports used are inside the edge's range


@pytest.mark.timeout(180)
def test_random_tcp_ports_never_land_on_a_reserved_port(
    tmp_path: Path, echo: EchoServer, agents: list[Agent]
) -> None:
    edge = Edge(tmp_path / "edge", ports=free_port_range(8))
    keys: Keys | None = None
    try:
        edge.start()
        keys = Keys(edge)
        _, admin = keys.make(["admin"])
        member = keys.store.create_account("team-c", actor="test")
        _, member_token = keys.store.create_token(
            account_id=member.id, pepper=keys.pepper, actor="test"
        )
        low, high = edge.ports
        left = {low + 1, low + 4, high}
        for port in set(range(low, high + 1)) - left:  # for the default account
            answer = call(edge, "POST", f"{API}/reserved_addrs", admin, {"port": port})
            assert answer.status == 201, answer.body
        _, token = edge.token()  # the default account's
        bound = set()
        for _ in left:
            agent = Agent(edge, token, str(echo.port))
            agents.append(agent)
            bound.add(agent.wait_bound())
        assert bound == left
        for port in bound:
            data = payload(port, 64 * 1024)
            assert sha(echo_roundtrip(port, data)) == sha(data)
        # Every port left is reserved: none is handed out at random, even to its owner.
        extra = Agent(edge, token, str(echo.port))
        try:
            assert extra.proc.wait(30) == 4, extra.proc.text()
        finally:
            extra.stop()
        assert "error RLY_203" in extra.proc.text() and "is reserved" in extra.proc.text()
        # Asked for by number, a reserved port is its owner's, and no one else's.
        own = Agent(edge, token, str(echo.port), remote_port=low)
        agents.append(own)
        assert own.wait_bound() == low
        other = Agent(edge, member_token, str(echo.port), remote_port=low + 2)
        try:
            assert other.proc.wait(30) == 4, other.proc.text()
        finally:
            other.stop()
        assert f"error RLY_207: tcp port {low + 2} is reserved by another account" in (
            other.proc.text()
        )
    finally:
        for agent in agents:
            agent.stop()
        if keys is not None:
            keys.close()
        edge.stop()


@pytest.mark.timeout(120)
def test_a_members_key_reaches_only_its_own_accounts_reservations(world: World) -> None:
    keys = Keys(world.edge)
    try:
        store = keys.store
        theirs = store.reserve_domain(world.account_a, "a-only.example.org", actor="test")
        their_port = store.reserve_addr(world.account_a, 2, actor="test")
        _, key = keys.make(
            ["reserved:read", "reserved:write"], account=store.get_account(world.account_b)
        )
    finally:
        keys.close()
    edge = world.edge
    mine = call(edge, "POST", f"{API}/reserved_domains", key, {"domain": "b-only.example.org"})
    assert mine.status == 201 and mine.body["account_id"] == world.account_b, mine.body
    listed = call(edge, "GET", f"{API}/reserved_domains?account_id={world.account_b}", key)
    assert [d["domain"] for d in listed.body["items"]] == ["b-only.example.org"]
    everything = call(edge, "GET", f"{API}/reserved_domains", key).body["items"]
    assert {d["account_id"] for d in everything} == {world.account_b}
    for method, path, body in (
        ("GET", f"{API}/reserved_domains/{theirs.id}", None),
        ("DELETE", f"{API}/reserved_domains/{theirs.id}", None),
        ("GET", f"{API}/reserved_addrs/{their_port.id}", None),
        ("DELETE", f"{API}/reserved_addrs/{their_port.id}", None),
        ("GET", f"{API}/reserved_domains?account_id={world.account_a}", None),
        (
            "POST",
            f"{API}/reserved_domains",
            {"domain": "c.example.org", "account_id": world.account_a},
        ),
        ("POST", f"{API}/reserved_addrs", {"port": 3, "account_id": world.account_a}),
    ):
        answer = call(edge, method, path, key, body)
        assert (answer.status, answer.code) == (404, "RLY_601"), (method, path, answer.body)
    taken = call(edge, "POST", f"{API}/reserved_addrs", key, {"port": 2})
    assert (taken.status, taken.code) == (409, "RLY_602"), taken.body
    released = call(edge, "DELETE", f"{API}/reserved_domains/{mine.body['id']}", key)
    assert released.status == 200 and released.body == mine.body
    again = call(edge, "DELETE", f"{API}/reserved_domains/{mine.body['id']}", key)
    assert (again.status, again.code) == (404, "RLY_601")
    actions = [
        (d.get("domain"), d.get("account_id"))
        for d in edge.audit_details("reserved_domain.release")
    ]
    assert ("b-only.example.org", world.account_b) in actions


@pytest.mark.timeout(180)
def test_a_reservation_pinned_to_another_region_is_not_bound_here(
    world: World, echo: EchoServer, agents: list[Agent]
) -> None:
    """Region pinning: this edge is in region eu; a port and a name pinned to us are
    refused to their own account's agents here (RLY_208, exit 4), so their traffic is
    never served by this PoP; a visitor of the port finds nothing listening."""
    low, _ = world.edge.ports
    pinned_port = low + 5
    cli(
        world.env,
        "addrs",
        "reserve",
        str(pinned_port),
        "--account",
        world.account_a,
        "--region",
        "us",
    )
    agent = Agent(world.edge, world.token_a, str(echo.port), remote_port=pinned_port)
    try:
        assert agent.proc.wait(30) == 4, agent.proc.text()
    finally:
        agent.stop()
    assert (
        f"error RLY_208: tcp port {pinned_port} is pinned to region us; this edge is in "
        "region eu" in agent.proc.text()
    )
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", pinned_port), timeout=5).close()

    cli(
        world.env,
        "domains",
        "reserve",
        "pinned.relay.localhost",
        "--account",
        world.account_a,
        "--region",
        "us",
    )
    web = Agent(
        world.edge,
        world.token_a,
        str(echo.port),
        kind="http",
        extra=["--no-https", "--subdomain", "pinned"],
    )
    try:
        assert web.proc.wait(30) == 4, web.proc.text()
    finally:
        web.stop()
    assert "error RLY_208: pinned.relay.localhost is pinned to region us" in web.proc.text()
    assert any(d["code"] == "RLY_208" for d in world.edge.audit_details("bind.refuse")), (
        "the refused bind is audited"
    )


def client_hello(name: str) -> bytes:
    """A real ClientHello for ``name`` (from an ``ssl`` object that never gets an answer)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def tls_port_answer(world: World, name: str) -> bytes:
    """All the TLS port sends back to a ClientHello for ``name`` before it closes."""
    with socket.create_connection(("127.0.0.1", world.edge.https_port), timeout=10) as sock:
        sock.sendall(client_hello(name))
        return read_until_closed(sock, 10)


def refused_in_region(answer: bytes, name: str, region: str) -> None:
    """HTTP 421 RLY_631 naming the region, and nothing of the upstream's."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 421 "), answer[:300]
    assert b"RLY_631" in body, answer[:600]
    assert f"{name} is served in region {region}, not this one".encode() in body, answer[:600]
    assert b"origin ok" not in answer


@pytest.mark.timeout(240)
def test_a_wildcard_never_serves_a_name_under_it_pinned_to_another_region(
    world: World, origin: Origin, agents: list[Agent], tmp_path: Path
) -> None:
    """This edge is in region eu. The account reserves ``*.pin.example.com`` (any region),
    ``app.pin.example.com`` and ``*.us.pin.example.com`` pinned to us; its agents bind the
    wildcard here, for http and https. No agent of the pinned names is connected anywhere
    (and there is no cluster): their visitors get 421 RLY_631 naming us, on the TLS port
    the ``unrecognized_name`` alert; every other name under the wildcard is served as
    before, hash-checked. A name reserved with a pin after the bind is refused at once
    (tests/e2e/test_a_pin_made_after_a_bind_acts_at_once.py has the rest of that), and
    still after the wildcard's next bind."""
    wild, pinned, deep = "*.pin.example.com", "app.pin.example.com", "x.us.pin.example.com"
    cli(world.env, "domains", "reserve", wild, "--account", world.account_a)
    for name in (pinned, "*.us.pin.example.com"):
        cli(world.env, "domains", "reserve", name, "--account", world.account_a, "--region", "us")
    upstream = str(origin.port)
    serving(world, agents, world.token_a, upstream, "http", "--domain", wild)
    serving(world, agents, world.token_a, upstream, "https", "--domain", wild)
    http_port, https_port = world.edge.http_port, world.edge.https_port

    # Plain HTTP: refused for the pinned names, byte for byte the region's refusal.
    for name in (pinned, deep):
        head = f"GET /hello HTTP/1.1\r\nhost: {name}\r\n".encode()
        refused_in_region(one_request(http_port, name, head), name, "us")
    # Other names under the wildcard: served, a download and an upload hash-checked.
    size = 300_000
    got = curl(f"http://www.pin.example.com:{http_port}/blob/{size}")
    assert got.returncode == 0 and sha(got.stdout) == sha(blob(size)), got.stderr
    body = payload(5, 200_000)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    sent = curl(f"http://www.pin.example.com:{http_port}/sink", "--data-binary", f"@{upload}")
    assert json.loads(sent.stdout) == {"size": len(body), "sha256": sha(body)}, sent

    # The TLS port: the same alert a name held in another region gets, and no handshake.
    for name in (pinned, deep):
        assert tls_port_answer(world, name) == ALERT_UNRECOGNIZED_NAME, name
    # A Host of a pinned name inside another name's TLS connection: 421 RLY_631 too.
    trusted = ssl.create_default_context(cafile=str(world.edge.ca_file))
    deadline = time.monotonic() + 30  # the wildcard's certificate is issued on its bind
    while True:
        got = curl(f"https://www.pin.example.com:{https_port}/blob/{size}", edge=world.edge)
        if got.returncode == 0 and sha(got.stdout) == sha(blob(size)):
            break
        assert time.monotonic() < deadline, (got.returncode, got.stderr, got.stdout[:300])
        time.sleep(0.2)
    head = f"GET /hello HTTP/1.1\r\nhost: {pinned}\r\n".encode()
    inside = one_request(https_port, "www.pin.example.com", head, tls=trusted)
    refused_in_region(inside, pinned, "us")

    # Reserved with a pin after the bind (through the CLI): refused at once, and after
    # the wildcard's next bind too. The API answers before the edge's check has run
    # (it runs as a task of its own): "at once" is within 2 s of the reservation, polled
    # every 50 ms, timed from the CLI's answer (not its process start, which a loaded
    # machine can make take longer than that).
    later = "later.pin.example.com"
    head = f"GET /hello HTTP/1.1\r\nhost: {later}\r\n".encode()
    cli(world.env, "domains", "reserve", later, "--account", world.account_a, "--region", "us")
    asked = time.monotonic()
    while not one_request(http_port, later, head).startswith(b"HTTP/1.1 421 "):
        assert time.monotonic() - asked < 2.0, f"{later} still served 2 s after its pin"
        time.sleep(0.05)
    refused_in_region(one_request(http_port, later, head), later, "us")
    http_agent = next(a for a in agents if a.url.startswith("http://"))
    http_agent.stop()
    agents.remove(http_agent)
    serving(world, agents, world.token_a, upstream, "http", "--domain", wild)
    refused_in_region(one_request(http_port, later, head), later, "us")
    got = curl(f"http://www.pin.example.com:{http_port}/blob/{size}")
    assert got.returncode == 0 and sha(got.stdout) == sha(blob(size)), got.stderr
