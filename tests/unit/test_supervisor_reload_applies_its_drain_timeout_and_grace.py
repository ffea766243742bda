"""A reload applies ``drain_timeout`` and ``reclaim_grace`` in the supervisor too
(relay/cluster/supervisor.py ``Supervisor.reload``), not only in the workers: it reads the
same file with the same flags (relay/cli.py ``edge`` gives it its ``reload_config``). Otherwise
a drain_timeout raised and reloaded still has the workers SIGKILLed after the old one,
and a dead worker's names wait out the old grace. A file that no longer loads keeps the
running values."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.cluster import supervisor as supervisor_module
from relay.cluster.supervisor import Supervisor
from relay.config import EdgeConfig, load_edge_config
from relay.edge import server as server_module
from relay.errors import ConfigError


def test_a_reload_applies_the_new_drain_timeout_and_reclaim_grace(tmp_path: Path) -> None:
    config_file = tmp_path / "edge.yaml"
    config_file.write_text("drain_timeout: 30\nreclaim_grace: 60\n")
    supervisor = Supervisor(
        ["relay", "edge"],
        2,
        drain_timeout=30.0,
        reclaim_grace=60.0,
        on_ready=lambda banner: None,
        run_dir=tmp_path,
        reload_config=lambda: load_edge_config(config_file, {"reclaim_grace": 90.0}),
    )
    config_file.write_text("drain_timeout: 600\nreclaim_grace: 5\n")
    supervisor.reload()
    assert (supervisor.drain_timeout, supervisor.reclaim_grace) == (600.0, 90.0)  # flags win

    config_file.write_text("drain_timeout: [not a number\n")
    supervisor.reload()  # refused: logged, the running values stay
    assert (supervisor.drain_timeout, supervisor.reclaim_grace) == (600.0, 90.0)


def test_an_api_reload_for_every_node_applies_them_too(tmp_path: Path) -> None:
    new = dataclasses.replace(EdgeConfig(), drain_timeout=120.0, reclaim_grace=7.0)
    supervisor = Supervisor(
        ["relay", "edge"],
        2,
        drain_timeout=30.0,
        on_ready=lambda banner: None,
        run_dir=tmp_path,
        reload_config=lambda: new,
    )
    supervisor._ask(
        supervisor.workers[0], {"op": "ask", "event": {"event": "ask", "ask": "a1", "op": "reload"}}
    )
    assert (supervisor.drain_timeout, supervisor.reclaim_grace) == (120.0, 7.0)


@pytest.fixture
def root_logging_kept() -> Iterator[None]:
    """``relay edge`` sets the root logger's level and its handlers' format."""
    root = logging.getLogger()
    level, formats = root.level, [(h, h.formatter) for h in root.handlers]
    yield
    root.setLevel(level)
    for handler, formatter in formats:
        handler.setFormatter(formatter)


@pytest.mark.usefixtures("root_logging_kept")
def test_the_edge_command_gives_its_supervisor_its_own_file_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``relay edge --workers 2 --config FILE --reclaim-grace 45``: the supervisor's
    reload reads FILE again, with the flag on top."""
    config_file = tmp_path / "edge.yaml"
    config_file.write_text("drain_timeout: 30\n")
    seen: list[tuple[float, float]] = []

    class Recording:
        def __init__(self, argv: list[str], count: int, **kwargs: Any) -> None:
            self.reload_config = kwargs["reload_config"]

        async def run(self, stopped: asyncio.Event, hangup: asyncio.Event) -> int:
            config_file.write_text("drain_timeout: 300\nreclaim_grace: 5\n")
            config: EdgeConfig = self.reload_config()
            seen.append((config.drain_timeout, config.reclaim_grace))
            return 0

    monkeypatch.setattr(supervisor_module, "Supervisor", Recording)
    monkeypatch.setattr(server_module, "prepare_shared_files", lambda config: None)
    monkeypatch.delenv("RELAY_EDGE_WORKER", raising=False)
    result = CliRunner().invoke(
        main,
        [
            "edge",
            "--config",
            str(config_file),
            "--workers",
            "2",
            "--reclaim-grace",
            "45",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "",
            "--https-listen",
            "",
            "--admin-listen",
            "",
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen == [(300.0, 45.0)]


def test_a_file_that_does_not_load_is_refused_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse() -> EdgeConfig:
        raise ConfigError("drain_timeout: could not convert")

    supervisor = Supervisor(
        ["relay", "edge"],
        1,
        drain_timeout=30.0,
        on_ready=lambda banner: None,
        run_dir=tmp_path,
        reload_config=refuse,
    )
    supervisor.reload()
    assert supervisor.drain_timeout == 30.0
    assert "reload refused" in caplog.text
