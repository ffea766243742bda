"""One owner per public name across the cluster, claimed atomically in Redis.

Presence (relay/cluster/presence.py) tells every node which names the others hold, but a
node hears of another's bind a round trip later: two binds of one name by two tokens on
two nodes at the same instant could both pass a check against the table, and DNS would
then send the name's visitors to two owners. A claim closes that gap. Before a node binds
a name it claims ``relay:claim:<hostname>`` for the owner's tag, in one Lua script that
sets the key when it is absent or already that owner's: of two simultaneous binds by two
tokens exactly one wins. Nodes of one token (links and pool members on several nodes)
share the claim.

Claims live as long as the names. Each heartbeat a node refreshes the claims of the names
it holds (the same script, ``PX ttl``) and releases those of names it no longer holds (a
release deletes a key only while it is still that owner's). A node that dies stops
refreshing: its claims expire with its presence key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import redis.asyncio as aioredis

CLAIM_PREFIX = "relay:claim:"
#: Names per script call: a node with many names refreshes them in several calls, so no
#: single call holds Redis for long.
CHUNK = 500

# KEYS: the claim keys; ARGV[1]: ttl in ms; ARGV[1 + i]: the owner claiming KEYS[i].
# Returns [key, holder, ...] for every key another owner holds.
_CLAIM = """
local refused = {}
for i, key in ipairs(KEYS) do
  local owner = ARGV[i + 1]
  local held = redis.call('GET', key)
  if (not held) or held == owner then
    redis.call('SET', key, owner, 'PX', ARGV[1])
  else
    refused[#refused + 1] = key
    refused[#refused + 1] = held
  end
end
return refused
"""

# KEYS: the claim keys; ARGV[i]: the owner releasing KEYS[i]. Another owner's claim stays.
_RELEASE = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('DEL', key)
  end
end
return 0
"""

Call = Callable[[Awaitable[Any]], Awaitable[Any]]


class NameClaims:
    """Claims of ``hostname -> owner tag`` in Redis. Each method is one or a few script
    calls through ``call`` (the caller's timeout); Redis errors go to the caller."""

    def __init__(self, client: aioredis.Redis, ttl_ms: int, call: Call) -> None:
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._ttl_ms = ttl_ms
        self._call = call

    async def claim(self, names: Mapping[str, str]) -> dict[str, str]:
        """Claim (or keep claiming) each hostname for its owner. Returns the hostnames
        another owner holds, each with that owner's tag."""
        refused: dict[str, str] = {}
        items = sorted(names.items())
        for i in range(0, len(items), CHUNK):
            chunk = items[i : i + CHUNK]
            keys = [CLAIM_PREFIX + host for host, _ in chunk]
            args = [str(self._ttl_ms), *(owner for _, owner in chunk)]
            reply = await self._call(self._claim(keys=keys, args=args))
            for key, holder in zip(reply[::2], reply[1::2], strict=True):
                refused[_text(key)[len(CLAIM_PREFIX) :]] = _text(holder)
        return refused

    async def release(self, names: Mapping[str, str]) -> None:
        """Give up each hostname's claim, where it is still its owner's."""
        items = sorted(names.items())
        for i in range(0, len(items), CHUNK):
            chunk = items[i : i + CHUNK]
            keys = [CLAIM_PREFIX + host for host, _ in chunk]
            await self._call(self._release(keys=keys, args=[owner for _, owner in chunk]))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
