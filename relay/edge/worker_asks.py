"""The API of any worker speaks for the whole edge (``--workers N``): it lists every
worker's sessions and endpoints, and stops or restarts a session on the worker that holds
it. (In a cluster each worker is a node of its own, and relay/edge/cluster_asks.py asks
its siblings with the other nodes, through Redis.)

The asks are the cluster's (:class:`~relay.edge.cluster_asks.ClusterAsks`), carried by
the supervisor instead of Redis: :class:`SiblingWire` is what ClusterAsks needs of
presence. A worker sends ``{"op": "ask", "event": …}`` on its channel; the supervisor
passes it to every other worker, and answers at once for one that is down (nothing, so
the asker does not wait for it). Each answer comes back as ``{"op": "answer", "to":
<asker>, …}``, in parts of at most :data:`PART` characters: a channel message is at most
64 KiB, a list of 10,000 sessions several megabytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.cluster.channel import Message

log = logging.getLogger("relay.edge.workers")

#: Characters of an answer's JSON per message. JSON text escapes to at most twice its
#: length inside another JSON string (quotes and backslashes; json.dumps leaves no
#: control or non-ASCII character), so a part stays under the channel's 64 KiB.
PART = 24 * 1024
#: Parts of one answer (48 MiB): a larger one is answered as nothing, and logged.
MAX_PARTS = 2048
#: Answers being put together at once; past it the oldest are dropped (asks time out).
MAX_ASSEMBLING = 64


@dataclass(frozen=True)
class Sibling:
    node_id: str


class SiblingWire:
    """Presence's part in ClusterAsks, between the workers of one edge."""

    def __init__(self, index: int, count: int, send: Callable[[Message], None]) -> None:
        self.index = index
        self.count = count
        self._send = send
        self._parts: dict[tuple[str, str], list[str]] = {}

    def nodes(self) -> list[Sibling]:
        return [Sibling(str(i)) for i in range(self.count) if i != self.index]

    async def publish_event(self, event: dict[str, str]) -> None:
        self._send({"op": "ask", "event": event})

    async def publish_to(self, node_id: str, event: dict[str, str]) -> None:
        body = event["body"]
        parts = [body[i : i + PART] for i in range(0, len(body), PART)] or [""]
        if len(parts) > MAX_PARTS:
            log.warning("an answer to worker %s of %d bytes is too large", node_id, len(body))
            parts = ["null"]
        for i, part in enumerate(parts):
            piece = {**event, "body": part}
            self._send(
                {"op": "answer", "to": int(node_id), "event": piece, "part": i, "parts": len(parts)}
            )

    def take(self, message: Message) -> dict[str, Any] | None:
        """One part of an answer: the whole answer once its last part is in, else None."""
        event = message.get("event")
        if not isinstance(event, dict):
            return None
        parts, part = int(message.get("parts", 1)), int(message.get("part", 0))
        if parts == 1 and part == 0:
            return event
        key = (str(event.get("ask", "")), str(event.get("node", "")))
        got = self._parts.get(key)
        if got is None:
            if len(self._parts) >= MAX_ASSEMBLING:
                del self._parts[next(iter(self._parts))]
            got = self._parts[key] = []
        if not 1 < parts <= MAX_PARTS or part != len(got):  # out of order: never, but bounded
            del self._parts[key]
            return None
        got.append(str(event.get("body", "")))
        if len(got) < parts:
            return None
        del self._parts[key]
        return {**event, "body": "".join(got)}
