"""This node's presence key, and whether another live process writes it too (sans-IO).

A node's id is ``node_id``, or by default its host's name and agent listener
(``edge-1/0.0.0.0:7000``). Two PoPs given the same one (cloned VMs, containers started
with one ``--hostname``) each write ``relay:node:<id>`` every heartbeat, over each
other: every other node then reads the one or the other, and carries a visitor for a name
of the first to the second, which does not hold it. Nothing failed loudly; visitors
failed now and then.

Each process marks its key's value with an ``instance`` of its own, and writes it with
``SET ... GET`` (Redis 6.2 and later), which returns what the key held. From the second
write on, that is a value of this process (the last, or an older one a Redis restored
from its files or a promoted replica still had), or nothing (a Redis restarted empty, a
key that expired in an outage): a value of another instance was written by another live
process since. The first write is not judged: the value there may be this node's own
from before a restart (it writes no more).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from relay.logs import cut

#: The ERROR about another writer is repeated no more often than this while it lasts.
SAY_AGAIN_AFTER = 60.0


class OwnKey:
    def __init__(self, node_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self.instance = secrets.token_hex(8)
        self.clock = clock
        #: Writes found overwritten by another process since this one's previous write.
        self.conflicts = 0
        #: What the other writer's value said of it (its link address and region), last.
        self.other: dict[str, str] = {}
        self._written = False
        self._said_at: float | None = None

    def value(self, fields: dict[str, Any]) -> bytes:
        """The key's value: ``fields`` and this process's instance."""
        return json.dumps({**fields, "instance": self.instance}, separators=(",", ":")).encode()

    def written(self, value: bytes, old: bytes | str | None) -> str | None:
        """The key now holds ``value`` and held ``old``: the ERROR to log when another
        process wrote it since this one's previous write (at most once a minute), else
        None."""
        first, self._written = not self._written, True
        if first or old is None:
            return None
        old = old.encode() if isinstance(old, str) else old
        other = _described(old)
        if other.get("instance") == self.instance:
            return None  # this process's, the last value or an older one
        self.conflicts += 1
        self.other = other
        now = self.clock()
        if self._said_at is not None and now - self._said_at < SAY_AGAIN_AFTER:
            return None
        self._said_at = now
        link = self.other.get("link", "?")
        region = self.other.get("region", "?")
        return (
            f"another live process writes this node's presence key (relay:node:"
            f"{self.node_id}), last as link {link}, region {region}: two PoPs share the "
            f"node id {self.node_id!r}, and other nodes carry visitors to the wrong one; "
            "give each PoP its own node_id"
        )


def _described(value: bytes) -> dict[str, str]:
    """The other writer's link and region, as short text (they are logged); {} when its
    value is not what a node writes."""
    try:
        doc = json.loads(value[:4096])
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    return {
        k: cut(v, 128)
        for k, v in ((k, doc.get(k)) for k in ("link", "region", "instance"))
        if isinstance(v, str)
    }
