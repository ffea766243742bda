"""``relay edge --workers N``: what the command does as the supervisor of N workers, and
as one of them (relay/cluster/, relay/edge/worker.py)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from relay.config import EdgeConfig, parse_host_port
from relay.errors import ListenError

if TYPE_CHECKING:
    import socket


async def supervise(
    config: EdgeConfig,
    install_stop: Callable[[Callable[[], None]], None],
    reload_config: Callable[[], EdgeConfig] | None = None,
) -> int:
    """Prepare what the workers share, then run ``config.workers`` of them until SIGTERM;
    returns the exit code (a worker's, if one could not start). ``reload_config``: what a
    reload reads (the file and flags the workers read too); None: the settings stay."""
    from relay.cluster.supervisor import DRAIN_FAILED, Supervisor, reserve_port
    from relay.cluster.supervisor_admin import SupervisorAdmin
    from relay.edge.server import prepare_shared_files

    # The data directory, pepper, database schema, CA and agent-link certificate are made
    # once, here: N workers making them at once would race.
    prepare_shared_files(config)
    held: list[socket.socket] = []
    overrides: list[str] = []
    admin: SupervisorAdmin | None = None
    try:
        for flag, value in (
            ("--listen", config.listen),
            ("--http-listen", config.http_listen),
            ("--https-listen", config.https_listen),
        ):
            if not value:
                continue
            host, port = parse_host_port(value, what=flag)
            try:
                sock = reserve_port((host, port))
            except OSError as exc:
                raise ListenError.for_address(value, flag, exc) from None
            held.append(sock)
            if port == 0:  # every worker must bind the same port: the one chosen here
                chosen = sock.getsockname()[1]
                overrides += [flag, f"[{host}]:{chosen}" if ":" in host else f"{host}:{chosen}"]
        stopped = asyncio.Event()
        install_stop(stopped.set)
        hangup = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangup.set)
        argv = [sys.executable, "-m", "relay.cli", *sys.argv[1:], *overrides]

        def announce(banner: list[str]) -> None:
            lines = list(banner)
            at = len(lines) - 1 if lines else 0  # before "listening for agents on …"
            links = "; cluster links" if config.cluster_redis else ""
            lines.insert(
                at,
                f"workers: {config.workers} processes on every listener (SO_REUSEPORT); "
                f"the edge's admin listener sums them, each worker's{links} on the "
                "ports after it",
            )
            for line in lines:
                click.echo(line, err=True)

        supervisor = Supervisor(
            argv,
            config.workers,
            drain_timeout=config.drain_timeout,
            on_ready=announce,
            reclaim_grace=config.reclaim_grace,
            reload_config=reload_config,
        )
        if config.admin_listen:
            admin_host, admin_port = parse_host_port(config.admin_listen, what="--admin-listen")
            admin = SupervisorAdmin(admin_host, admin_port, supervisor.views)
            await admin.start()
        try:
            code = await supervisor.run(stopped, hangup)
        finally:
            if admin is not None:
                admin.close()
        if code == 0:
            click.echo("drained", err=True)
        elif code == DRAIN_FAILED:
            click.echo("drain incomplete: a worker was killed or failed (see above)", err=True)
        return code
    finally:
        for sock in held:
            sock.close()


def name_worker_logs(index: int) -> None:
    """Every log line of worker ``index`` says which worker wrote it."""
    make = logging.getLogRecordFactory()

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made = make(*args, **kwargs)
        made.name = f"{made.name}[worker {index}]"
        return made

    logging.setLogRecordFactory(record)
