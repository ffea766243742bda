"""The registry ``relay:nodes`` holds more ids than a heartbeat reads (MAX_NODES) once ids
churned within the hour or junk outnumber the live nodes: it is read newest first, so the
live nodes, which register again every heartbeat, are never the ones left out; and an
hour-old registration is dropped even when it is beyond what was read."""

from __future__ import annotations

import time

import pytest
import redis

from relay.cluster import presence as presence_module
from relay.cluster.presence import NodeInfo, Presence
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.unit.test_cluster_presence import eventually, running, sees

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

A = NodeInfo("a", "r1", "10.0.0.1:7443")
B = NodeInfo("b", "r1", "10.0.0.2:7443")


async def test_live_nodes_are_read_when_the_registry_overflows(
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(presence_module, "MAX_NODES", 5)
    names_b = [("http", "b.example.com", "http", "", "owner-b", "pool")]
    b = Presence(redis_server.url, B, lambda: names_b, heartbeat=0.1, ttl=1.0)
    a = Presence(redis_server.url, A, list, heartbeat=0.1, ttl=1.0)
    r = redis.Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    try:
        async with running(b):
            await eventually(lambda: r.exists("relay:node:b") == 1, 3, "b writes its key")
            # Ids of nodes gone within the hour (a fleet whose ids churn), more than
            # MAX_NODES of them; and some gone for over an hour, older still.
            now_ms = time.time() * 1000
            r.zadd("relay:nodes", {f"gone-{i}": now_ms - 600_000 + i for i in range(5)})
            r.zadd("relay:nodes", {f"old-{i}": now_ms - 7200_000 + i for i in range(3)})
            async with running(a):  # b is quiet: a hears no announcement of it
                await eventually(sees(a, "http", "b.example.com", "b"), 3, "a sees live b")
                await eventually(
                    lambda: r.zscore("relay:nodes", "old-0") is None, 3, "hour-old ids dropped"
                )
                assert r.zscore("relay:nodes", "gone-0") is not None  # within the hour: kept
    finally:
        r.close()
