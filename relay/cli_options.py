"""Options several `relay` commands share. A module of their own, below relay/cli.py:
the command modules registered by relay/cli.py cannot import it at load time (a cycle)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def data_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        envvar="RELAY_DATA_DIR",
        help="Edge data directory (database, CA, keys). Default: ~/.local/share/relay.",
    )(func)


def store_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store",
        "store_url",
        default=None,
        envvar="RELAY_STORE",
        metavar="URL",
        help="The token and audit database, when not the data directory's SQLite: "
        "postgresql://USER:PASSWORD@HOST/DB. The pepper stays in the data directory.",
    )(func)
