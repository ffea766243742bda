"""A channel (relay/cluster/channel.py) queues at most MAX_QUEUED bytes for a peer that
reads nothing (SIGSTOPped, its loop stuck). The supervisor's end then closes, freeing the
queue, and the supervisor SIGKILLs that worker, whose restart gets the whole table; a
worker's end (without ``on_full``) drops what does not fit and logs it once per stall.
A worker's start, a ``where`` per name for many thousands of names, is far below."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from pathlib import Path

import pytest

from relay.cluster.channel import MAX_QUEUED, Channel
from relay.cluster.supervisor import Supervisor


def where(i: int) -> dict[str, object]:
    """What Supervisor._tell_where sends for one name."""
    return {"op": "where", "key": f"http:name-{i}.edge.example.com", "workers": [1, 2, 3]}


def test_a_peer_that_reads_nothing_does_not_grow_the_queue_without_bound() -> None:
    async def main() -> tuple[int, bool, int]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        full: list[int] = []
        channel = Channel(ours, loop, lambda m: None, lambda: None, on_full=lambda: full.append(1))
        try:
            sent = 0
            while not channel.closed and sent < 2_000_000:
                channel.send(where(sent))
                sent += 1
            channel.send(where(sent))  # closed: nothing more is queued
            return sent, channel.closed, len(full)
        finally:
            channel.close()
            theirs.close()

    sent, closed, full = asyncio.run(main())
    assert closed, f"{sent} messages queued for a peer that reads none"
    assert full == 1
    assert sent * len(str(where(0))) >= MAX_QUEUED // 2  # the bound is in bytes, not tiny


def test_a_start_with_a_where_for_each_of_100000_names_fits() -> None:
    async def main() -> bool:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        channel = Channel(ours, loop, lambda m: None, lambda: None, on_full=lambda: None)
        try:
            for i in range(100_000):
                channel.send(where(i))
            return channel.closed
        finally:
            channel.close()
            theirs.close()

    assert not asyncio.run(main())


def test_a_workers_end_drops_and_logs_once_then_flows_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> tuple[int, int, list[dict[str, object]]]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        heard: list[dict[str, object]] = []
        channel = Channel(ours, loop, lambda m: None, lambda: None, max_queued=4096)
        peer = None
        try:
            sent = 0
            while not channel.dropped:  # the kernel's buffer, then the queue, fill up
                channel.send(where(sent))
                sent += 1
            for i in range(10):
                channel.send(where(sent + i))
            dropped = channel.dropped
            peer = Channel(theirs, loop, heard.append, lambda: None)  # it reads again
            for _ in range(100):
                await asyncio.sleep(0.01)
                if not channel.queued:
                    break
            channel.send({"op": "where", "key": "http:after.example", "workers": []})
            await asyncio.sleep(0.05)
            return dropped, channel.dropped, heard
        finally:
            channel.close()
            if peer is not None:
                peer.close()
            else:
                theirs.close()

    with caplog.at_level(logging.WARNING, "relay.cluster"):
        dropped, after, heard = asyncio.run(main())
    assert dropped == 11 and after == 0
    assert heard[-1]["key"] == "http:after.example"
    assert caplog.text.count("reads nothing") == 1
    assert "11 messages were dropped" in caplog.text


STUCK_WORKER = r"""
import json, os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
index, count, fd, run_dir = os.environ["RELAY_EDGE_WORKER"].split(",", 3)
channel = socket.socket(fileno=int(fd))
channel.send(json.dumps({"op": "ready", "banner": ["ok"]}).encode())
while True:
    time.sleep(0.02)  # its loop is stuck: it never reads its channel
"""


def test_the_supervisor_kills_a_worker_that_reads_nothing_and_starts_it_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> tuple[int, int | None, int]:
        ready = asyncio.Event()
        (tmp_path / "run").mkdir()
        supervisor = Supervisor(
            [sys.executable, "-c", STUCK_WORKER],
            1,
            drain_timeout=1.0,
            on_ready=lambda banner: ready.set(),
            run_dir=tmp_path / "run",
        )
        stopped, hangup = asyncio.Event(), asyncio.Event()
        run = asyncio.ensure_future(supervisor.run(stopped, hangup))
        await asyncio.wait_for(ready.wait(), 10)
        worker = supervisor.workers[0]
        stuck = worker.process
        assert stuck is not None and worker.channel is not None
        worker.channel.max_queued = 64 * 1024  # reached in a test's time
        for i in range(20_000):  # binds and unbinds elsewhere, broadcast to it
            if worker.channel is None or worker.channel.closed:
                break
            worker.channel.send(where(i))
        for _ in range(500):
            await asyncio.sleep(0.02)
            if worker.process is not stuck and worker.ready:
                break
        restarted = worker.restarts
        stopped.set()
        code = await asyncio.wait_for(run, 10)
        return restarted, stuck.returncode, code

    with caplog.at_level(logging.WARNING, "relay.cluster"):
        restarted, stuck_code, code = asyncio.run(main())
    assert stuck_code == -9, "the stuck worker was not killed"
    assert restarted == 1, "the stuck worker was not started again"
    assert caplog.text.count("reads nothing from its channel") == 1
    assert code == 0  # the restarted worker drained
