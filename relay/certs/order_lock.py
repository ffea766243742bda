"""One order per name across the processes of one edge (its workers).

Each worker keeps its own certificate manager, and more than one may want the same name:
the members of a pool on different workers, or a name whose agent moved to another worker
while the first one's renewal was due. Without a lock each would order it, and the CA
counts every order against the account's limits. So an order runs holding
``certs/.orders/<name>.lock`` (flock, released with the descriptor even when a worker is
killed), and the process that got the lock second first looks on disk: the first one's
certificate is usually there, and is taken instead of ordering again.

The lock is polled (non-blocking flock every :data:`POLL` seconds) rather than waited for
in a thread, so a cancelled order (the edge stopping) stops waiting at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

from relay.errors import CertificateError

__all__ = ["POLL", "WAIT", "order_lock"]

#: How often a waiting order tries the lock again.
POLL = 0.2
#: How long an order waits for another process's order of the same name: longer than an
#: ACME order may take (90 s, plus network timeouts).
WAIT = 300.0


@contextlib.asynccontextmanager
async def order_lock(certs_dir: Path, stem: str, *, wait: float = WAIT) -> AsyncIterator[None]:
    """Hold the order lock of the certificate stored as ``stem`` (its file name without
    ``.pem``). Raises CertificateError after ``wait`` seconds without it."""
    directory = certs_dir / ".orders"
    directory.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(directory / f"{stem}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise CertificateError(f"cannot lock the order of {stem}: {exc}") from None
            if loop.time() >= deadline:
                raise CertificateError(
                    f"another worker's order for {stem} has not ended within {wait:.0f} s"
                )
            await asyncio.sleep(POLL)
        yield
    finally:
        os.close(fd)  # releases the lock
