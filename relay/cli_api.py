"""What the API's commands share (relay/cli_control.py, relay/cli_reserved.py): the login
file ``relay login`` writes, the client built from it, and how a command reports errors
and prints tables or JSON.

relay/cli.py imports the command modules at its end, so nothing here imports relay/cli.py
at load time (a cycle, and under ``python -m relay.cli`` a second copy of it): the few
helpers it lends are imported inside the functions that use them.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from relay.api_client import ApiClient, check_base_url
from relay.errors import ConfigError, DataDirError, RelayError

__all__ = [
    "ACCOUNT_OPTION",
    "DEFAULT_API",
    "PAGE",
    "Login",
    "api_options",
    "cell",
    "client_for",
    "config_dir",
    "expiry_from",
    "fail",
    "listed",
    "load_login",
    "login_path",
    "minute",
    "print_fields",
    "print_json",
    "print_table",
    "reported",
    "save_login",
    "segment",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The edge's admin listener by default (``relay edge --admin-listen``).
DEFAULT_API = "http://127.0.0.1:9190"
#: Items asked for per page: the API's most (relay/control/api/models.py, MAX_PAGE).
PAGE = 500
LOGIN_FILE = "login.json"


# -- the login file ------------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    api: str
    key: str

    def __repr__(self) -> str:
        return f"Login(api={self.api!r})"  # never the key


def config_dir() -> Path:
    """``$RELAY_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/relay``, else ``~/.config/relay``."""
    env = os.environ.get("RELAY_CONFIG_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "relay"


def login_path() -> Path:
    return config_dir() / LOGIN_FILE


def save_login(path: Path, login: Login) -> None:
    """Write ``{"api", "key"}`` owner-only (directory 0700, file 0600), complete or not at
    all: a temporary file, fsynced, renamed over the old one."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.parent.stat().st_mode & 0o077:
            os.chmod(path.parent, 0o700)  # it holds a key; nobody else lists or reads it
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)  # the umask can only remove bits; be explicit
                json.dump({"api": login.api, "key": login.key}, f)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise DataDirError(f"cannot write the login file {path}: {exc.strerror or exc}") from None


def load_login(path: Path) -> Login | None:
    """The saved login, or None when there is none. A login file that others may read is
    refused, not used: its key may be in other hands already."""
    from relay.secret_files import read_owner_only_file

    if not os.path.lexists(path):
        return None
    raw = read_owner_only_file(path)
    try:
        data = json.loads(raw)
        login = Login(api=str(data["api"]), key=str(data["key"]))
    except (ValueError, TypeError, KeyError):
        raise ConfigError(
            f"{path} is not a relay login file: run `relay login --api URL` again"
        ) from None
    return login


def client_for(api: str | None) -> ApiClient:
    """The client a resource command uses: the key from ``RELAY_API_KEY`` or the login
    file; the URL from ``--api``/``RELAY_API``, else the login's, else the local edge's."""
    env_key = os.environ.get("RELAY_API_KEY", "").strip()
    if env_key and api is not None:
        return ApiClient(api, env_key)  # the login file is not needed, nor read
    login = load_login(login_path())
    if env_key:
        return ApiClient(login.api if login else DEFAULT_API, env_key)
    if login is None:
        raise ConfigError("not logged in: run `relay login --api URL` first (or set RELAY_API_KEY)")
    if api is not None and check_base_url(api) != check_base_url(login.api):
        # The saved key is for another server: sending it here would hand it over.
        raise ConfigError(
            f"the saved login is for {login.api}, not {api}: run `relay login --api {api}` "
            "(or set RELAY_API_KEY)"
        )
    return ApiClient(login.api, login.key)


# -- shared plumbing -----------------------------------------------------------------------


def fail(err: RelayError) -> NoReturn:
    from relay.cli import fail  # see the module's docstring: relay.cli imports this one

    fail(err)


def reported(func: F) -> F:
    """A RelayError becomes ``error RLY_xxx: …`` and the exit status relay.cli gives it."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RelayError as err:
            fail(err)

    return wrapper  # type: ignore[return-value]


def api_options(func: F) -> F:
    """``--api`` and ``-o/--output``, which every resource command takes."""
    func = click.option(
        "-o",
        "--output",
        type=click.Choice(["text", "json"]),
        default="text",
        help="A table for people, or the API's objects as JSON for scripts.",
    )(func)
    return click.option(
        "--api",
        default=None,
        envvar="RELAY_API",
        metavar="URL",
        show_default=False,
        help="The control plane: the edge's admin listener, e.g. http://127.0.0.1:9190 "
        "(env RELAY_API). Default: the URL of `relay login`.",
    )(func)


def segment(value: str) -> str:
    """An id as one path segment: ``../`` or ``?`` in it must not reach another route."""
    return urllib.parse.quote(value, safe="")


def cell(value: Any) -> str:
    """A value for a terminal: ``-`` for none, lists joined, no control characters."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    else:
        text = str(value)
    return "".join("?" if unicodedata.category(ch).startswith("C") else ch for ch in text)


def minute(value: Any) -> str:
    """``2026-12-02 23:41`` (as the API says it, UTC) for a table; ``-`` for none."""
    return value[:16].replace("T", " ") if isinstance(value, str) and value else "-"


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Aligned columns; the last one (often free text) is not padded."""
    cells = [list(headers), *([cell(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers) - 1)]
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*padded, row[-1]]).rstrip())


def print_fields(obj: Mapping[str, Any], names: Sequence[str]) -> None:
    """One object, a ``name  value`` line per field."""
    width = max(len(n) for n in names)
    for name in names:
        value = obj.get(name)
        shown = minute(value) if name.endswith("_at") else cell(value)
        click.echo(f"{name.ljust(width)}  {shown}")


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def listed(client: ApiClient, path: str, params: Mapping[str, Any] | None = None) -> list[Any]:
    return list(client.items(path, {"limit": PAGE, **(params or {})}))


def expiry_from(expires_in: str | None) -> str | None:
    from relay.cli import parse_duration

    if not expires_in:
        return None
    return (datetime.now(UTC) + parse_duration(expires_in)).isoformat()


ACCOUNT_OPTION = click.option(
    "--account",
    "account_id",
    default=None,
    metavar="ID",
    show_default=False,
    help="The account (acc_…). Default: the API key's own.",
)
