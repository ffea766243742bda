"""``relay edge --workers N``: the supervisor of N edge processes.

It holds no agent and no visitor. It starts each worker (the same ``relay edge``
command, told which worker it is by one environment variable and given one end of a
socket pair), keeps the table of who holds which endpoint (claims.py) and tells every
worker where each name is live, passes SIGHUP (reload) and SIGTERM (drain) on to every
worker, and starts a worker again when it dies: its agents reconnect — to any worker,
the kernel chooses — and bind their endpoints again.

A worker is signalled only once it said ``ready``: until then (imports, its file, its
listeners) it may not have its handlers yet, and SIGHUP's and SIGTERM's default is to
end it. A reload asked meanwhile reaches it as SIGHUP when it is ready, a drain as
SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from relay.cluster.channel import Channel, Message, socket_pair
from relay.cluster.claims import ClaimTable, Member, WorkerDown
from relay.cluster.place import WORKER_ENV, WorkerPlace
from relay.cluster.supervisor_admin import WorkerView
from relay.errors import RelayError

if TYPE_CHECKING:
    from relay.config import EdgeConfig

log = logging.getLogger("relay.cluster")

#: A worker that dies is started again after this long, doubled while it keeps dying
#: young (within RESTART_RESET of its start), up to RESTART_MAX.
RESTART_FIRST = 0.2
RESTART_MAX = 10.0
RESTART_RESET = 30.0
#: After a drain's own timeout, how long workers get to exit before they are killed.
EXIT_GRACE = 15.0
#: The supervisor's exit code when a worker had to be killed, or exited with an error,
#: during the drain.
DRAIN_FAILED = 1
#: A worker's report names at most this many members of one key (links and pool).
MAX_MEMBERS_PER_KEY = 1024
#: How a process that was never ready may have ended in a drain and still count as a
#: clean stop: a stop signal that reached it before its handlers (the service manager
#: signals the whole group; Ctrl-C the terminal's). It held no agent and no visitor.
STOPPED_UNREADY = frozenset((-signal.SIGTERM, -signal.SIGINT))


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    started: float = 0.0
    ready: bool = False
    #: A reload was asked while this process was not ready: SIGHUP when it is.
    reload_due: bool = False
    banner: list[str] = field(default_factory=list)
    delay: float = RESTART_FIRST
    restarts: int = 0


def make_run_dir() -> Path:
    """A directory only this user can enter, for the workers' inboxes: short, because a
    Unix socket's path is at most 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="relay-edge-"))


def reserve_port(address: tuple[str, int]) -> socket.socket:
    """Bind (not listen) ``address`` with SO_REUSEPORT, so port 0 becomes one port every
    worker then binds too; held until the edge ends so nobody else takes it."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host or "0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    return sock


class Supervisor:
    """``argv``: the command that starts one worker; ``on_ready(banner)``: once, when
    every worker first serves (the banner of worker 0)."""

    def __init__(
        self,
        argv: list[str],
        count: int,
        *,
        drain_timeout: float,
        on_ready: Callable[[list[str]], None],
        run_dir: Path | None = None,
        reclaim_grace: float = 60.0,
        reload_config: Callable[[], EdgeConfig] | None = None,
    ) -> None:
        """``reclaim_grace``: how long a dead worker's names wait for their agents.
        ``reload_config``: the configuration a reload reads (the workers' file and flags),
        of which the supervisor applies ``drain_timeout`` and ``reclaim_grace`` too."""
        self.argv = argv
        self.count = count
        self.drain_timeout = drain_timeout
        self.reclaim_grace = reclaim_grace
        self.reload_config = reload_config
        self.on_ready = on_ready
        self.run_dir = run_dir or make_run_dir()
        self.table = ClaimTable()
        self.workers = [_Worker(i) for i in range(count)]
        self._announced = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        #: A worker that exits before every worker first served: the edge cannot start
        #: (a port in use, a bad file). Its exit code becomes the supervisor's.
        self.failed: int | None = None
        self._failed = asyncio.Event()

    async def run(self, stopped: asyncio.Event, hangup: asyncio.Event) -> int:
        """Run the workers until ``stopped``; pass each ``hangup`` on as SIGHUP. Returns
        the exit code: 0, a worker's that failed to start, or ``DRAIN_FAILED`` when the
        drain did not end with every worker exiting cleanly by itself."""
        self._loop = asyncio.get_running_loop()
        try:
            for worker in self.workers:
                await self._start(worker)
            while not stopped.is_set() and not self._failed.is_set():
                waits = [
                    asyncio.ensure_future(stopped.wait()),
                    asyncio.ensure_future(hangup.wait()),
                    asyncio.ensure_future(self._failed.wait()),
                ]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for wait in waits:
                    wait.cancel()
                if hangup.is_set() and not stopped.is_set():
                    hangup.clear()
                    self.reload()
            drained = await self.stop()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.failed:
            return self.failed
        # A drain that had to kill a worker, or that a worker ended with an error, is not
        # a clean stop: say so in the exit code (systemd marks the unit failed).
        return 0 if drained else DRAIN_FAILED

    def views(self) -> list[WorkerView]:
        """Each worker now, for the supervisor's admin listener."""
        return [
            WorkerView(
                w.index,
                w.process.pid if w.process is not None and w.process.returncode is None else None,
                w.restarts,
            )
            for w in self.workers
        ]

    def _running(self) -> list[_Worker]:
        return [w for w in self.workers if w.process is not None and w.process.returncode is None]

    def signal_all(self, signum: int) -> None:
        """``signum`` to every running worker, ready or not (SIGKILL)."""
        for worker in self._running():
            _signal(worker, signum)

    def reload(self) -> None:
        """SIGHUP: the supervisor's own settings, then every ready worker; one still
        starting gets its SIGHUP when it reports ready (it may have read the file
        before it changed)."""
        self._reload_settings()
        log.info("reloading: SIGHUP to every worker")
        for worker in self._running():
            if worker.ready:
                _signal(worker, signal.SIGHUP)
            else:
                worker.reload_due = True

    def _reload_settings(self) -> None:
        """What of the configuration the supervisor itself applies: the drain's deadline
        and a dead worker's reclaim grace, as the workers apply them on a reload. A file
        that does not load keeps the running values (each worker says why, too)."""
        if self.reload_config is None:
            return
        try:
            config = self.reload_config()
        except RelayError as err:
            reason = " ".join(err.one_line().split())
            log.error(
                "supervisor: reload refused, drain_timeout and reclaim_grace stay: %s", reason
            )
            return
        except Exception:  # a reload's bug must not end the edge
            log.exception("supervisor: reload failed; drain_timeout and reclaim_grace stay")
            return
        if (config.drain_timeout, config.reclaim_grace) != (self.drain_timeout, self.reclaim_grace):
            log.info(
                "supervisor: drain_timeout %s, reclaim_grace %s",
                config.drain_timeout,
                config.reclaim_grace,
            )
        self.drain_timeout = config.drain_timeout
        self.reclaim_grace = config.reclaim_grace

    async def stop(self) -> bool:
        """Drain: SIGTERM to every ready worker (each drains its own agents and visitors),
        and to each other one when it reports ready; kill what has not exited once the
        drain's time and a grace have passed. Whether every worker running when the drain
        began exited by itself, with 0. A worker that died earlier and waits for its
        restart is not judged; nor is one never ready that a stop signal ended (one sent
        to the whole group): it had nothing to drain."""
        self._stopping = True
        running = [(w, w.process) for w in self._running() if w.process is not None]
        for worker, _ in running:
            if worker.ready:
                _signal(worker, signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for _, p in running]
        clean = True
        if waits:
            _, late = await asyncio.wait(waits, timeout=self.drain_timeout + EXIT_GRACE)
            if late:
                log.error("%d worker(s) did not exit after the drain; killing them", len(late))
                self.signal_all(signal.SIGKILL)
                await asyncio.wait(waits, timeout=5)
                clean = False
            failed = [
                p.pid
                for w, p in running
                if p.returncode not in (0, None)
                and not (p.returncode in STOPPED_UNREADY and not w.ready)
            ]
            if failed and clean:
                log.error("worker(s) %s ended their drain with an error", failed)
            clean = clean and not failed
        for task in list(self._watchers):
            task.cancel()
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.close()
        return clean

    # --- workers ----------------------------------------------------------------------

    async def _start(self, worker: _Worker) -> None:
        loop = self._loop
        assert loop is not None
        ours, theirs = socket_pair()
        place = WorkerPlace(worker.index, self.count, theirs.fileno(), self.run_dir)
        env = dict(os.environ)
        env[WORKER_ENV] = place.to_env()
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv, env=env, pass_fds=(theirs.fileno(),)
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if self._stopping:
            # A restart that crossed the drain's start: the drain does not wait for it,
            # and it holds nothing yet.
            ours.close()
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return
        worker.process = process
        worker.started = time.monotonic()
        worker.ready = False
        worker.reload_due = False  # it reads the file as it is now
        worker.channel = Channel(
            ours,
            loop,
            functools.partial(self._message, worker),
            lambda: None,  # its exit is watched on the process
            on_full=functools.partial(self._stuck, worker, process),
        )
        # What every other worker holds, before the new one serves anything.
        for key in self.table.held_keys():
            workers = self.table.live_workers(key)
            if workers:
                worker.channel.send({"op": "where", "key": key, "workers": workers})
        watcher = loop.create_task(self._watch(worker, process))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        # Its names wait for their agents (reconnecting to any worker) for the grace an
        # orphaned endpoint gets on one edge; nobody else's agent takes them meanwhile.
        # The timer is for this death only: what the restarted worker orphans afresh
        # waits out a grace of its own.
        down = self.table.worker_down(worker.index)
        for key in down.changed:
            self._tell_where(key)
        loop = asyncio.get_running_loop()
        loop.call_later(self.reclaim_grace, self._forget, down)
        if self._stopping:
            return
        if not self._announced:
            log.error(
                "worker %d exited with %s before the edge served; stopping", worker.index, code
            )
            self.failed = code or 1
            self._failed.set()
            return
        lived = time.monotonic() - worker.started
        worker.delay = RESTART_FIRST if lived > RESTART_RESET else worker.delay
        log.warning(
            "worker %d (pid %d) exited with %s after %.1fs; starting it again in %.1fs",
            worker.index,
            process.pid,
            code,
            lived,
            worker.delay,
        )
        while not self._stopping:
            await asyncio.sleep(worker.delay)
            worker.delay = min(worker.delay * 2, RESTART_MAX)
            if self._stopping:
                return
            try:
                await self._start(worker)
                worker.restarts += 1
            except (OSError, ValueError) as exc:  # out of descriptors, memory, processes
                log.error("worker %d could not be started: %s; trying again", worker.index, exc)
                continue
            return

    def _stuck(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        """Its channel is full: alive but reading nothing (SIGSTOPped, its loop stuck).
        Killed by pid, so its watcher starts it again, with the whole table."""
        log.error(
            "worker %d (pid %d) reads nothing from its channel; killing it to start it again",
            worker.index,
            process.pid,
        )
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    def _forget(self, down: WorkerDown) -> None:
        for key in self.table.forget_orphans(down):
            self._tell_where(key)

    # --- messages -----------------------------------------------------------------------

    def _message(self, worker: _Worker, message: Message) -> None:
        op = message["op"]
        try:
            if op == "claim":
                self._claim(worker, message)
            elif op == "state":
                self._state(worker, message)
            elif op == "ready":
                self._ready(worker, message)
            elif op == "ask":
                self._ask(worker, message)
            elif op == "answer":
                self._pass_answer(message)
            else:
                log.warning("worker %d sent an unknown message: %s", worker.index, op)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("worker %d sent a malformed %s message: %s", worker.index, op, exc)

    def _ask(self, worker: _Worker, message: Message) -> None:
        """An API's ask of the other workers (relay/edge/worker_asks.py): passed to each,
        answered at once for one that is down (it holds nothing now)."""
        event = message["event"]
        ask_id = str(event["ask"])
        if event.get("op") == "reload":
            # The API's reload for every node: the workers read their file again, so
            # the supervisor takes its part as on SIGHUP.
            self._reload_settings()
        for other in self.workers:
            if other is worker:
                continue
            if other.channel is not None:
                other.channel.send({"op": "ask", "event": event})
            elif worker.channel is not None:
                nothing = {"event": "answer", "ask": ask_id, "node": str(other.index)}
                worker.channel.send(
                    {"op": "answer", "to": worker.index, "event": {**nothing, "body": "null"}}
                )

    def _pass_answer(self, message: Message) -> None:
        to = int(message["to"])
        if 0 <= to < len(self.workers):
            channel = self.workers[to].channel
            if channel is not None:
                channel.send(message)

    def _claim(self, worker: _Worker, message: Message) -> None:
        key = str(message["key"])
        member = Member(
            worker.index,
            str(message["agent"]),
            int(message.get("link", 0)),
            bool(message.get("pooled", False)),
        )
        verdict = self.table.claim(
            key,
            str(message["token"]),
            member,
            _optional(message, "rewrite"),
            _optional(message, "kind"),
        )
        assert worker.channel is not None
        worker.channel.send(
            {"op": "claimed", "id": message["id"], "ok": verdict.granted, "why": verdict.why}
        )
        if not verdict.granted:
            return
        for gone in verdict.dropped:
            other = self.workers[gone.worker].channel
            if other is not None:
                other.send({"op": "drop", "key": key, "agent": gone.agent, "link": gone.link})
        self._tell_where(key)

    def _state(self, worker: _Worker, message: Message) -> None:
        key = str(message["key"])
        members = [
            Member(worker.index, str(agent), int(link), bool(pooled))
            for agent, link, pooled in message["members"][:MAX_MEMBERS_PER_KEY]
        ]
        outcome = self.table.apply_state(
            worker.index,
            key,
            str(message["token"]),
            members,
            bool(message["live"]),
            taking=bool(message.get("taking", True)),
            rewrite=_optional(message, "rewrite"),
            kind=_optional(message, "kind"),
        )
        if outcome == "changed":
            self._tell_where(key)
        elif outcome == "conflict" and worker.channel is not None:
            log.warning("worker %d held %s, now another token's; it drops it", worker.index, key)
            worker.channel.send({"op": "drop", "key": key})

    def _tell_where(self, key: str) -> None:
        message = {"op": "where", "key": key, "workers": self.table.live_workers(key)}
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.send(message)

    def _ready(self, worker: _Worker, message: Message) -> None:
        worker.ready = True
        worker.banner = [str(line) for line in message.get("banner", [])]
        # Its handlers are installed now: what was asked while it started reaches it.
        if self._stopping:
            _signal(worker, signal.SIGTERM)
        elif worker.reload_due:
            _signal(worker, signal.SIGHUP)
        worker.reload_due = False
        if self._announced:
            assert worker.process is not None
            log.info("worker %d (pid %d) serves again", worker.index, worker.process.pid)
            return
        if all(w.ready for w in self.workers):
            self._announced = True
            self.on_ready(self.workers[0].banner)


def _signal(worker: _Worker, signum: int) -> None:
    if worker.process is not None and worker.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signum)


def _optional(message: Message, field: str) -> str | None:
    """A field a worker's claim or report may carry: ``rewrite``, the Host rewrite (None:
    the Host is kept); ``kind``, a TLS-port name's (https or tls; None: a key of one)."""
    value = message.get(field)
    return str(value) if value is not None else None
