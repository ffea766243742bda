"""The CLI of reserved names: ``relay domains list|reserve|release`` and ``relay addrs
list|reserve|release``, each a call or two through the control plane's REST API, built
as relay/cli_control.py's commands are (with the helpers of relay/cli_api.py).

relay/cli.py imports this module at its end to register the commands, so (as
cli_control) it imports relay/cli.py only inside functions, never at load time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import click

from relay.cli_api import (
    ACCOUNT_OPTION,
    api_options,
    cell,
    client_for,
    listed,
    minute,
    print_fields,
    print_json,
    print_table,
    reported,
    segment,
)

__all__ = ["register"]

DOMAIN_FIELDS = ("id", "domain", "account_id", "certificate_mode", "region", "created_at")
ADDR_FIELDS = ("id", "port", "account_id", "region", "created_at")

REGION_OPTION = click.option(
    "--region",
    default=None,
    metavar="REGION",
    help=(
        "Pin it to a region, e.g. eu: only edges of that region (relay edge --region) bind "
        "it; endpoints serving it elsewhere end at once."
    ),
)


# -- domains -------------------------------------------------------------------------------


@click.group()
def domains() -> None:
    """Reserved domains: names that only their account's agents may bind.

    \b
    A name outside the edge's base domain, or any wildcard, is bound only by the account
    that reserved it; names under the base domain are first come, first served unless
    reserved. Examples:
        relay domains reserve app.example.com --account acc_…
        relay domains reserve '*.example.com' --certificate manual
    """


def _domain_rows(items: Iterable[Mapping[str, Any]]) -> Iterable[list[str]]:
    for d in items:
        keys = ("id", "domain", "account_id", "certificate_mode", "region")
        yield [*(cell(d.get(k)) for k in keys), minute(d.get("created_at"))]


@domains.command("list")
@ACCOUNT_OPTION
@api_options
@reported
def domains_list(account_id: str | None, api: str | None, output: str) -> None:
    """List reserved domains (a member's key: its own account's)."""
    items = listed(client_for(api), "/reserved_domains", {"account_id": account_id})
    if output == "json":
        print_json(items)
        return
    print_table(
        ["ID", "DOMAIN", "ACCOUNT", "CERTIFICATE", "REGION", "CREATED"], _domain_rows(items)
    )


@domains.command("reserve")
@click.argument("domain")
@ACCOUNT_OPTION
@click.option(
    "--certificate",
    "certificate_mode",
    type=click.Choice(["auto", "manual"]),
    default="auto",
    show_default=True,
    help="auto: the edge issues the certificate; manual: the operator supplies its files.",
)
@REGION_OPTION
@api_options
@reported
def domains_reserve(
    domain: str,
    account_id: str | None,
    certificate_mode: str,
    region: str | None,
    api: str | None,
    output: str,
) -> None:
    """Reserve DOMAIN (app.example.com, or a wildcard such as '*.example.com')."""
    body = {
        "domain": domain,
        "account_id": account_id,
        "certificate_mode": certificate_mode,
        "region": region,
    }
    made = client_for(api).post("/reserved_domains", json=body)
    if output == "json":
        print_json(made)
        return
    click.echo(
        f"domain {cell(made.get('domain'))} reserved for account "
        f"{cell(made.get('account_id'))} as {cell(made.get('id'))}"
    )


@domains.command("show")
@click.argument("reservation_id")
@api_options
@reported
def domains_show(reservation_id: str, api: str | None, output: str) -> None:
    """Show one reserved domain."""
    found = client_for(api).get(f"/reserved_domains/{segment(reservation_id)}")
    if output == "json":
        print_json(found)
    else:
        print_fields(found, DOMAIN_FIELDS)


@domains.command("release")
@click.argument("reservation_id")
@api_options
@reported
def domains_release(reservation_id: str, api: str | None, output: str) -> None:
    """Release a reserved domain (by its id, rd_…). Endpoints bound on it keep serving
    until their agent binds again."""
    released = client_for(api).delete(f"/reserved_domains/{segment(reservation_id)}")
    if output == "json":
        print_json(released)
        return
    click.echo(f"domain {cell(released.get('domain'))} released ({cell(released.get('id'))})")


# -- TCP addresses -------------------------------------------------------------------------


@click.group()
def addrs() -> None:
    """Reserved TCP addresses: ports that only their account's agents may bind, and that
    the edge never hands out at random.

    \b
    Example:
        relay addrs reserve 20022 --account acc_…
        relay tcp 22 --remote-port 20022 …
    """


def _addr_rows(items: Iterable[Mapping[str, Any]]) -> Iterable[list[str]]:
    for a in items:
        keys = ("id", "port", "account_id", "region")
        yield [*(cell(a.get(k)) for k in keys), minute(a.get("created_at"))]


@addrs.command("list")
@ACCOUNT_OPTION
@api_options
@reported
def addrs_list(account_id: str | None, api: str | None, output: str) -> None:
    """List reserved TCP addresses (a member's key: its own account's)."""
    items = listed(client_for(api), "/reserved_addrs", {"account_id": account_id})
    if output == "json":
        print_json(items)
        return
    print_table(["ID", "PORT", "ACCOUNT", "REGION", "CREATED"], _addr_rows(items))


@addrs.command("reserve")
@click.argument("port", type=click.IntRange(1, 65535))
@ACCOUNT_OPTION
@REGION_OPTION
@api_options
@reported
def addrs_reserve(
    port: int, account_id: str | None, region: str | None, api: str | None, output: str
) -> None:
    """Reserve TCP PORT (1 to 65535) on the edges."""
    body = {"port": port, "account_id": account_id, "region": region}
    made = client_for(api).post("/reserved_addrs", json=body)
    if output == "json":
        print_json(made)
        return
    click.echo(
        f"tcp port {cell(made.get('port'))} reserved for account "
        f"{cell(made.get('account_id'))} as {cell(made.get('id'))}"
    )


@addrs.command("show")
@click.argument("reservation_id")
@api_options
@reported
def addrs_show(reservation_id: str, api: str | None, output: str) -> None:
    """Show one reserved TCP address."""
    found = client_for(api).get(f"/reserved_addrs/{segment(reservation_id)}")
    if output == "json":
        print_json(found)
    else:
        print_fields(found, ADDR_FIELDS)


@addrs.command("release")
@click.argument("reservation_id")
@api_options
@reported
def addrs_release(reservation_id: str, api: str | None, output: str) -> None:
    """Release a reserved TCP address (by its id, ra_…)."""
    released = client_for(api).delete(f"/reserved_addrs/{segment(reservation_id)}")
    if output == "json":
        print_json(released)
        return
    click.echo(f"tcp port {cell(released.get('port'))} released ({cell(released.get('id'))})")


def register(main: click.Group) -> None:
    """Add ``domains`` and ``addrs`` to the ``relay`` group (relay/cli.py calls this)."""
    for command in (domains, addrs):
        main.add_command(command)
