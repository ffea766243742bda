"""docs/configuration.md documents every edge setting with its real default, and says
which ones have no flag: the page cannot drift from relay/config.py unnoticed."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from relay.cli import main
from relay.config import EdgeConfig, load_edge_config, usable_cores
from relay.mux import MuxConfig

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)? \| `?([^|`]*)`? \| (.*) \|$", re.M)


def rows() -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for first, second, default, meaning in ROW.findall(PAGE.read_text()):
        for key in (first, second):
            if key:
                found[key] = (default.strip(), meaning)
    return found


def shown(value: Any) -> str:
    """A default as the page writes it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return "[]" if not value else repr(list(value))
    if value == "":
        return '""'
    return str(value)


def test_every_edge_and_mux_setting_is_on_the_page_with_its_default() -> None:
    documented = rows()
    config = load_edge_config(None, {})  # what `relay edge` runs with when nothing is said
    assert documented["workers"][0] == "auto"
    assert config.workers == usable_cores()
    for field in fields(EdgeConfig):
        if field.name in ("mux", "data_dir", "workers"):
            continue
        assert field.name in documented, f"{field.name} is not in docs/configuration.md"
        assert documented[field.name][0] == shown(getattr(config, field.name)), field.name
    assert documented["data_dir"][0] == "~/.local/share/relay"
    mux = MuxConfig()
    for field in fields(MuxConfig):
        assert field.name in documented, f"mux {field.name} is not in docs/configuration.md"
        assert documented[field.name][0] == shown(getattr(mux, field.name)), field.name


def test_file_only_is_said_exactly_of_the_settings_without_a_flag() -> None:
    edge = main.commands["edge"]
    assert isinstance(edge, click.Command)
    flags = {p.name for p in edge.params if isinstance(p, click.Option)}
    documented = rows()
    for field in fields(EdgeConfig):
        if field.name == "mux":
            continue
        file_only = "*File only.*" in documented[field.name][1]
        assert file_only == (field.name not in flags), field.name
