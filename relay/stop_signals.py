"""SIGTERM and SIGINT as operators and terminals use them: the first asks a process to
stop gracefully (drain), any later one to stop now."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


def install_stop_handlers(stop: Callable[[], None], now: Callable[[], None] | None = None) -> None:
    """``stop()`` on the first SIGTERM or SIGINT; on each later one ``now()`` (or
    ``stop()`` again when there is no ``now``)."""
    loop = asyncio.get_running_loop()
    seen = 0

    def on_signal() -> None:
        nonlocal seen
        seen += 1
        (stop if seen == 1 or now is None else now)()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
