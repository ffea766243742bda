"""The CLI of the control plane's REST API: ``relay login``/``logout``, and ``relay accounts``,
``credentials``, ``api-keys``, ``sessions``, ``endpoints`` and ``audit``, each a few calls
through :class:`relay.api_client.ApiClient`; plus ``relay api-keys bootstrap``, which
makes the first admin key straight in the store (before any key exists to call the API
with).

relay/cli.py imports this module at its end to register these commands (``register``), so
this module imports relay/cli.py only inside functions, when a command runs: at load time
it would be an import cycle (and under ``python -m relay.cli`` a second copy of it).

The API key is read from ``RELAY_API_KEY`` or from the login file ``relay login`` writes;
it is never a command-line argument (those show in ``ps`` and shell history).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from relay.api_client import ApiClient, check_base_url
from relay.cli_api import (
    ACCOUNT_OPTION,
    DEFAULT_API,
    PAGE,
    Login,
    api_options,
    cell,
    client_for,
    expiry_from,
    fail,
    listed,
    load_login,
    login_path,
    minute,
    print_fields,
    print_json,
    print_table,
    reported,
    save_login,
    segment,
)
from relay.cli_options import data_dir_option, store_option
from relay.control.scopes import SCOPES
from relay.errors import (
    AuditChainBroken,
    ConfigError,
    DataDirError,
    Forbidden,
    RelayError,
    error_from_code,
)

__all__ = ["register"]

F = TypeVar("F", bound=Callable[..., Any])


# -- login and logout ----------------------------------------------------------------------


@click.command()
@click.option(
    "--api",
    default=DEFAULT_API,
    envvar="RELAY_API",
    metavar="URL",
    help="The control plane: the edge's admin listener (env RELAY_API).",
)
@click.option(
    "--key-file",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    default=None,
    help="Read the API key from this file ('-': standard input). Otherwise RELAY_API_KEY, "
    "or you are asked for it (hidden).",
)
@reported
def login(api: str, key_file: Path | None) -> None:
    """Check an API key against the control plane and save it for the other commands.

    The key (rlk_…) is never a command-line argument: those show in `ps` and in shell
    history. It is saved with the URL in $RELAY_CONFIG_DIR/login.json (default
    ~/.config/relay/login.json), readable by you alone.
    """
    from relay.control.tokens import parse_api_key

    base = check_base_url(api)
    key = _read_key(key_file)
    parse_api_key(key)  # a pasted authtoken or a cut-off key is named before any call
    client = ApiClient(base, key)
    note = ""
    try:
        client.get("/accounts", params={"limit": 1})
    except Forbidden:
        note = " (it lacks the accounts:read scope; the commands that need it will say so)"
    path = login_path()
    save_login(path, Login(api=base, key=key))
    click.echo(f"logged in to {base}; the key is saved in {path}{note}")


def _read_key(key_file: Path | None) -> str:
    if key_file is not None:
        try:
            if str(key_file) == "-":
                return sys.stdin.readline().strip()
            return key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the API key from {key_file}: {exc}") from None
    env_key = os.environ.get("RELAY_API_KEY", "").strip()
    if env_key:
        return env_key
    if not sys.stdin.isatty():
        raise ConfigError(
            "no API key: pass --key-file FILE ('-' for standard input) or set RELAY_API_KEY"
        )
    return str(click.prompt("API key", hide_input=True)).strip()


@click.command()
@reported
def logout() -> None:
    """Forget the saved API key (the key itself stays valid until it is revoked)."""
    path = login_path()
    try:
        login_ = load_login(path)
    except RelayError:
        login_ = None  # unreadable or too open: removing it is the cure
    try:
        path.unlink()
    except FileNotFoundError:
        click.echo("not logged in")
        return
    except OSError as exc:
        raise DataDirError(f"cannot remove {path}: {exc.strerror or exc}") from None
    key_id = login_.key.split("_")[1] if login_ and login_.key.count("_") >= 2 else "ID"
    click.echo(
        f"logged out: removed {path}. The key stays valid until revoked: "
        f"relay api-keys revoke {key_id}"
    )


# -- accounts ------------------------------------------------------------------------------

ACCOUNT_FIELDS = ("id", "name", "role", "status", "created_at", "suspended_at")


@click.group()
def accounts() -> None:
    """Accounts: who credentials belong to (operators manage every account)."""


def _account_rows(items: Iterable[Mapping[str, Any]]) -> Iterable[list[str]]:
    for a in items:
        row = [a.get("id"), a.get("name"), a.get("role"), a.get("status")]
        yield [*map(cell, row), minute(a.get("created_at"))]


@accounts.command("list")
@api_options
@reported
def accounts_list(api: str | None, output: str) -> None:
    """List accounts (a member's key: its own)."""
    items = listed(client_for(api), "/accounts")
    if output == "json":
        print_json(items)
        return
    print_table(["ID", "NAME", "ROLE", "STATUS", "CREATED"], _account_rows(items))


@accounts.command("show")
@click.argument("account_id")
@api_options
@reported
def accounts_show(account_id: str, api: str | None, output: str) -> None:
    """Show one account."""
    account = client_for(api).get(f"/accounts/{segment(account_id)}")
    if output == "json":
        print_json(account)
    else:
        print_fields(account, ACCOUNT_FIELDS)


@accounts.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["member", "operator"]),
    default="member",
    help="A member's keys reach its own account; an operator's reach every account.",
)
@api_options
@reported
def accounts_create(name: str, role: str, api: str | None, output: str) -> None:
    """Create an account NAME (a-z, 0-9 and -, like a DNS label)."""
    account = client_for(api).post("/accounts", json={"name": name, "role": role})
    if output == "json":
        print_json(account)
        return
    click.echo(
        f"account {cell(account.get('id'))} created: {cell(account.get('name'))} "
        f"({cell(account.get('role'))})"
    )


def _set_status(account_id: str, verb: str, api: str | None, output: str) -> None:
    account = client_for(api).post(f"/accounts/{segment(account_id)}/{verb}")
    if output == "json":
        print_json(account)
    elif verb == "suspend":
        click.echo(
            f"account {cell(account.get('id'))} suspended: its agents' sessions end within "
            "2 s, its credentials and API keys are refused until it is resumed"
        )
    else:
        click.echo(f"account {cell(account.get('id'))} resumed")


@accounts.command("suspend")
@click.argument("account_id")
@api_options
@reported
def accounts_suspend(account_id: str, api: str | None, output: str) -> None:
    """Suspend an account: its agents are disconnected, its credentials refused."""
    _set_status(account_id, "suspend", api, output)


@accounts.command("resume")
@click.argument("account_id")
@api_options
@reported
def accounts_resume(account_id: str, api: str | None, output: str) -> None:
    """Resume a suspended account: its credentials work again."""
    _set_status(account_id, "resume", api, output)


# -- credentials (authtokens) --------------------------------------------------------------


@click.group()
def credentials() -> None:
    """Authtokens for agents (`relay tcp|http|tls --token`), stored only as hashes."""


def _secret_rows(items: Iterable[Mapping[str, Any]], what: str) -> Iterable[list[str]]:
    """Rows of authtokens or API keys: the same columns, then ``what`` each may do (its
    bind ACL, its scopes)."""
    for c in items:
        yield [
            cell(c.get("id")),
            cell(c.get("account_id")),
            cell(c.get("status")),
            minute(c.get("created_at")),
            minute(c.get("expires_at")),
            minute(c.get("last_used_at")),
            cell(c.get(what)),
            cell(c.get("description")),
        ]


def _credential_rows(items: Iterable[Mapping[str, Any]]) -> Iterable[list[str]]:
    return _secret_rows(items, "bind_acl")


@credentials.command("list")
@ACCOUNT_OPTION
@api_options
@reported
def credentials_list(account_id: str | None, api: str | None, output: str) -> None:
    """List authtokens (metadata only: secrets are never stored)."""
    items = listed(client_for(api), "/credentials", {"account_id": account_id})
    if output == "json":
        print_json(items)
        return
    print_table(
        ["ID", "ACCOUNT", "STATUS", "CREATED", "EXPIRES", "LAST USED", "ALLOW", "DESCRIPTION"],
        _credential_rows(items),
    )


@credentials.command("create")
@ACCOUNT_OPTION
@click.option("--description", default="", help="What the authtoken is for (shown in lists).")
@click.option("--expires-in", default=None, help="Lifetime, e.g. 12h or 90d. Default: none.")
@click.option(
    "--allow",
    multiple=True,
    metavar="PATTERN",
    help="Bind ACL pattern (repeatable), as for `relay token create`: '*', "
    "'tcp:20000-20100', 'app.example.com', '*.example.com'. Default '*'.",
)
@api_options
@reported
def credentials_create(
    account_id: str | None,
    description: str,
    expires_in: str | None,
    allow: tuple[str, ...],
    api: str | None,
    output: str,
) -> None:
    """Create an authtoken and print it. It is shown once and cannot be recovered."""
    body = {
        "account_id": account_id,
        "description": description,
        "expires_at": expiry_from(expires_in),
        "bind_acl": list(allow) or None,
    }
    created = client_for(api).post("/credentials", json=body)
    if output == "json":
        print_json(created)
        return
    click.echo(
        f"authtoken {cell(created.get('id'))} created for account "
        f"{cell(created.get('account_id'))}; it is shown only now:",
        err=True,
    )
    click.echo(cell(created.get("token")))


@credentials.command("revoke")
@click.argument("credential_id")
@api_options
@reported
def credentials_revoke(credential_id: str, api: str | None, output: str) -> None:
    """Revoke an authtoken: its agents' sessions end within 2 s."""
    revoked = client_for(api).delete(f"/credentials/{segment(credential_id)}")
    if output == "json":
        print_json(revoked)
        return
    click.echo(f"authtoken {cell(revoked.get('id'))} revoked; its agents' sessions end within 2 s")


# -- API keys ------------------------------------------------------------------------------


@click.group("api-keys")
def api_keys() -> None:
    """API keys for this CLI and the REST API (scoped, stored only as hashes).

    \b
    First run, on the edge's machine:
        relay api-keys bootstrap                 # an admin key, printed once
        relay login --api http://127.0.0.1:9190  # asks for it
    """


def _api_key_rows(items: Iterable[Mapping[str, Any]]) -> Iterable[list[str]]:
    return _secret_rows(items, "scopes")


@api_keys.command("list")
@ACCOUNT_OPTION
@api_options
@reported
def api_keys_list(account_id: str | None, api: str | None, output: str) -> None:
    """List API keys (metadata only: secrets are never stored)."""
    items = listed(client_for(api), "/api_keys", {"account_id": account_id})
    if output == "json":
        print_json(items)
        return
    print_table(
        ["ID", "ACCOUNT", "STATUS", "CREATED", "EXPIRES", "LAST USED", "SCOPES", "DESCRIPTION"],
        _api_key_rows(items),
    )


@api_keys.command("create")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(SCOPES),
    help="What the key may do (repeatable); a key may only grant scopes it holds itself.",
)
@ACCOUNT_OPTION
@click.option("--description", default="", help="What the key is for (shown in lists).")
@click.option("--expires-in", default=None, help="Lifetime, e.g. 12h or 90d. Default: none.")
@api_options
@reported
def api_keys_create(
    scopes: tuple[str, ...],
    account_id: str | None,
    description: str,
    expires_in: str | None,
    api: str | None,
    output: str,
) -> None:
    """Create an API key and print it. It is shown once and cannot be recovered."""
    body = {
        "account_id": account_id,
        "scopes": list(scopes),
        "description": description,
        "expires_at": expiry_from(expires_in),
    }
    created = client_for(api).post("/api_keys", json=body)
    if output == "json":
        print_json(created)
        return
    _print_key(created)


def _print_key(created: Mapping[str, Any]) -> None:
    click.echo(
        f"API key {cell(created.get('id'))} ({cell(created.get('scopes'))}) created for "
        f"account {cell(created.get('account_id'))}; it is shown only now:",
        err=True,
    )
    click.echo(cell(created.get("key")))


@api_keys.command("revoke")
@click.argument("key_id")
@api_options
@reported
def api_keys_revoke(key_id: str, api: str | None, output: str) -> None:
    """Revoke an API key: it is refused from now on."""
    revoked = client_for(api).delete(f"/api_keys/{segment(key_id)}")
    if output == "json":
        print_json(revoked)
        return
    click.echo(f"API key {cell(revoked.get('id'))} revoked")


@api_keys.command("bootstrap")
@data_dir_option
@store_option
@click.option(
    "--description",
    default="bootstrap admin key",
    help="What the key is for (shown in lists).",
)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@reported
def api_keys_bootstrap(
    data_dir: Path | None, store_url: str | None, description: str, output: str
) -> None:
    """Create the first admin API key, straight in the edge's store (no API call), for
    the `default` operator account, and print it once.

    Run it on the edge's machine with the --data-dir (and --store) `relay edge` uses;
    then `relay login`. Anyone who can run this can read the edge's database anyway.
    """
    # The same store and pepper as `relay token create` (--data-dir/--store above are
    # its options; relay.cli imports this module, so they cannot be imported from it).
    from relay.cli import _open_store
    from relay.control.tokens import load_or_create_pepper

    directory, store = _open_store(data_dir, store_url, create=True)
    try:
        account = store.default_account()
        record, key = store.create_api_key(
            account.id,
            scopes=["admin"],
            description=description,
            pepper=load_or_create_pepper(directory),
            actor="cli",
        )
    finally:
        store.close()
    created = {
        "id": record.id,
        "account_id": record.account_id,
        "scopes": list(record.scopes),
        "description": record.description,
        "key": key,
    }
    if output == "json":
        print_json(created)
        return
    where = "the --store database" if store_url else str(directory / "relay.db")
    click.echo(f"in {where}, account {account.name} ({account.role}):", err=True)
    _print_key(created)


# -- the edge's live state -----------------------------------------------------------------

SESSION_FIELDS = ("id", "account_id", "credential_id", "peer", "region", "endpoints")


@click.group()
def sessions() -> None:
    """Live agent sessions on the edge."""


def _session_rows(items: Iterable[Mapping[str, Any]]) -> Iterable[list[str]]:
    for s in items:
        keys = ("id", "account_id", "credential_id", "peer", "region", "endpoints")
        yield [cell(s.get(k)) for k in keys]


@sessions.command("list")
@api_options
@reported
def sessions_list(api: str | None, output: str) -> None:
    """List live agent sessions."""
    items = listed(client_for(api), "/tunnel_sessions")
    if output == "json":
        print_json(items)
        return
    print_table(
        ["ID", "ACCOUNT", "CREDENTIAL", "PEER", "REGION", "ENDPOINTS"], _session_rows(items)
    )


@sessions.command("show")
@click.argument("session_id")
@api_options
@reported
def sessions_show(session_id: str, api: str | None, output: str) -> None:
    """Show one live agent session."""
    found = client_for(api).get(f"/tunnel_sessions/{segment(session_id)}")
    if output == "json":
        print_json(found)
    else:
        print_fields(found, SESSION_FIELDS)


@sessions.command("stop")
@click.argument("session_id")
@api_options
@reported
def sessions_stop(session_id: str, api: str | None, output: str) -> None:
    """End a session; the agent is told not to reconnect."""
    stopped = client_for(api).post(f"/tunnel_sessions/{segment(session_id)}/stop")
    if output == "json":
        print_json(stopped)
        return
    click.echo(f"session {cell(stopped.get('id'))} stopped; its agent was told not to reconnect")


@sessions.command("restart")
@click.argument("session_id")
@api_options
@reported
def sessions_restart(session_id: str, api: str | None, output: str) -> None:
    """Ask a session's agent to reconnect; it gets its endpoints back."""
    found = client_for(api).post(f"/tunnel_sessions/{segment(session_id)}/restart")
    if output == "json":
        print_json(found)
        return
    click.echo(f"session {cell(found.get('id'))}: its agent was asked to reconnect")


@click.group()
def endpoints() -> None:
    """Endpoints agents have bound on the edge."""


@endpoints.command("list")
@api_options
@reported
def endpoints_list(api: str | None, output: str) -> None:
    """List bound endpoints."""
    items = listed(client_for(api), "/endpoints")
    if output == "json":
        print_json(items)
        return
    keys = ("id", "kind", "url", "tunnel_session_id", "account_id")
    print_table(
        ["ID", "KIND", "URL", "SESSION", "ACCOUNT"],
        ([cell(e.get(k)) for k in keys] for e in items),
    )


# -- audit ---------------------------------------------------------------------------------


@click.group()
def audit() -> None:
    """The hash-chained audit log (operators' keys with audit:read)."""


def _instant(value: str | None, name: str) -> str | None:
    """An ISO 8601 time for the API, which wants a zone: one without is taken as UTC."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--{name} {value!r} is not an ISO 8601 time like 2026-12-03 or 2026-12-03T10:00Z"
        ) from None
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).isoformat()


@audit.command("list")
@click.option("--since", default=None, metavar="ISO", help="Events at or after (UTC if no zone).")
@click.option("--until", default=None, metavar="ISO", help="Events before (UTC if no zone).")
@click.option("--actor", default=None, help="Only this actor, e.g. cli or api_key:ID.")
@click.option("--action", default=None, help="Only this action, e.g. token.create.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="At most N events (the oldest that match). Default: all.",
)
@api_options
@reported
def audit_list(
    since: str | None,
    until: str | None,
    actor: str | None,
    action: str | None,
    limit: int | None,
    api: str | None,
    output: str,
) -> None:
    """List audit events, oldest first."""
    params = {
        "since": _instant(since, "since"),
        "until": _instant(until, "until"),
        "actor": actor,
        "action": action,
        "limit": min(PAGE, limit or PAGE),
    }
    events: list[dict[str, Any]] = []
    for event in client_for(api).items("/audit_events", params):
        events.append(event)
        if limit is not None and len(events) >= limit:
            break
    if output == "json":
        print_json(events)
        return
    print_table(
        ["SEQ", "AT", "ACTOR", "ACTION", "TARGET", "DETAIL"],
        (
            [
                cell(e.get("seq")),
                cell(e.get("at"))[:19].replace("T", " "),
                cell(e.get("actor")),
                cell(e.get("action")),
                cell(e.get("target")),
                cell(e.get("detail")),
            ]
            for e in events
        ),
    )


@audit.command("verify")
@api_options
@reported
def audit_verify(api: str | None, output: str) -> None:
    """Check the whole hash chain: any edit, deletion or reordering is found.

    Exit status 1, naming the first bad event, when the chain is broken.
    """
    result = client_for(api).get("/audit_events/verify")
    if not isinstance(result, dict):
        raise RelayError("the control plane answered the audit verification with a non-object")
    if output == "json":
        print_json(result)
        if result.get("intact") is not True:
            sys.exit(1)
        return
    if result.get("intact") is not True:
        code = result.get("code")
        err = error_from_code(
            code if isinstance(code, str) else AuditChainBroken.code,
            f"the audit chain is broken at seq {cell(result.get('first_bad_seq'))}: "
            f"{cell(result.get('message'))} ({cell(result.get('events'))} events before "
            "it verify)",
        )
        fail(err)
    click.echo(
        f"audit log intact: {cell(result.get('events'))} events checked; head seq "
        f"{cell(result.get('head_seq'))}, hash {cell(result.get('head_hash'))}"
    )
    click.echo(
        "keep the head hash elsewhere: a log cut at its tail is only found against a head "
        "recorded earlier",
        err=True,
    )


# -- registration --------------------------------------------------------------------------


def register(main: click.Group) -> None:
    """Add these commands to the ``relay`` group (relay/cli.py calls this)."""
    for command in (login, logout, accounts, credentials, api_keys, sessions, endpoints, audit):
        main.add_command(command)
