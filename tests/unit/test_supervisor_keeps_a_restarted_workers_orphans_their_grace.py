"""The supervisor's reclaim grace for a dead worker (relay/cluster/supervisor.py): the
timer armed at a worker's death frees only what that death orphaned, never a name its
restarted worker took back and then orphaned afresh. Driven without processes: the
worker's channel and process are stand-ins, its messages are handed to the supervisor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from relay.cluster import supervisor as supervisor_module
from relay.cluster.channel import Message
from relay.cluster.supervisor import Supervisor

GRACE = 0.3
KEY = "http:a.example"


class RecordingChannel:
    """Stands in for a worker's channel: keeps what the supervisor sends it."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def close(self) -> None:
        pass

    def verdicts(self) -> list[bool]:
        return [bool(m["ok"]) for m in self.sent if m["op"] == "claimed"]


class DeadProcess:
    """A worker process that has already exited (SIGKILL)."""

    pid = 4242
    returncode = -9

    async def wait(self) -> int:
        return self.returncode


def serving_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Supervisor:
    """Two workers that both served; a restart installs a fresh channel, no process."""
    supervisor = Supervisor(
        ["relay", "edge"],
        2,
        drain_timeout=1.0,
        on_ready=lambda banner: None,
        run_dir=tmp_path,
        reclaim_grace=GRACE,
    )

    async def restart(worker: Any) -> None:
        worker.channel = RecordingChannel()
        worker.started = time.monotonic()

    monkeypatch.setattr(supervisor, "_start", restart)
    # The restart comes well inside the grace, as it does with the real 0.2 s and 60 s.
    monkeypatch.setattr(supervisor_module, "RESTART_FIRST", 0.01)
    for worker in supervisor.workers:
        worker.channel = RecordingChannel()  # type: ignore[assignment]
        supervisor._message(worker, {"op": "ready", "banner": []})
    return supervisor


def claim(supervisor: Supervisor, index: int, token: str, agent: str) -> bool:
    """Worker ``index`` asks to bind KEY for ``agent``; the supervisor's verdict."""
    worker = supervisor.workers[index]
    channel = worker.channel
    assert isinstance(channel, RecordingChannel)
    supervisor._message(
        worker, {"op": "claim", "id": len(channel.sent), "key": KEY, "token": token, "agent": agent}
    )
    return channel.verdicts()[-1]


def report(supervisor: Supervisor, index: int, token: str, agent: str, live: bool) -> None:
    supervisor._message(
        supervisor.workers[index],
        {"op": "state", "key": KEY, "token": token, "members": [[agent, 0, False]], "live": live},
    )


@pytest.mark.asyncio
async def test_an_earlier_deaths_grace_does_not_free_a_name_orphaned_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor = serving_supervisor(tmp_path, monkeypatch)
    assert claim(supervisor, 1, "t1", "agent1")
    report(supervisor, 1, "t1", "agent1", live=True)

    # Worker 1 crashes and is started again; the agent comes back to it and binds the
    # name again, then its link drops: worker 1 reports the name orphaned.
    await supervisor._watch(supervisor.workers[1], DeadProcess())  # type: ignore[arg-type]
    assert claim(supervisor, 1, "t1", "agent1")
    report(supervisor, 1, "t1", "agent1", live=True)
    report(supervisor, 1, "t1", "agent1", live=False)

    # The first death's grace runs out; the fresh orphaning's has only just begun.
    await asyncio.sleep(GRACE * 2)
    assert supervisor.table.holders(KEY) == {1: False}
    assert not claim(supervisor, 0, "t2", "agent2")
    # And the agent, back on any worker, still takes its name.
    assert claim(supervisor, 0, "t1", "agent1")


@pytest.mark.asyncio
async def test_a_dead_workers_name_is_free_once_its_grace_ran_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor = serving_supervisor(tmp_path, monkeypatch)
    assert claim(supervisor, 1, "t1", "agent1")

    await supervisor._watch(supervisor.workers[1], DeadProcess())  # type: ignore[arg-type]
    assert not claim(supervisor, 0, "t2", "agent2")  # within the grace
    await asyncio.sleep(GRACE * 2)
    assert supervisor.table.held_keys() == []
    assert claim(supervisor, 0, "t2", "agent2")
