"""One owner per name across the cluster (relay/cluster/name_claims.py, through
Presence.claim) against a real redis-server: of two binds of one name by two owners on two
nodes at the same instant exactly one wins; nodes of one owner share a claim; a held name
keeps its claim, a name given up frees it at once, a dead node's claims expire; a clash made
while Redis was down is reported, and another owner's claim is never released."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

import pytest
import redis

from relay.cluster.name_claims import CLAIM_PREFIX, NameClaims
from relay.cluster.presence import NodeInfo, Presence
from relay.errors import RelayError
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.unit.test_cluster_presence import eventually, raw_client

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

A = NodeInfo("a", "r1", "10.0.0.1:7443")
B = NodeInfo("b", "r1", "10.0.0.2:7443")


def node(server: RedisServer, info: NodeInfo, owned: dict[str, str]) -> Presence:
    return Presence(server.url, info, list, heartbeat=0.2, ttl=1.0, owned=lambda: dict(owned))


@contextlib.asynccontextmanager
async def running(*nodes: Presence) -> AsyncIterator[None]:
    try:
        for n in nodes:
            await n.start()
        yield
    finally:
        for n in nodes:
            await n.stop()


def held_by(client: redis.Redis, host: str) -> bytes | None:
    value = client.get(CLAIM_PREFIX + host)
    assert value is None or isinstance(value, bytes)
    return value


async def test_of_two_simultaneous_claims_by_two_owners_one_wins(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """200 names, each claimed by two owners on two nodes in the same event-loop turn:
    every name ends with exactly one owner, the one Redis holds. A check against the
    presence tables alone would let both through (neither node has heard of the other's
    bind yet).

    A node holds each name it wins at once, as a bind right after its claim would; the
    heartbeats (every 0.2 s) go on among the claims and must release none in flight."""
    held_a: dict[str, str] = {}
    held_b: dict[str, str] = {}
    a, b = node(redis_server, A, held_a), node(redis_server, B, held_b)
    client = raw_client(redis_server)

    async def claim_and_hold(
        n: Presence, held: dict[str, str], host: str, owner: str
    ) -> str | None:
        refused_by = await n.claim(host, owner)
        if refused_by is None:
            held[host] = owner
            n.settle(host, owner)
            n.changed()
        return refused_by

    async with running(a, b):
        hosts = [f"n{i}.example.com" for i in range(200)]
        replies = await asyncio.gather(
            *(
                c
                for h in hosts
                for c in (
                    claim_and_hold(a, held_a, h, "owner-a"),
                    claim_and_hold(b, held_b, h, "owner-b"),
                )
            )
        )
        wins = {"owner-a": 0, "owner-b": 0}
        for i, host in enumerate(hosts):
            ra, rb = replies[2 * i], replies[2 * i + 1]
            assert (ra is None) != (rb is None), (host, ra, rb)
            winner = "owner-a" if ra is None else "owner-b"
            loser_saw = rb if ra is None else ra
            assert loser_saw == winner
            assert held_by(client, host) == winner.encode()
            wins[winner] += 1
        assert sum(wins.values()) == len(hosts)


async def test_nodes_of_one_owner_share_a_claim(redis_server: RedisServer) -> None:  # noqa: F811
    # Both nodes hold the name, as they would once their binds are done: a claim of a
    # name not held is released by the node's next heartbeat (0.2 s here), which could
    # fall between two claims below.
    held = {"pool.example.com": "owner-x"}
    a, b = node(redis_server, A, held), node(redis_server, B, held)
    async with running(a, b):
        assert await a.claim("pool.example.com", "owner-x") is None
        assert await b.claim("pool.example.com", "owner-x") is None
        assert await b.claim("POOL.example.com", "owner-y") == "owner-x"


async def test_a_held_name_keeps_its_claim_and_a_name_given_up_frees_it(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    owned_a: dict[str, str] = {}
    a, b = node(redis_server, A, owned_a), node(redis_server, B, {})
    client = raw_client(redis_server)
    async with running(a, b):
        assert await a.claim("kept.example.com", "owner-a") is None
        owned_a["kept.example.com"] = "owner-a"
        a.settle("kept.example.com", "owner-a")  # the bind is done
        a.changed()
        # Three ttls later the claim is still there: each heartbeat refreshes it.
        await asyncio.sleep(3.0)
        assert held_by(client, "kept.example.com") == b"owner-a"
        ttl_ms = client.pttl(CLAIM_PREFIX + "kept.example.com")
        assert isinstance(ttl_ms, int) and 0 < ttl_ms <= 1000
        assert await b.claim("kept.example.com", "owner-b") == "owner-a"
        # Given up: the next write releases it, and another owner may claim it.
        del owned_a["kept.example.com"]
        a.changed()
        await eventually(
            lambda: held_by(client, "kept.example.com") is None, 2, "a releases its claim"
        )
        assert await b.claim("kept.example.com", "owner-b") is None
        assert a.status()["claims"] == 0


async def test_a_bind_that_failed_after_its_claim_gives_it_back(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """The claim comes before the bind; a bind refused after it (e.g. a name taken here
    as another kind) holds no name, so the next write after it settled releases the
    claim."""
    a = node(redis_server, A, {})
    client = raw_client(redis_server)
    async with running(a):
        assert await a.claim("failed.example.com", "owner-a") is None
        a.settle("failed.example.com", "owner-a")
        a.changed()
        await eventually(
            lambda: held_by(client, "failed.example.com") is None, 2, "the claim is released"
        )


async def test_a_claim_whose_bind_is_in_flight_is_kept_until_the_bind_settles(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Between its claim and its name showing in ``owned`` a bind waits (the workers'
    supervisor, a listen): writes meanwhile must keep the claim, or another token on
    another node could claim the name and both would serve it."""
    a, b = node(redis_server, A, {}), node(redis_server, B, {})
    client = raw_client(redis_server)
    async with running(a, b):
        assert await a.claim("inflight.example.com", "owner-a") is None
        a.changed()
        await asyncio.sleep(0.7)  # writes and heartbeats (every 0.2 s) meanwhile
        assert held_by(client, "inflight.example.com") == b"owner-a"
        assert await b.claim("inflight.example.com", "owner-b") == "owner-a"
        a.settle("inflight.example.com", "owner-a")  # the bind failed after all
        a.changed()
        await eventually(
            lambda: held_by(client, "inflight.example.com") is None, 2, "released once settled"
        )
        assert await b.claim("inflight.example.com", "owner-b") is None


async def test_a_node_giving_up_a_shared_name_leaves_the_claim_to_the_others(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Pool members (or links) of one token on two nodes share a name's claim: the node
    whose member leaves must not release it while the other still serves the name. The
    other node writes rarely here, so it would not claim the name back in time."""
    name = ("http", "pool.example.com", "http", "", "owner-x")
    names_a = [name]
    owned_a = {"pool.example.com": "owner-x"}
    a = Presence(
        redis_server.url, A, lambda: list(names_a), heartbeat=0.2, ttl=1.0,
        owned=lambda: dict(owned_a),
    )  # fmt: skip
    b = Presence(
        redis_server.url, B, lambda: [name], heartbeat=0.9, ttl=3.0,
        owned=lambda: {"pool.example.com": "owner-x"},
    )  # fmt: skip
    c = node(redis_server, NodeInfo("c", "r1", "10.0.0.3:7443"), {})
    client = raw_client(redis_server)
    async with running(a, b, c):
        assert await a.claim("pool.example.com", "owner-x") is None
        a.settle("pool.example.com", "owner-x")
        assert await b.claim("pool.example.com", "owner-x") is None
        b.settle("pool.example.com", "owner-x")
        await eventually(lambda: a.lookup("http", "pool.example.com") is not None, 3, "a sees b")
        names_a.clear()
        owned_a.clear()
        a.changed()
        await asyncio.sleep(0.5)  # a's writes, none of b's
        assert held_by(client, "pool.example.com") == b"owner-x"
        assert await c.claim("pool.example.com", "owner-y") == "owner-x"


async def test_a_dead_nodes_claims_expire(redis_server: RedisServer) -> None:  # noqa: F811
    owned_a = {"dead.example.com": "owner-a"}
    a, b = node(redis_server, A, owned_a), node(redis_server, B, {})
    client = raw_client(redis_server)
    async with running(b):
        await a.start()
        try:
            assert await a.claim("dead.example.com", "owner-a") is None
            assert await b.claim("dead.example.com", "owner-b") == "owner-a"
            # The node dies: its loops stop without a word (no release, no delete).
            task = a._task
            assert task is not None
            task.cancel()
            await asyncio.wait([task])
            await eventually(
                lambda: held_by(client, "dead.example.com") is None, 3, "the claim expires"
            )
            assert await b.claim("dead.example.com", "owner-b") is None
        finally:
            a._task = None
            await a.stop()


async def test_stop_releases_the_claims_it_holds_and_no_others(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    owned_a = {"mine.example.com": "owner-a", "clash.example.com": "owner-a"}
    a = node(redis_server, A, owned_a)
    client = raw_client(redis_server)
    client.set(CLAIM_PREFIX + "clash.example.com", "owner-z", px=60_000)
    await a.start()
    try:
        assert await a.claim("mine.example.com", "owner-a") is None
        a.changed()
        await eventually(lambda: a.status()["claim_conflicts"] != [], 2, "a sees the clash")
    finally:
        await a.stop()
    assert held_by(client, "mine.example.com") is None
    assert held_by(client, "clash.example.com") == b"owner-z"


async def test_a_clash_made_during_an_outage_is_reported_once(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two nodes bound the name while Redis was down (each on its last table): when the
    claims are refreshed, the node whose claim lost says so, once, and keeps serving; the
    other owner's claim is neither taken nor released."""
    owned_a = {"clash.example.com": "owner-a"}
    a = node(redis_server, A, owned_a)
    client = raw_client(redis_server)
    client.set(CLAIM_PREFIX + "clash.example.com", "owner-b", px=60_000)
    caplog.set_level(logging.WARNING, logger="relay.cluster.presence")
    async with running(a):
        await eventually(
            lambda: a.status()["claim_conflicts"] == ["clash.example.com"], 2, "the clash"
        )
        await asyncio.sleep(1.0)  # five more heartbeats
        clash_lines = [r for r in caplog.records if "clash.example.com" in r.getMessage()]
        assert len(clash_lines) == 1
        assert held_by(client, "clash.example.com") == b"owner-b"
        # a gives the name up: the other owner's claim stays.
        del owned_a["clash.example.com"]
        a.changed()
        await eventually(lambda: a.status()["claim_conflicts"] == [], 2, "the clash is over")
        assert held_by(client, "clash.example.com") == b"owner-b"


async def test_a_claim_while_redis_is_down_says_so(redis_server: RedisServer) -> None:  # noqa: F811
    a = node(redis_server, A, {})
    async with running(a):
        assert await a.claim("up.example.com", "owner-a") is None
        redis_server.stop()
        with pytest.raises(RelayError, match=r"cannot claim down\.example\.com"):
            await a.claim("down.example.com", "owner-a")
        assert a.status()["redis"] == "unreachable"


async def test_a_claim_made_while_a_write_refreshes_claims_is_kept(
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write snapshots the names held, then refreshes their claims in Redis. A bind's
    claim that completes meanwhile is not in that snapshot, and that write must not
    release it: the bind holds the name from then on. The refresh is made to wait for
    that claim, so the order is certain; every release is recorded, so a release undone
    by a later write still fails the test."""
    held = {f"h{i}.example.com": "owner-a" for i in range(100)}
    in_flight: list[asyncio.Task[str | None]] = []
    released: list[str] = []
    claim, release = NameClaims.claim, NameClaims.release

    async def refresh_after_the_late_claim(
        self: NameClaims, names: Mapping[str, str]
    ) -> dict[str, str]:
        if len(names) > 1 and in_flight:  # a write's refresh, not the bind's claim
            await asyncio.wait_for(asyncio.shield(in_flight[0]), 5)
        return await claim(self, names)

    async def recorded(self: NameClaims, names: Mapping[str, str]) -> None:
        released.extend(names)
        await release(self, names)

    monkeypatch.setattr(NameClaims, "claim", refresh_after_the_late_claim)
    monkeypatch.setattr(NameClaims, "release", recorded)

    def owned() -> dict[str, str]:
        if pending:
            pending.clear()
            late = asyncio.ensure_future(a.claim("late.example.com", "owner-a"))
            late.add_done_callback(lambda _: held.update({"late.example.com": "owner-a"}))
            in_flight.append(late)
        return dict(held)

    pending: list[bool] = []
    a = Presence(redis_server.url, A, list, heartbeat=10.0, ttl=30.0, owned=owned)
    client = raw_client(redis_server)
    async with running(a):
        await eventually(lambda: a.status()["claims"] == 100, 5, "the held names are claimed")
        pending.append(True)
        a.changed()
        await eventually(lambda: bool(in_flight) and in_flight[0].done(), 5, "the late claim")
        assert in_flight[0].result() is None
        # The write that began with the claim finishes: its claims are 101 then.
        await eventually(lambda: a.status()["claims"] == 101, 5, "the write keeps it")
        assert held_by(client, "late.example.com") == b"owner-a"
        assert "late.example.com" not in released


async def test_a_storm_of_claims_waits_for_slots_and_leaves_redis_taken_for_up(
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Claims in flight at once are bounded (CLAIM_SLOTS), so a storm of binds leaves
    connections to the subscriber and the heartbeat; one that cannot get a slot in time
    fails as busy, and Redis is not taken for unreachable for it."""
    from relay.cluster import presence as presence_module

    monkeypatch.setattr(presence_module, "CLAIM_SLOTS", 2)
    monkeypatch.setattr(presence_module, "CALL_DEADLINE", 0.5)
    claim = NameClaims.claim
    in_flight, most = [0], [0]
    gate = asyncio.Event()

    async def held_at_the_gate(self: NameClaims, names: Mapping[str, str]) -> dict[str, str]:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        try:
            if len(names) == 1:  # a bind's claim, not a write's refresh
                await gate.wait()
            return await claim(self, names)
        finally:
            in_flight[0] -= 1

    monkeypatch.setattr(NameClaims, "claim", held_at_the_gate)
    a = node(redis_server, A, {})
    async with running(a):
        await eventually(lambda: a.connected, 2, "a is connected")
        first = [asyncio.ensure_future(a.claim(f"s{i}.example.com", "o")) for i in range(2)]
        await asyncio.sleep(0.1)
        with pytest.raises(RelayError, match="too many claims at once"):
            await a.claim("late.example.com", "o")  # no slot within the deadline
        assert a.connected
        gate.set()
        assert await asyncio.gather(*first) == [None, None]
        rest = await asyncio.gather(*(a.claim(f"r{i}.example.com", "o") for i in range(10)))
        assert rest == [None] * 10
        assert most[0] <= 2 + 1  # two binds' claims, and at most one write's refresh
        assert a.connected
