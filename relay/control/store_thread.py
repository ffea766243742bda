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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from relay.errors import ControlUnavailable

T = TypeVar("T")

#: How long the loop waits for one call (an agent's authentication waits this at most).
CALL_TIMEOUT = 5.0
#: Calls waiting at once; more are refused without waiting.
MAX_WAITING = 64


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
    def __init__(self, *, timeout: float = CALL_TIMEOUT, max_waiting: int = MAX_WAITING) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-store")
        self._timeout = timeout
        self._max_waiting = max_waiting
        self.waiting = 0
        #: Whether the last call was answered, and what the last failure said.
        self.reachable = True
        self.last_error = ""

    async def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the store's thread; ControlUnavailable when the store fails it, does
        not answer within the timeout, or too many calls wait already."""
        if self.waiting >= self._max_waiting:
            raise ControlUnavailable(
                f"the store has {self.waiting} calls unanswered; not asking it more now"
            )
        self.waiting += 1
        try:
            future = asyncio.wrap_future(self._executor.submit(_answered, fn))
            try:
                # A call still queued when the wait ends is cancelled before it runs.
                answer = await asyncio.wait_for(future, self._timeout)
            except TimeoutError:
                raise ControlUnavailable(
                    f"the store did not answer within {self._timeout:g} s"
                ) from None
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
