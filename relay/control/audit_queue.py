"""Audit events an edge records while what keeps them is across a network: a remote
control plane, or a PostgreSQL store. Recording never waits: each event is queued, and a
task sends the queue in order, in batches, off the event loop. While the far side does
not take them they wait (said once per outage); past ``MAX_QUEUED_EVENTS`` the oldest
are dropped and counted, so an outage costs memory up to a bound, never the edge.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from relay.errors import RelayError

log = logging.getLogger("relay.control.for_edge")

#: Audit events kept while they cannot be written.
MAX_QUEUED_EVENTS = 10_000
#: How long to wait before sending again after a failure.
RETRY_AFTER = 1.0

Event = dict[str, Any]


class AuditQueue:
    def __init__(
        self, send: Callable[[list[Event]], Awaitable[None]], *, batch: int, what: str
    ) -> None:
        """``send(batch)`` writes a batch of at most ``batch`` events, all or none, or
        raises RelayError; ``what`` names the far side in the log."""
        self._send = send
        self._batch = batch
        self._what = what
        self._events: deque[Event] = deque()
        self.dropped = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._events)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._run())

    def put(self, actor: str, action: str, target: str, detail: Mapping[str, Any] | None) -> None:
        if len(self._events) >= MAX_QUEUED_EVENTS:
            self._events.popleft()
            self.dropped += 1
        self._events.append(
            {"actor": actor, "action": action, "target": target, "detail": dict(detail or {})}
        )
        self._wake.set()

    async def _run(self) -> None:
        waiting_said = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._events:
                batch = [self._events[i] for i in range(min(self._batch, len(self._events)))]
                try:
                    await self._send(batch)
                except RelayError as exc:
                    if not waiting_said:
                        log.warning("%s: %d audit events wait: %s", self._what, len(self), exc)
                        waiting_said = True
                    await asyncio.sleep(RETRY_AFTER)
                    continue
                if waiting_said:
                    log.info("%s: audit events are written again", self._what)
                    waiting_said = False
                # What was sent leaves the queue; events dropped meanwhile were older.
                sent = {id(event) for event in batch}
                while self._events and id(self._events[0]) in sent:
                    self._events.popleft()

    async def flush(self, timeout: float = 5.0) -> None:
        """Send what is queued (at shutdown), for at most ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._events and loop.time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
