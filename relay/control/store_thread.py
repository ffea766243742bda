"""The store's calls off the event loop, for a store across a network (PostgreSQL).

A database that stops answering without a word (a partition drops every packet: no
reset, no close) would hold a call on the event loop for as long as TCP waits, minutes,
and with it every visitor and agent of the edge. So each call runs on one thread of its
own, in order, and the loop waits for it at most ``CALL_TIMEOUT``: then the call is
ControlUnavailable (new agents are told RLY_504 and retry; live sessions go on). At most
``MAX_WAITING`` calls wait at once; more are refused at once, so a burst of agents during
an outage queues nothing unbounded. The connection's own timeouts (relay/control/store.py)
free the thread once the kernel gives up on the peer.

SQLite stays on the loop: a local file answers in well under a millisecond.
:class:`StoreCalls` is how loop code asks either kind: the edge's control (agents'
credentials, reservations, audit events) and the REST API's routes, on an edge or in
`relay control`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from relay.errors import ControlUnavailable

if TYPE_CHECKING:
    from relay.control.store import Store

T = TypeVar("T")

#: How long the loop waits for one call (an agent's authentication waits this at most).
CALL_TIMEOUT = 5.0
#: Calls waiting at once; more are refused without waiting.
MAX_WAITING = 64
#: How often a store across a network is asked whether it answers (readiness): a check
#: that queried it on the loop would hold the loop as long as the query.
PING_EVERY = 2.0
#: A ping (``SELECT 1``) still unanswered after this long means the store is not ready,
#: before the call's own bound has run out.
PING_WAIT = 1.0


@contextlib.contextmanager
def store_answers() -> Iterator[None]:
    """A store that cannot be reached (PostgreSQL stopped or away, the connection cut) is
    ControlUnavailable, as an unreachable remote control plane is."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        said = " ".join(str(exc.orig or exc).split())  # psycopg's message has two lines
        raise ControlUnavailable(f"the store did not answer: {said}") from None


def _answered(fn: Callable[[], T]) -> T:
    with store_answers():
        return fn()


class StoreThread:
    def __init__(
        self, *, timeout: float = CALL_TIMEOUT, max_waiting: int = MAX_WAITING, threads: int = 1
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="relay-store")
        self._timeout = timeout
        self._max_waiting = max_waiting
        self.waiting = 0
        #: Whether the last call was answered, and what the last failure said.
        self.reachable = True
        self.last_error = ""

    async def call(self, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """``fn()`` on the store's thread; ControlUnavailable when the store fails it, does
        not answer within the timeout (``timeout`` or the thread's own), or too many calls
        wait already."""
        limit = self._timeout if timeout is None else timeout
        if self.waiting >= self._max_waiting:
            raise ControlUnavailable(
                f"the store has {self.waiting} calls unanswered; not asking it more now"
            )
        self.waiting += 1
        try:
            future = asyncio.wrap_future(self._executor.submit(_answered, fn))
            try:
                # A call still queued when the wait ends is cancelled before it runs.
                answer = await asyncio.wait_for(future, limit)
            except TimeoutError:
                raise ControlUnavailable(f"the store did not answer within {limit:g} s") from None
        except ControlUnavailable as exc:
            self.reachable = False
            self.last_error = exc.message
            raise
        finally:
            self.waiting -= 1
        self.reachable = True
        return answer

    def close(self) -> None:
        """Stop taking calls; one stuck on a silent database is left to its timeouts."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class StoreCalls:
    """How code on an event loop asks the store: on the loop itself for SQLite, on store
    threads (:class:`StoreThread`) for a store across a network, whose readiness is then
    pinged every ``PING_EVERY`` seconds in the background once :meth:`start` ran."""

    def __init__(self, store: Store, *, threads: int = 1) -> None:
        self.store = store
        self.thread: StoreThread | None = None
        if store.engine.dialect.name != "sqlite":
            self.thread = StoreThread(threads=threads)
        self._pinger: asyncio.Task[None] | None = None
        self._ping_sent: float | None = None  # when the unanswered ping was sent

    async def __call__(self, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        if self.thread is None:
            with store_answers():
                return fn()
        return await self.thread.call(fn, timeout=timeout)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.thread is not None and self._pinger is None:
            self._pinger = loop.create_task(self._ping_every())

    async def _ping_every(self) -> None:
        while True:
            self._ping_sent = time.monotonic()
            with contextlib.suppress(ControlUnavailable):
                await self(self.store.ping)
            self._ping_sent = None
            await asyncio.sleep(PING_EVERY)

    def ping(self) -> None:
        """Raise unless the store answers: asked now for SQLite, else the last call's
        outcome (the pinger's, at most ``PING_EVERY`` s old once started), or the pinger's
        own call waiting longer than ``PING_WAIT``."""
        if self.thread is None:
            self.store.ping()
        elif not self.thread.reachable:
            raise ConnectionError(self.thread.last_error)
        elif self._ping_sent is not None and time.monotonic() - self._ping_sent > PING_WAIT:
            waited = time.monotonic() - self._ping_sent
            raise ConnectionError(f"the store has not answered a ping for {waited:.1f} s")

    async def close(self) -> None:
        """Stop pinging and taking calls (the store itself stays open: its owner closes it)."""
        if self._pinger is not None:
            self._pinger.cancel()
            await asyncio.gather(self._pinger, return_exceptions=True)
            self._pinger = None
        if self.thread is not None:
            self.thread.close()
