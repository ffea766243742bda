"""The supervisor signals a worker only once it reported ready (relay/cluster/supervisor.py):
before that, ``relay edge`` is importing and reading its file, its handlers are not
installed, and SIGHUP's and SIGTERM's default action ends it. A reload or a drain asked
meanwhile reaches it when it is ready. The stand-in worker is a plain Python child that,
like ``relay edge``, installs its handlers after its imports (0.6 s here), then says it is
ready on its channel, and writes what it heard to a file when it exits."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from relay.cluster.supervisor import Supervisor

WORKER = r"""
import json, os, signal, socket, sys, time
time.sleep(float(sys.argv[2]))  # imports and the configuration file, as relay edge does
heard = []
signal.signal(signal.SIGHUP, lambda *_: heard.append("hup"))
signal.signal(signal.SIGTERM, lambda *_: heard.append("term"))
index, count, fd, run_dir = os.environ["RELAY_EDGE_WORKER"].split(",", 3)
channel = socket.socket(fileno=int(fd))
channel.send(json.dumps({"op": "ready", "banner": ["ok"]}).encode())
while "term" not in heard:
    time.sleep(0.02)
with open(sys.argv[1], "w") as out:
    out.write(" ".join(heard))
"""


def supervisor(tmp_path: Path, ready: asyncio.Event, start_takes: float = 0.6) -> Supervisor:
    (tmp_path / "run").mkdir()
    return Supervisor(
        [sys.executable, "-c", WORKER, str(tmp_path / "heard"), str(start_takes)],
        1,
        drain_timeout=1.0,
        on_ready=lambda banner: ready.set(),
        run_dir=tmp_path / "run",
    )


def test_a_reload_while_a_worker_starts_reaches_it_once_it_is_ready(tmp_path: Path) -> None:
    async def main() -> int:
        ready = asyncio.Event()
        edge = supervisor(tmp_path, ready)
        stopped, hangup = asyncio.Event(), asyncio.Event()
        run = asyncio.ensure_future(edge.run(stopped, hangup))
        await asyncio.sleep(0.2)  # the worker runs, but is still "importing"
        hangup.set()  # e.g. logrotate's postrotate: systemctl reload relay-edge
        await asyncio.wait_for(ready.wait(), 5)
        await asyncio.sleep(0.2)  # its SIGHUP, sent when it said ready, arrives
        stopped.set()
        return await asyncio.wait_for(run, 10)

    code = asyncio.run(main())
    assert code == 0, f"the edge ended with {code}: its starting worker was killed by SIGHUP"
    assert (tmp_path / "heard").read_text() == "hup term"


def test_a_drain_while_a_worker_starts_drains_it_once_it_is_ready(tmp_path: Path) -> None:
    async def main() -> int:
        ready = asyncio.Event()
        edge = supervisor(tmp_path, ready)
        stopped, hangup = asyncio.Event(), asyncio.Event()
        run = asyncio.ensure_future(edge.run(stopped, hangup))
        await asyncio.sleep(0.2)
        stopped.set()  # systemctl stop while the edge starts
        return await asyncio.wait_for(run, 10)

    code = asyncio.run(main())
    assert code == 0, f"the drain ended with {code}: its starting worker was killed by SIGTERM"
    assert (tmp_path / "heard").read_text() == "term", "the worker did not drain by itself"


def test_a_worker_never_ready_that_a_stop_signal_ended_does_not_fail_the_drain(
    tmp_path: Path,
) -> None:
    """The service manager signals the whole group: a worker still importing dies of
    its SIGTERM. It held nothing, so the drain is clean."""

    async def main() -> int:
        ready = asyncio.Event()
        edge = supervisor(tmp_path, ready, start_takes=30)
        stopped, hangup = asyncio.Event(), asyncio.Event()
        run = asyncio.ensure_future(edge.run(stopped, hangup))
        await asyncio.sleep(0.2)
        stopped.set()
        await asyncio.sleep(0.05)  # the supervisor's own SIGTERM is seen first
        process = edge.workers[0].process
        assert process is not None
        os.kill(process.pid, signal.SIGTERM)
        code = await asyncio.wait_for(run, 10)
        assert process.returncode == -signal.SIGTERM
        return code

    assert asyncio.run(main()) == 0
