"""One piece of async work, run one at a time however often it is asked for.

Asked while it runs, it runs once more after (not once per ask): a burst of revocations
or reservation changes, or a flood of cluster events, costs two rounds, not one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Coalesced:
    def __init__(
        self,
        work: Callable[[], Awaitable[None]],
        done: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._work = work
        self._done = done
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def ask(self) -> None:
        running = self._task
        if running is not None and not running.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._until_settled())
        self._task.add_done_callback(self._done)

    @property
    def running(self) -> asyncio.Task[None] | None:
        """The task of the rounds under way, or of the last ones."""
        return self._task

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _until_settled(self) -> None:
        # Bounded: each round begins only if it was asked for during the previous one.
        while True:
            self._again = False
            await self._work()
            if not self._again:
                return
