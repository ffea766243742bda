"""An announcement on ``relay:presence`` is only a hint (every node republishes after a
Redis restart; anyone who can PUBLISH can send one): a node rereads the announced node's
key, and downloads its names only when that key changed. A burst of announcements makes
one read, not one per message."""

from __future__ import annotations

import asyncio

import pytest
import redis

from relay.cluster.presence import NodeInfo, Presence
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.unit.test_cluster_presence import eventually, running, sees

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

A = NodeInfo("a", "r1", "10.0.0.1:7443")
B = NodeInfo("b", "r1", "10.0.0.2:7443")


async def test_an_announcement_of_an_unchanged_node_does_not_download_its_names(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    names_b = [("sni", f"b{i}.example.com", "tls", "", "owner-b", "pool") for i in range(5000)]
    # Heartbeats far apart: what Redis sends in the test is the announcements' doing.
    b = Presence(redis_server.url, B, lambda: names_b, heartbeat=2.0, ttl=5.0)
    a = Presence(redis_server.url, A, list, heartbeat=2.0, ttl=5.0)
    r = redis.Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    try:
        async with running(a, b):
            await eventually(lambda: a.status()["remote_names"] == 5000, 5, "a has b's names")
            one_copy = int(r.strlen("relay:names:b"))
            await asyncio.sleep(0.3)
            r.config_resetstat()
            before = int(r.info("stats")["total_net_output_bytes"])
            # b's key is as it was: 20 announcements of it at once.
            with r.pipeline(transaction=False) as pipe:
                for _ in range(20):
                    pipe.publish("relay:presence", "b")
                pipe.execute()
            await asyncio.sleep(0.5)
            sent = int(r.info("stats")["total_net_output_bytes"]) - before
            assert sent < one_copy // 10, f"{sent} bytes for 20 announcements, {one_copy} a copy"
            mgets = r.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)
            assert mgets <= 4, f"{mgets} reads for one burst of 20 announcements"

            # A change is still read at once from its announcement.
            names_b.append(("sni", "late.example.com", "tls", "", "owner-b", "pool"))
            b.changed()
            await eventually(sees(a, "sni", "late.example.com", "b"), 0.5, "a sees b's change")
    finally:
        r.close()
