"""Reloading the edge's configuration: every setting is either live or restart-only (a new
one must be classified), a reload applies exactly the live ones, the configuration page
says the same, and an edge in this process applies a reload or refuses it whole."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import uvloop

from relay.certs.issuers import FileIssuer
from relay.certs.local_ca import LocalCA
from relay.certs.manager import CertEvent, CertificateManager
from relay.config import (
    LIVE_KEYS,
    RESTART_KEYS,
    EdgeConfig,
    config_change,
    load_edge_config,
)
from relay.control.secrets import SecretBox
from relay.edge.ports import PortRange
from relay.edge.server import Edge
from relay.errors import ConfigError
from relay.mux import MuxConfig

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
NAMES = [f.name for f in fields(EdgeConfig)]


def other_value(name: str, value: Any) -> Any:
    """A value of the same kind as ``value`` that differs from it. A field of a kind not
    known here fails the test: whoever adds it decides what a change of it looks like."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1.5
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, Path) or value is None:
        return Path("/elsewhere") / name
    if isinstance(value, tuple):
        return (*value, "extra")
    if isinstance(value, PortRange):
        return PortRange(1000, 1001)
    if isinstance(value, MuxConfig):
        return replace(value, max_streams=value.max_streams + 1)
    raise AssertionError(f"{name}: no other value known for {value!r}")


def test_every_setting_is_either_live_or_restart_only() -> None:
    assert not set(NAMES) - LIVE_KEYS - RESTART_KEYS, "classify the new setting"
    assert not LIVE_KEYS & RESTART_KEYS
    assert not (LIVE_KEYS | RESTART_KEYS) - set(NAMES), "a setting that no longer exists"


@pytest.mark.parametrize("name", NAMES)
def test_a_change_of_one_setting_is_applied_if_live_and_kept_if_not(name: str) -> None:
    old = EdgeConfig()
    asked = other_value(name, getattr(old, name))
    change = config_change(old, replace(old, **{name: asked}))
    if name in LIVE_KEYS:
        assert (change.applied, change.kept) == ((name,), ())
        assert change.config == replace(old, **{name: asked})
    else:
        assert (change.applied, change.kept) == ((), (name,))
        assert change.config == old


def test_a_reload_changing_everything_applies_the_live_and_keeps_the_rest() -> None:
    old = EdgeConfig()
    new = replace(old, **{n: other_value(n, getattr(old, n)) for n in NAMES})
    change = config_change(old, new)
    assert change.applied == tuple(n for n in NAMES if n in LIVE_KEYS)
    assert change.kept == tuple(n for n in NAMES if n in RESTART_KEYS)
    for name in NAMES:
        expected = new if name in LIVE_KEYS else old
        assert getattr(change.config, name) == getattr(expected, name), name


def test_a_reload_with_nothing_changed_changes_nothing() -> None:
    change = config_change(EdgeConfig(), EdgeConfig())
    assert (change.applied, change.kept, change.config) == ((), (), EdgeConfig())


def reloading_section() -> dict[str, str]:
    """key -> "yes" / "no" from the page's Reloading table."""
    text = PAGE.read_text()
    section = text[text.index("## Reloading") :]
    found: dict[str, str] = {}
    for live, keys in re.findall(r"^\| (yes|no) \| ([^|]+) \|", section, re.M):
        for key in re.findall(r"`([a-z_]+)`", keys):
            assert key not in found, f"{key} is in the Reloading table twice"
            found[key] = live
    return found


def test_the_configuration_page_says_which_settings_reload_as_the_code_does() -> None:
    table = reloading_section()
    assert set(table) == set(NAMES)
    assert {k for k, live in table.items() if live == "yes"} == LIVE_KEYS


def test_log_level_comes_from_the_file_unless_the_global_flag_is_given(tmp_path: Path) -> None:
    path = tmp_path / "edge.yml"
    path.write_text("log_level: WARNING\n")
    assert load_edge_config(path, {"log_level": None}).log_level == "warning"
    assert load_edge_config(path, {"log_level": "debug"}).log_level == "debug"
    assert load_edge_config(None, {}).log_level == "info"
    path.write_text("log_level: loud\n")
    with pytest.raises(ConfigError, match="log_level must be one of"):
        load_edge_config(path, {})


# --- an edge in this process ---------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """A reload sets the root logger's level and formats: put them back afterwards."""
    root = logging.getLogger()
    level = root.level
    formatters = [(h, h.formatter) for h in root.handlers]
    try:
        yield
    finally:
        root.setLevel(level)
        for handler, formatter in formatters:
            handler.setFormatter(formatter)


def loopback_config(data_dir: Path, **settings: Any) -> EdgeConfig:
    return EdgeConfig(
        data_dir=data_dir,
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        https_listen="127.0.0.1:0",
        admin_listen="",
        tcp_bind="127.0.0.1",
        **settings,
    )


def with_edge(config: EdgeConfig, scenario: Callable[[Edge], Awaitable[None]]) -> None:
    async def run() -> None:
        edge = Edge(config)
        await edge.start()
        try:
            await scenario(edge)
        finally:
            await edge.stop()

    uvloop.run(asyncio.wait_for(run(), 30))


def reload_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "relay.edge" and "reload" in r.getMessage()]


def test_a_reload_sets_live_limits_for_new_connections_and_keeps_restart_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    caplog.set_level(logging.INFO, "relay.edge")
    config = loopback_config(tmp_path / "edge")

    async def scenario(edge: Edge) -> None:
        port = edge.web.http_port
        new = replace(
            config,
            http_idle_timeout=3.0,
            http_header_timeout=2.0,
            http_max_head=4096,
            https_redirect=False,
            max_sessions=5,
            region="elsewhere",
            http_listen="127.0.0.1:1",
        )
        result = edge.reload(new, source="edge.yml")
        assert result.refused is None
        expected = ("max_sessions", "http_max_head", "http_header_timeout", "http_idle_timeout")
        assert set(result.applied) == {*expected, "https_redirect"}
        assert result.kept == ("region", "http_listen")
        assert edge.config.max_sessions == 5 and edge.config.region == "local"
        assert edge.config.http_listen == "127.0.0.1:0" and edge.web.http_port == port
        for front in (edge.web.http, edge.web.https, edge.web.answers):
            assert (front.idle_timeout, front.header_timeout, front.max_head) == (3.0, 2.0, 4096)
        assert edge.web.http.redirect_to_https is None
        assert edge.web.tls_front.hello_timeout == 2.0

    with_edge(config, scenario)
    records = reload_records(caplog)
    assert [r.levelname for r in records] == ["WARNING", "INFO"]
    assert "region (stays local, asked elsewhere)" in records[0].getMessage()
    assert "restart the edge to change it" in records[0].getMessage()
    assert records[1].getMessage().startswith("reloaded edge.yml: changed ")


def test_a_reload_that_cannot_open_its_access_log_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    config = loopback_config(tmp_path / "edge")

    async def scenario(edge: Edge) -> None:
        bad = replace(config, http_idle_timeout=3.0, access_log=str(tmp_path / "no" / "a.log"))
        result = edge.reload(bad, source="edge.yml")
        assert result.refused is not None and result.refused.code == "RLY_401"
        assert edge.config == config and edge.access_log is None
        assert edge.web.http.idle_timeout == config.http_idle_timeout

    with_edge(config, scenario)
    records = reload_records(caplog)
    assert [r.levelname for r in records] == ["ERROR"]
    assert "refused, the running configuration stays: error RLY_401" in records[0].getMessage()


def test_certificate_files_that_do_not_match_refuse_the_whole_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    ca = LocalCA.load_or_create(tmp_path / "operator-ca")
    chain, key = ca.issue_server_cert(["*.localhost"], [])
    _, other_key = ca.issue_server_cert(["*.localhost"], [])
    cert_file, key_file = tmp_path / "site.pem", tmp_path / "site.key"
    cert_file.write_bytes(chain)
    key_file.write_bytes(key)
    config = loopback_config(
        tmp_path / "edge", cert_issuer="files", cert_file=cert_file, key_file=key_file
    )

    async def scenario(edge: Edge) -> None:
        key_file.write_bytes(other_key)  # a rotation half done
        result = edge.reload(replace(config, max_sessions=5), source="edge.yml")
        assert result.refused is not None and result.refused.code == "RLY_801"
        assert edge.config.max_sessions == config.max_sessions
        key_file.write_bytes(key)
        assert edge.reload(replace(config, max_sessions=5)).applied == ("max_sessions",)

    with_edge(config, scenario)
    errors = [r for r in reload_records(caplog) if r.levelname == "ERROR"]
    assert len(errors) == 1 and "does not belong to the certificate" in errors[0].getMessage()


def test_a_file_that_does_not_load_is_refused_in_one_error_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    path = tmp_path / "edge.yml"
    path.write_text("http_idle_timeout: [60\n")  # YAML's own message spans several lines
    config = loopback_config(tmp_path / "edge")

    async def scenario(edge: Edge) -> None:
        result = edge.reload_from(lambda: load_edge_config(path, {}), str(path))
        assert result.refused is not None and result.refused.code == "RLY_401"
        assert edge.config == config

    with_edge(config, scenario)
    (record,) = reload_records(caplog)
    assert record.levelname == "ERROR" and "\n" not in record.getMessage()
    assert f"reload of {path} refused" in record.getMessage()


def test_a_reload_sets_the_log_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    config = loopback_config(tmp_path / "edge")

    async def scenario(edge: Edge) -> None:
        edge.reload(replace(config, log_level="debug"))
        assert logging.getLogger().level == logging.DEBUG
        edge.reload(replace(config, log_level="error"))
        assert logging.getLogger().level == logging.ERROR

    with_edge(config, scenario)


@pytest.mark.asyncio
async def test_reloaded_certificate_files_replace_what_names_are_served_unless_they_miss_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = LocalCA.load_or_create(tmp_path / "operator-ca")
    cert_file, key_file = tmp_path / "site.pem", tmp_path / "site.key"

    def files(names: list[str]) -> FileIssuer:
        chain, key = ca.issue_server_cert(names, [])
        cert_file.write_bytes(chain)
        key_file.write_bytes(key)
        return FileIssuer(cert_file, key_file)

    events: list[CertEvent] = []
    box = SecretBox({"k1": b"k" * 32}, "k1")
    manager = CertificateManager(
        tmp_path / "data",
        files(["*.site.test"]),
        box,
        issue_on_demand=True,
        allowed=lambda name: True,
        on_event=events.append,
    )
    await manager.ensure("a.site.test")  # as a bound name's order does
    first = manager.chain_pem("a.site.test")
    # A name only a visitor asked for (under a wildcard endpoint): made on demand.
    assert manager.context_for("b.site.test") is not None
    assert manager.held() == (1, 1)

    assert manager.reload_issuer(files(["*.site.test"])) == ["a.site.test"]
    assert manager.held() == (1, 0)  # made again from the new files when next asked for
    second = manager.chain_pem("a.site.test")
    assert second not in (None, first) and second == cert_file.read_bytes()
    # Issued by the order, then by the reload.
    assert [(e.name, e.state) for e in events] == [("a.site.test", "issued")] * 2

    # A pair that no longer covers the name: the name keeps what it has, and hears why.
    assert manager.reload_issuer(files(["*.other.test"])) == []
    assert manager.chain_pem("a.site.test") == second
    assert events[-1].state == "failed" and events[-1].expires is not None
    assert any("does not cover a.site.test" in r.getMessage() for r in caplog.records)


def test_an_access_log_file_named_in_the_file_is_relative_to_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "edge.yml"
    path.write_text("access_log: logs/access.log\n")
    assert load_edge_config(path, {}).access_log == str(folder / "logs" / "access.log")
    path.write_text("access_log: '-'\n")
    assert load_edge_config(path, {}).access_log == "-"
    assert load_edge_config(path, {"access_log": "here.log"}).access_log == "here.log"
