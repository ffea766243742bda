"""Which worker a process is, as the supervisor tells it (one environment variable)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The environment variable the supervisor starts each worker with.
WORKER_ENV = "RELAY_EDGE_WORKER"


@dataclass(frozen=True)
class WorkerPlace:
    """Which worker this process is: its index of ``count``, the descriptor of its
    channel to the supervisor, and the directory of the workers' inboxes."""

    index: int
    count: int
    channel_fd: int
    run_dir: Path

    def to_env(self) -> str:
        return f"{self.index},{self.count},{self.channel_fd},{self.run_dir}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WorkerPlace | None:
        text = (os.environ if environ is None else environ).get(WORKER_ENV, "")
        if not text:
            return None
        index, count, fd, run_dir = text.split(",", 3)
        return cls(int(index), int(count), int(fd), Path(run_dir))
