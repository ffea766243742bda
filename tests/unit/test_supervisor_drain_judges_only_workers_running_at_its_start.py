"""The supervisor's drain (relay/cluster/supervisor.py ``Supervisor.stop``) is judged by the
workers running when it began: one that crashed earlier and waits for its restart
(RESTART_FIRST .. RESTART_MAX) does not make a clean drain exit DRAIN_FAILED (systemd
would mark the unit failed). Stand-in processes, no children."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.cluster.supervisor import Supervisor


class Process:
    def __init__(self, pid: int, returncode: int | None, drained: int = 0) -> None:
        self.pid = pid
        self.returncode = returncode
        self.drained = drained

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            self.returncode = self.drained  # drains and exits with this

    async def wait(self) -> int:
        while self.returncode is None:
            await asyncio.sleep(0.01)
        return self.returncode


def drain(tmp_path: Path, crashed: Process, serving: Process) -> bool:
    async def main() -> bool:
        supervisor = Supervisor(
            ["relay", "edge"], 2, drain_timeout=1.0, on_ready=lambda b: None, run_dir=tmp_path
        )
        supervisor.workers[0].process = crashed  # type: ignore[assignment]
        supervisor.workers[1].process = serving  # type: ignore[assignment]
        supervisor.workers[1].ready = True
        return await supervisor.stop()

    return asyncio.run(main())


def test_a_worker_crashed_before_the_drain_does_not_fail_the_drain(tmp_path: Path) -> None:
    # Worker 0 was OOM-killed and its restart is due; worker 1 serves and drains cleanly.
    assert drain(tmp_path, Process(100, -9), Process(101, None)), "a clean drain reported failed"


def test_a_running_worker_whose_drain_fails_still_fails_it(tmp_path: Path) -> None:
    assert not drain(tmp_path, Process(100, -9), Process(101, None, drained=1))
