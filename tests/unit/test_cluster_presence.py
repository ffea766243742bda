"""Cluster presence (relay/cluster/presence.py) against a real redis-server: nodes see each
other's names through Redis, fast through pub/sub, and lose a dead node's after its ttl;
an outage of Redis (a restart that loses every key) leaves the tables as they were and
heals by itself; garbage in Redis is ignored."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from relay.cluster import presence as presence_module
from relay.cluster.presence import NodeInfo, Presence, RemoteName
from relay.errors import RelayError
from tests.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

A = NodeInfo("a", "r1", "10.0.0.1:7443")
B = NodeInfo("b", "r1", "[2001:db8::2]:7443")
Name = tuple[str, str, str, str, str]


async def eventually(check: Callable[[], bool], within: float, what: str) -> float:
    """Poll ``check`` until it holds; how long that took. Bounded in time and in count."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(int(within / 0.01) + 1):
        if check():
            return loop.time() - start
        if loop.time() - start > within:
            break
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {within}s: {what}")


@contextlib.asynccontextmanager
async def running(*nodes: Presence) -> AsyncIterator[None]:
    """Start ``nodes``; stop them afterwards, also when the test fails."""
    try:
        for node in nodes:
            await node.start()
        yield
    finally:
        for node in nodes:
            await node.stop()


def sees(node: Presence, family: str, hostname: str, holder: str) -> Callable[[], bool]:
    def check() -> bool:
        found = node.lookup(family, hostname)
        return found is not None and found.node.node_id == holder

    return check


def digest(blob: bytes) -> str:
    """The version a node key gives for its names blob ``blob``."""
    return hashlib.sha256(blob).hexdigest()[:16]


def raw_client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)


async def test_nodes_see_each_others_names(redis_server: RedisServer) -> None:  # noqa: F811
    names_a: list[Name] = [("http", "mine.example.com", "http", "", "")]
    names_b: list[Name] = [
        ("http", "app.example.com", "http", "localhost:3000", "owner-b"),
        ("sni", "*.example.com", "https", "", ""),
        ("sni", "*.a.example.com", "tls", "", ""),
        ("sni", "mine.example.com", "https", "", ""),
    ]
    a = Presence(redis_server.url, A, lambda: names_a, heartbeat=0.2, ttl=1.0)
    b = Presence(redis_server.url, B, lambda: names_b, heartbeat=0.2, ttl=1.0)
    async with running(a, b):
        await eventually(sees(a, "http", "app.example.com", "b"), 3, "a sees b's exact name")
        await eventually(sees(b, "http", "mine.example.com", "a"), 3, "b sees a's name")

        assert a.lookup("http", "app.example.com") == RemoteName(
            "http", "app.example.com", "http", "localhost:3000", B, "owner-b"
        )
        assert a.lookup("http", "APP.Example.com") == a.lookup("http", "app.example.com")
        # The longest wildcard suffix wins; a wildcard covers one label or more.
        for host, wildcard in [
            ("x.a.example.com", "*.a.example.com"),
            ("deep.x.a.example.com", "*.a.example.com"),
            ("y.example.com", "*.example.com"),
            ("a.example.com", "*.example.com"),
            ("app.example.com", "*.example.com"),  # http's name is not the TLS port's
        ]:
            found = a.lookup("sni", host)
            assert found is not None and found.hostname == wildcard, host
        assert a.lookup("sni", "example.com") is None
        assert a.lookup("http", "other.example.com") is None
        assert a.lookup("sni", "x.example.org") is None
        # Its own names are never a node's answer; another node's of the same name are.
        assert a.lookup("http", "mine.example.com") is None
        own_sni = a.lookup("sni", "mine.example.com")
        assert own_sni is not None and own_sni.hostname == "mine.example.com"
        assert b.lookup("sni", "mine.example.com") is None
        assert b.lookup("sni", "q.a.example.com") is None

        assert a.nodes() == [B]
        assert b.nodes() == [A]
        assert a.status() == {
            "redis": "connected",
            "nodes": 1,
            "remote_names": 4,
            "claims": 1,
            "claim_conflicts": [],
            "node_id_conflicts": 0,  # a and b write their own keys only
            "node_id_shared_with": {},
            "last_error": "",
        }
        assert a.connected


async def test_of_several_holders_this_region_then_the_reachable_win(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    shared: list[Name] = [("http", "shared.example.com", "http", "", "")]
    c = NodeInfo("c", "r2", "10.0.0.3:7443")
    d = NodeInfo("d", "r1", "10.0.0.4:7443")
    a = Presence(redis_server.url, A, list, heartbeat=0.2)
    nodes = [Presence(redis_server.url, n, lambda: shared, heartbeat=0.2) for n in (B, c, d)]
    async with running(a, *nodes):
        await eventually(lambda: len(a.nodes()) == 3, 3, "a sees b, c and d")
        # This region first (c, of r2, sorts before d but comes after it), then by id.
        assert sees(a, "http", "shared.example.com", "b")()
        unreachable = {"b"}
        found = a.lookup("http", "shared.example.com", lambda n: n.node_id in unreachable)
        assert found is not None and found.node == d
        # Every holder of this region unreachable: still one of them, not c of r2 (no
        # visitor goes to another region; c would only make the name look foreign).
        unreachable = {"b", "d"}
        found = a.lookup("http", "shared.example.com", lambda n: n.node_id in unreachable)
        assert found is not None and found.node == B
        unreachable = {"b", "c", "d"}  # avoided is last, not never
        found = a.lookup("http", "shared.example.com", lambda n: n.node_id in unreachable)
        assert found is not None and found.node == B
        found = a.lookup("http", "shared.example.com", lambda n: n.node_id in {"b"})
        assert found is not None and found.node == d


async def test_visitors_of_a_name_several_nodes_hold_take_turns_among_the_best(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Pooled agents on several nodes (or one agent's links to two PoPs) share the
    visitors of a node that holds none: rotating lookups go round robin over the holders
    of the best rank, per name; plain lookups (listings, ownership checks) use no turn."""
    shared: list[Name] = [
        ("http", "pool.example.com", "http", "", ""),
        ("sni", "*.pool.example.com", "https", "", ""),
    ]
    other = NodeInfo("c", "r2", "10.0.0.3:7443")
    d = NodeInfo("d", "r1", "10.0.0.4:7443")
    solo: list[Name] = [("http", "solo.example.com", "http", "", "")]
    a = Presence(redis_server.url, A, list, heartbeat=0.2)
    holders = [Presence(redis_server.url, n, lambda: shared, heartbeat=0.2) for n in (other, d)]
    b = Presence(redis_server.url, B, lambda: shared + solo, heartbeat=0.2)
    async with running(a, b, *holders):
        await eventually(lambda: len(a.nodes()) == 3, 3, "a sees b, c and d")

        def picks(family: str, host: str, n: int, **kw: object) -> list[str]:
            got = [a.lookup(family, host, rotate=True, **kw) for _ in range(n)]  # type: ignore[arg-type]
            return [g.node.node_id for g in got if g is not None]

        # b and d share region r1 with a; c (r2) gets none while they can be reached.
        assert Counter(picks("http", "pool.example.com", 10)) == {"b": 5, "d": 5}
        # Turns alternate, they do not come in runs.
        run = picks("http", "pool.example.com", 4)
        assert run[0] != run[1] and run[1] != run[2] and run[2] != run[3]
        # A wildcard's names share one turn counter (the wildcard's).
        wild = picks("sni", "x.pool.example.com", 3) + picks("sni", "y.pool.example.com", 3)
        assert Counter(wild) == {"b": 3, "d": 3}
        # One unreachable: the other takes every visitor; then both again.
        avoid = lambda n: n.node_id == "d"  # noqa: E731
        assert set(picks("http", "pool.example.com", 4, avoid=avoid)) == {"b"}
        assert Counter(picks("http", "pool.example.com", 4)) == {"b": 2, "d": 2}
        # A name one node holds always goes there.
        assert set(picks("http", "solo.example.com", 3)) == {"b"}
        # Plain lookups give the first by node id and leave the turn where it was.
        before = picks("http", "pool.example.com", 1)
        for _ in range(3):
            found = a.lookup("http", "pool.example.com")
            assert found is not None and found.node == B
        after = picks("http", "pool.example.com", 1)
        assert before != after

        # d leaves: its turn is gone with it, b takes everything.
        await holders[1].stop()
        holders.pop()
        await eventually(lambda: len(a.nodes()) == 2, 5, "a forgets d")
        assert set(picks("http", "pool.example.com", 4)) == {"b"}


async def test_changed_is_seen_at_once_through_pubsub(redis_server: RedisServer) -> None:  # noqa: F811
    """With a 2 s heartbeat, only pub/sub can make a change visible within 0.5 s."""
    names_a: list[Name] = [("http", "first.example.com", "http", "", "")]
    a = Presence(redis_server.url, A, lambda: names_a, heartbeat=2.0, ttl=5.0)
    b = Presence(redis_server.url, B, list, heartbeat=2.0, ttl=5.0)
    async with running(a, b):
        await eventually(sees(b, "http", "first.example.com", "a"), 3, "b sees a")
        for i in range(3):
            host = f"new{i}.example.com"
            names_a.append(("http", host, "http", "", ""))
            a.changed()
            took = await eventually(sees(b, "http", host, "a"), 0.5, f"b sees {host}")
            assert took < 0.5
            await asyncio.sleep(0.3)
        # Changes in a burst make one write, and the last one is in it.
        for i in range(20):
            names_a.append(("sni", f"burst{i}.example.com", "tls", "", ""))
            a.changed()
        await eventually(sees(b, "sni", "burst19.example.com", "a"), 0.5, "b sees the burst")
        # A node that stops deletes its key: the others forget it at once, not after ttl.
        await a.stop()
        await eventually(lambda: b.nodes() == [], 0.5, "b forgets a stopped a")
        assert b.lookup("http", "first.example.com") is None


async def test_a_dead_node_vanishes_after_its_ttl(redis_server: RedisServer) -> None:  # noqa: F811
    a = Presence(
        redis_server.url,
        A,
        lambda: [("http", "a.example.com", "http", "", "")],
        heartbeat=0.2,
        ttl=1.0,
    )
    b = Presence(redis_server.url, B, list, heartbeat=0.2, ttl=1.0)
    async with running(a, b):
        await eventually(sees(b, "http", "a.example.com", "a"), 3, "b sees a")
        task = a._task
        assert task is not None
        task.cancel()  # a dies: it neither refreshes nor deletes its key
        await asyncio.wait([task])
        assert b.lookup("http", "a.example.com") is not None
        took = await eventually(lambda: b.nodes() == [], 3, "b forgets a dead a")
        assert 0.5 < took < 1.0 + 3 * 0.2 + 0.5
        assert b.lookup("http", "a.example.com") is None
        assert b.status()["remote_names"] == 0


async def test_redis_restarted_empty_heals(redis_server: RedisServer) -> None:  # noqa: F811
    names_b: list[Name] = [("http", "b.example.com", "http", "", "")]
    a = Presence(
        redis_server.url, A, lambda: [("sni", "*.a.example.com", "tls", "", "")], heartbeat=0.3
    )
    b = Presence(redis_server.url, B, lambda: names_b, heartbeat=0.3)
    async with running(a, b):
        await eventually(sees(a, "http", "b.example.com", "b"), 3, "a sees b")
        await eventually(sees(b, "sni", "x.a.example.com", "a"), 3, "b sees a")

        redis_server.stop()
        await eventually(lambda: not a.connected and not b.connected, 3, "both see the outage")
        # The last table keeps serving; a change waits for Redis.
        names_b.append(("http", "later.example.com", "http", "", ""))
        b.changed()
        await asyncio.sleep(0.7)
        assert a.lookup("http", "b.example.com") == RemoteName(
            "http", "b.example.com", "http", "", B
        )
        assert b.lookup("sni", "x.a.example.com") is not None
        assert a.nodes() == [B] and b.nodes() == [A]

        redis_server.restart()  # empty: both must write their keys again
        await eventually(lambda: a.connected and b.connected, 3, "both reconnect")
        await eventually(sees(a, "http", "later.example.com", "b"), 3, "a sees b's change")
        with raw_client(redis_server) as r:
            await eventually(
                lambda: r.exists("relay:node:a", "relay:node:b") == 2, 3, "both keys are back"
            )
            # Each node's names too, though a's did not change: its renewal found the key
            # gone and wrote it again.
            assert r.exists("relay:names:a", "relay:names:b") == 2
            # Both subscribed again: pub/sub works, not only the heartbeat's rereads.
            await eventually(
                lambda: r.pubsub_numsub("relay:presence") == [(b"relay:presence", 2)],
                3,
                "both subscribe again",
            )
        assert a.lookup("http", "b.example.com") is not None
        assert b.lookup("sni", "x.a.example.com") is not None


async def test_tcp_ports_are_names_of_their_own_family(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """A node's TCP ports are known to the others by number (``held`` lists them for the
    listeners other nodes open), and the table tells every change to ``on_table``."""
    names_b: list[Name] = [
        ("tcp", "20001", "tcp", "", "owner-b"),
        ("http", "web.example.com", "http", "", "owner-b"),
    ]
    told: list[int] = []
    a = Presence(redis_server.url, A, list, heartbeat=0.2, on_table=lambda: told.append(len(told)))
    b = Presence(redis_server.url, B, lambda: names_b, heartbeat=0.2)
    async with running(a, b):
        await eventually(sees(a, "tcp", "20001", "b"), 3, "a sees b's port")
        assert set(a.held("tcp")) == {"20001"}
        assert a.held("tcp")["20001"].owner == "owner-b"
        assert a.lookup("tcp", "20002") is None
        assert a.lookup("http", "20001") is None
        # The table tells on_table one loop turn after the batch it applied, not inside it.
        await eventually(lambda: len(told) >= 1, 0.5, "a tells the port it learned")
        seen = len(told)
        names_b[0] = ("tcp", "20002", "tcp", "", "owner-b")
        b.changed()
        await eventually(lambda: set(a.held("tcp")) == {"20002"}, 2, "a sees the new port")
        await eventually(lambda: len(told) > seen, 0.5, "a tells the new port")


async def test_a_quiet_cluster_rereads_versions_not_names(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Two nodes with 5,000 names each, heartbeats every 0.1 s: over 2 s of quiet, Redis
    sends the nodes less than one copy of one node's names (each rereads the other's
    small node key each beat, and its names only when their version changes), yet a
    change is seen, and a names key lost in Redis is written again within a beat."""
    names_a: list[Name] = [
        ("http", f"a{i}.example.com", "http", "", "owner-a") for i in range(5000)
    ]
    names_b: list[Name] = [("sni", f"b{i}.example.com", "tls", "", "owner-b") for i in range(5000)]
    a = Presence(redis_server.url, A, lambda: names_a, heartbeat=0.1, ttl=1.0)
    b = Presence(redis_server.url, B, lambda: names_b, heartbeat=0.1, ttl=1.0)
    with raw_client(redis_server) as r:
        async with running(a, b):
            await eventually(lambda: a.status()["remote_names"] == 5000, 5, "a has b's names")
            await eventually(lambda: b.status()["remote_names"] == 5000, 5, "b has a's names")
            one_copy = r.strlen("relay:names:b")
            assert isinstance(one_copy, int) and one_copy > 200_000
            await asyncio.sleep(0.5)  # every write of the start is done
            before = int(r.info("stats")["total_net_output_bytes"])
            await asyncio.sleep(2.0)
            sent = int(r.info("stats")["total_net_output_bytes"]) - before
            assert sent < one_copy, (sent, one_copy)

            names_b.append(("sni", "late.example.com", "tls", "", "owner-b"))
            b.changed()
            await eventually(sees(a, "sni", "late.example.com", "b"), 2, "a sees the change")
            r.delete("relay:names:a")
            await eventually(lambda: r.exists("relay:names:a") == 1, 1, "a writes it again")
            assert b.lookup("http", "a1.example.com") is not None


async def test_events_reach_the_other_nodes(redis_server: RedisServer) -> None:  # noqa: F811
    got: list[dict[str, str]] = []
    a = Presence(redis_server.url, A, list, heartbeat=0.3, on_event=got.append)
    b = Presence(redis_server.url, B, list, heartbeat=0.3)
    async with running(a, b):
        await eventually(lambda: a.nodes() == [B], 3, "a sees b")
        await eventually(
            lambda: raw_numsub(redis_server, "relay:events") == 2, 3, "both subscribed"
        )
        await b.publish_event({"event": "revoke", "token": "t1"})
        with raw_client(redis_server) as r:
            for garbage in [b"not json", b"[1, 2]", b'{"n": 1}', b"\xff\xfe", b'"text"']:
                r.publish("relay:events", garbage)
        await b.publish_event({"event": "last"})
        await eventually(lambda: len(got) == 2, 2, "a gets both events")
        assert got == [{"event": "revoke", "token": "t1"}, {"event": "last"}]
        with pytest.raises(TypeError):
            await b.publish_event({"n": 1})  # type: ignore[dict-item]


def raw_numsub(server: RedisServer, channel: str) -> int:
    with raw_client(server) as r:
        ((_, count),) = r.pubsub_numsub(channel)
        return int(count)


async def test_garbage_in_redis_is_ignored(
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(presence_module, "MAX_NAMES", 3)
    good = ["http", "ok.example.com", "http", "", "owner1"]
    entries: dict[str, object] = {
        "shape1": ["region", "link"],
        "shape2": {"region": 1, "link": "h:1", "names": []},
        "shape3": {"region": "r1", "link": "h:1", "names": "ok.example.com"},
        "shape4": {"region": "r1", "link": "h:1", "names": [good[:4]]},
        "shape5": {"region": "r1", "link": "h:1", "names": [["ftp", *good[1:]]]},
        "shape6": {"region": "r1", "link": "h:1", "names": [[*good[:2], "udp", "", ""]]},
        "toolong": {"region": "r1", "link": "h:1", "names": [["http", "x" * 254, "http", "", ""]]},
        "toomany": {"region": "r1", "link": "h:1", "names": [good] * 4},
        "badlink": {"region": "r1", "link": "nohostport", "names": [good]},
        "badlink6": {"region": "r1", "link": "2001:db8::1:80", "names": [good]},
        "wild": {"region": "r1", "link": "h:1", "names": [["sni", "a.*.com", "tls", "", ""]]},
        # A TCP port is named by its number, 1..65535, and only as kind tcp.
        "port0": {"region": "r1", "link": "h:1", "names": [["tcp", "0", "tcp", "", ""]]},
        "portbig": {"region": "r1", "link": "h:1", "names": [["tcp", "65536", "tcp", "", ""]]},
        "portpad": {"region": "r1", "link": "h:1", "names": [["tcp", "080", "tcp", "", ""]]},
        "portname": {"region": "r1", "link": "h:1", "names": [["tcp", "a.com", "tcp", "", ""]]},
        "portkind": {"region": "r1", "link": "h:1", "names": [["tcp", "80", "http", "", ""]]},
        "kindtcp": {"region": "r1", "link": "h:1", "names": [["http", "a.com", "tcp", "", ""]]},
        # Its names key is the version it names, but not JSON.
        "versioned": {"region": "r1", "link": "h:1", "version": digest(b"not json"), "count": 1},
    }
    with raw_client(redis_server) as r:
        r.set("relay:node:x", b"not json")
        r.set("relay:node:bin", b"\xff\x00")
        r.hset("relay:node:h", "region", "r1")
        r.set(b"relay:node:\xff", json.dumps({"region": "r1", "link": "h:1", "names": [good]}))
        for node_id, value in entries.items():
            r.set(f"relay:node:{node_id}", json.dumps(value))
        r.set("relay:names:versioned", b"not json")
        # Registered, as a node registers itself each heartbeat; and garbage members.
        now_ms = time.time() * 1000
        members: dict[str | bytes, float] = {n: now_ms for n in ["x", "bin", "h", *entries]}
        members.update({b"\xff": now_ms, "z" * 300: now_ms, "gone": now_ms - 7200_000})
        r.zadd("relay:nodes", members)
        names_b: list[Name] = [("http", "b.example.com", "http", "", "")]
        a = Presence(redis_server.url, A, list, heartbeat=0.2)
        b = Presence(redis_server.url, B, lambda: names_b, heartbeat=0.2)
        caplog.set_level(logging.DEBUG, logger="relay.cluster.presence")
        async with running(a, b):
            await eventually(sees(a, "http", "b.example.com", "b"), 3, "a sees b")
            for message in [b"x", b"h", b"\xff", b"y" * 1000, b"shape2", b""]:
                r.publish("relay:presence", message)
            await asyncio.sleep(0.6)  # some heartbeats, each rereading the garbage
            assert a.nodes() == [B]
            assert a.lookup("http", "ok.example.com") is None
            assert a.lookup("sni", "a.x.com") is None
            assert a.connected
            # Each garbage value is logged once by each node, not on every heartbeat.
            ignored = Counter(m for m in caplog.messages if m.endswith("not a node entry"))
            assert set(ignored.values()) == {2}, ignored
            assert len(ignored) == 2 + len(entries)  # x, bin and the entries
            assert "cluster presence: ignoring relay:node:x: not a node entry" in ignored
            # A registration an hour old is dropped (its node's key expired long ago).
            assert r.zscore("relay:nodes", "gone") is None
            assert r.zscore("relay:nodes", "b") is not None
            # Still working: a change on b shows.
            names_b.append(("http", "b2.example.com", "http", "", ""))
            b.changed()
            await eventually(sees(a, "http", "b2.example.com", "b"), 0.5, "a sees b's change")


async def test_a_poisoned_key_or_event_leaves_rereads_and_events_working(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Values no relay writes, each of which once raised out of the parser (a list where
    a string goes; JSON nested past the parser's recursion limit): they are refused like
    other garbage, and the reread that meets them still forgets a dead node, and the
    subscriber that hears of them still hears the next event."""
    deep = b"[" * 100_000 + b"]" * 100_000
    listed = {"region": "r1", "link": "h:1", "names": [[["x"], "p.com", "http", "", ""]]}
    got: list[dict[str, str]] = []
    with raw_client(redis_server) as r:
        r.set("relay:node:listed", json.dumps(listed))
        r.set("relay:node:deep", deep)
        r.set("relay:node:deepnames", json.dumps({"region": "r1", "link": "h:1",
                                                  "version": digest(deep)}))  # fmt: skip
        r.set("relay:names:deepnames", deep)
        a = Presence(redis_server.url, A, list, heartbeat=0.2, ttl=1.0, on_event=got.append)
        b = Presence(
            redis_server.url, B, lambda: [("http", "b.example.com", "http", "", "")],
            heartbeat=0.2, ttl=1.0,
        )  # fmt: skip
        async with running(a, b):
            await eventually(sees(a, "http", "b.example.com", "b"), 3, "a sees b")
            for node_id in ("listed", "deep", "deepnames"):
                r.publish("relay:presence", node_id)
            r.publish("relay:events", deep)
            await b.publish_event({"event": "after"})
            await eventually(lambda: got == [{"event": "after"}], 2, "a hears the next event")
            assert a.nodes() == [B]
            task = b._task
            assert task is not None
            task.cancel()  # b dies; its key expires after the ttl
            await asyncio.wait([task])
            await eventually(lambda: a.nodes() == [], 3, "a's rereads forget the dead b")
            assert a.connected


async def test_names_of_another_version_than_the_node_key_names_are_not_taken(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """A node key and its names key are read in two calls, and the node may write both
    in between: names whose digest is not the version the node key names are not put in
    the table (they would stay there, stale, once the node went back to that version)."""
    old = json.dumps([["http", "old.example.com", "http", "", "o"]]).encode()
    new = json.dumps([["http", "new.example.com", "http", "", "o"]]).encode()
    with raw_client(redis_server) as r:
        r.set("relay:node:z", json.dumps({"region": "r1", "link": "h:1", "version": digest(old)}))
        r.set("relay:names:z", new)  # z's next names, its node key not written yet
        a = Presence(redis_server.url, A, list, heartbeat=0.2)
        async with running(a):
            await asyncio.sleep(0.5)  # rereads, each finding the mismatch
            assert a.lookup("http", "new.example.com") is None
            assert a.lookup("http", "old.example.com") is None
            r.set("relay:names:z", old)
            r.publish("relay:presence", "z")
            await eventually(sees(a, "http", "old.example.com", "z"), 2, "a takes z's names")
            r.set("relay:node:z", json.dumps({"region": "r1", "link": "h:1",
                                              "version": digest(new)}))  # fmt: skip
            r.set("relay:names:z", new)
            r.publish("relay:presence", "z")
            await eventually(sees(a, "http", "new.example.com", "z"), 2, "a takes the new ones")
            assert a.lookup("http", "old.example.com") is None


async def test_rereads_read_the_registry_not_the_keyspace(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Each heartbeat rereads the nodes registered in ``relay:nodes``: it never walks the
    keyspace (SCAN), whose claim keys (one per name) outnumber the nodes by far."""
    with raw_client(redis_server) as r:
        r.mset({f"relay:claim:n{i}.example.com": "owner" for i in range(20_000)})
        r.config_resetstat()
        names_b: list[Name] = [("http", "b.example.com", "http", "", "")]
        a = Presence(redis_server.url, A, list, heartbeat=0.2)
        b = Presence(redis_server.url, B, lambda: names_b, heartbeat=0.2)
        async with running(a, b):
            await eventually(sees(a, "http", "b.example.com", "b"), 3, "a sees b")
            await asyncio.sleep(0.6)  # full rereads
            stats = r.info("commandstats")
            assert "cmdstat_scan" not in stats, stats["cmdstat_scan"]
            assert stats["cmdstat_zrevrange"]["calls"] >= 4  # the rereads did run
            assert set(r.zrange("relay:nodes", 0, -1)) == {b"a", b"b"}
        assert r.zrange("relay:nodes", 0, -1) == []  # each left it at stop


async def test_a_registry_of_another_type_leaves_presence_working(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """``relay:nodes`` is not a sorted set (someone else's key): nodes still see each
    other through their announcements, and Redis is not taken for unreachable."""
    with raw_client(redis_server) as r:
        r.set("relay:nodes", b"not a sorted set")
    names_b: list[Name] = [("http", "b.example.com", "http", "", "")]
    a = Presence(redis_server.url, A, list, heartbeat=0.2)
    b = Presence(redis_server.url, B, lambda: names_b, heartbeat=0.2)
    async with running(a, b):
        await eventually(
            lambda: raw_numsub(redis_server, "relay:presence") == 2, 3, "both subscribed"
        )
        names_b.append(("http", "b2.example.com", "http", "", ""))
        b.changed()  # announced now that a listens: nothing else tells a of b here
        await eventually(sees(a, "http", "b2.example.com", "b"), 2, "a sees b's change")
        assert sees(a, "http", "b.example.com", "b")()
        await asyncio.sleep(0.5)  # heartbeats, each failing to read the registry
        assert a.connected and b.connected


async def test_status_says_unreachable_while_redis_is_down(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_server.stop()
    a = Presence(
        redis_server.url, A, lambda: [("http", "a.example.com", "http", "", "")], heartbeat=0.2
    )
    caplog.set_level(logging.WARNING, logger="relay.cluster.presence")
    async with running(a):  # Redis is down: start() does not mind
        await asyncio.sleep(1.0)  # several failed heartbeats
        status = a.status()
        assert status["redis"] == "unreachable" and status["last_error"], status
        assert not a.connected
        assert len([m for m in caplog.messages if "unreachable" in m]) == 1
        with pytest.raises(RelayError):
            await a.publish_event({"event": "x"})

        redis_server.start()
        await eventually(lambda: a.connected, 3, "a reconnects")
        with raw_client(redis_server) as r:
            await eventually(lambda: r.exists("relay:node:a") == 1, 3, "a writes its key")
        assert a.status()["redis"] == "connected" and a.status()["last_error"] == ""

        redis_server.stop()
        await eventually(lambda: a.status()["redis"] == "unreachable", 3, "a sees the outage")


async def test_a_node_key_that_is_not_a_string_is_replaced_and_a_failover_error_only_fails_a_beat(
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Garbage of another type at this node's key (SET ... GET answers WRONGTYPE) is
    replaced by a plain SET; a READONLY (a replica promoted in a failover) fails that beat
    only, and the check of the key stays on (relay/cluster/own_key.py)."""
    sync = redis.Redis.from_url(redis_server.url)
    sync.rpush("relay:node:a", "garbage")
    a = Presence(redis_server.url, A, list, heartbeat=0.2, ttl=1.0)
    async with running(a):
        await eventually(
            lambda: sync.type("relay:node:a") == b"string", 3, "a's key replaced by a string"
        )
        assert json.loads(sync.get("relay:node:a") or b"{}")["instance"] == a._own.instance
        real_set = redis.asyncio.Redis.set
        refused = 0

        async def readonly_once(self: redis.asyncio.Redis, *args: object, **kw: object) -> object:
            nonlocal refused
            if kw.get("get") and not refused:
                refused += 1
                raise redis.exceptions.ReadOnlyError("You can't write against a read only replica.")
            return await real_set(self, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(redis.asyncio.Redis, "set", readonly_once)
        a.changed()
        await eventually(lambda: refused == 1, 3, "a beat refused")
        sync.delete("relay:node:a")
        await eventually(lambda: sync.exists("relay:node:a") == 1, 3, "written again after")
        assert a._set_get and a.connected and a.node_id_conflicts == 0
    sync.close()
