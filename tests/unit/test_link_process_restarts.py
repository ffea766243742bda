"""relay/agent/link_process.py, what the e2e tests (tests/e2e/test_agent_link_processes.py)
cannot reach quickly: the restart schedule, a child's lines once the agent's end of its
stdout is gone, and ``LinkChild`` with real processes that die at once or that a stop
overtakes while they are being started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from relay.agent import link_process
from relay.agent.client import Agent, AgentOptions, EndpointSpec
from relay.agent.link_process import LinkChild, ToAgent, restart_delay
from relay.errors import RelayError
from tests.ports import free_port

pytestmark = pytest.mark.timeout(60)

REAL_SPAWN = asyncio.create_subprocess_exec


def test_restart_delays_double_from_1s_up_to_30s() -> None:
    assert [restart_delay(n) for n in range(10)] == [1, 1, 2, 4, 8, 16, 30, 30, 30, 30]


def test_a_child_says_nothing_more_once_the_agent_is_gone() -> None:
    """The agent's end of the pipe closed (it was SIGKILLed): ``say`` does not raise (its
    caller may be ``Agent.stop``), and ``gone`` is called once, after its caller ends."""
    uvloop.run(says_nothing_more())


async def says_nothing_more() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    gone: list[str] = []
    with os.fdopen(write_end, "w") as stream:
        to_agent = ToAgent(stream, lambda: gone.append("gone"))
        to_agent.say({"status": "draining 3 live stream(s)"})  # BrokenPipeError inside
        assert to_agent.lost and gone == []  # not from inside the caller
        to_agent.say({"status": "grace period over"})
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert gone == ["gone"]
    # Closing flushed what the stream still held into /dev/null, not into the dead pipe.


@pytest.fixture
def spawned() -> Iterator[list[asyncio.subprocess.Process]]:
    """Processes a test's LinkChild started; each killed by pid afterwards."""
    started: list[asyncio.subprocess.Process] = []
    try:
        yield started
    finally:
        for process in started:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()


def a_link(status: list[str]) -> LinkChild:
    """Link 1 of an agent whose edge is nowhere (a link process started for real would
    try to reach it for ever)."""
    options = AgentOptions("127.0.0.1", free_port(), "tok", (EndpointSpec("tcp", "127.0.0.1", 1),))
    leader = Agent(options, status=status.append)
    return LinkChild(1, options, leader, status.append, lambda child: [])


def test_a_stop_while_the_child_is_being_started_closes_its_stdin(
    monkeypatch: pytest.MonkeyPatch, spawned: list[asyncio.subprocess.Process]
) -> None:
    """The agent's stop comes while ``create_subprocess_exec`` runs (no process to tell
    yet): the child gets no description and its stdin ends at once, so it exits and
    ``run`` returns. Before, it got its description and ran a whole session."""
    uvloop.run(stop_while_started(monkeypatch, spawned))
    assert [p.returncode for p in spawned] == [0]


async def stop_while_started(
    monkeypatch: pytest.MonkeyPatch, spawned: list[asyncio.subprocess.Process]
) -> None:
    status: list[str] = []
    child = a_link(status)

    async def spawn(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        child.stop()  # the stop overtakes the start
        process = await REAL_SPAWN(*args, **kwargs)
        spawned.append(process)
        return process

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)
    await asyncio.wait_for(child.run(), 20)


async def run_a_link(status: list[str]) -> None:
    await a_link(status).run()


def dying_at_once(spawned: list[asyncio.subprocess.Process]) -> Any:
    """A create_subprocess_exec whose processes exit at once, status 3, saying nothing."""

    async def spawn(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await REAL_SPAWN(sys.executable, "-c", "raise SystemExit(3)", **kwargs)
        spawned.append(process)
        return process

    return spawn


def test_children_dying_young_end_the_agent_with_rly_404(
    monkeypatch: pytest.MonkeyPatch, spawned: list[asyncio.subprocess.Process]
) -> None:
    monkeypatch.setattr(asyncio, "create_subprocess_exec", dying_at_once(spawned))
    monkeypatch.setattr(link_process, "RESTART_DELAY", 0.01)
    monkeypatch.setattr(link_process, "MAX_RESTART_DELAY", 0.04)
    status: list[str] = []
    with pytest.raises(RelayError) as raised:
        uvloop.run(asyncio.wait_for(run_a_link(status), 30))
    assert raised.value.code == "RLY_404"
    assert "8 times in a row (last exit status 3)" in raised.value.message
    assert len(spawned) == 8
    waits = [line.split(" in ", 1)[1].split("s ", 1)[0] for line in status]
    assert waits == ["0.01", "0.02", "0.04", "0.04", "0.04", "0.04", "0.04"]


def test_a_child_that_lived_long_is_started_again_after_1s_for_ever(
    monkeypatch: pytest.MonkeyPatch, spawned: list[asyncio.subprocess.Process]
) -> None:
    """Every child lived "long" (YOUNG is 0 here): no backoff, no end; a stop during the
    wait before the next start ends ``run`` at once."""
    uvloop.run(lived_long(monkeypatch, spawned))


async def lived_long(
    monkeypatch: pytest.MonkeyPatch, spawned: list[asyncio.subprocess.Process]
) -> None:
    monkeypatch.setattr(asyncio, "create_subprocess_exec", dying_at_once(spawned))
    monkeypatch.setattr(link_process, "RESTART_DELAY", 0.01)
    monkeypatch.setattr(link_process, "YOUNG", 0.0)
    status: list[str] = []
    child = a_link(status)
    task = asyncio.ensure_future(child.run())
    try:
        for _ in range(400):  # at most 20 s
            if len(status) >= 10:
                break
            await asyncio.sleep(0.05)
        assert len(status) >= 10, status
        assert all("starting it again in 0.01s" in line for line in status), status
        monkeypatch.setattr(link_process, "RESTART_DELAY", 30.0)
        for _ in range(400):  # until it waits the long wait
            if "in 30s" in status[-1]:
                break
            await asyncio.sleep(0.05)
        child.stop()
        await asyncio.wait_for(task, 2)
    finally:
        task.cancel()
