"""`relay control`: run the control plane as its own process (relay/control_process.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from relay.cli_options import data_dir_option, store_option
from relay.config import default_data_dir
from relay.control_process import DEFAULT_LISTEN, ControlConfig, serve


@click.command("control")
@data_dir_option
@store_option
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    help="Address of the API (and /healthz, /readyz, /metrics).",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Serve HTTPS with this certificate chain (needed for edges on other hosts).",
)
@click.option(
    "--tls-key",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The private key of --tls-cert.",
)
@click.option(
    "--base-domain",
    "base_domains",
    multiple=True,
    envvar="RELAY_BASE_DOMAIN",
    help="The base domain of the edges this control plane serves (repeat for several): "
    "their names are every account's, first come, so only an operator may reserve a "
    "wildcard over one.",
)
def control_command(
    data_dir: Path | None,
    store_url: str | None,
    listen: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    base_domains: tuple[str, ...],
) -> None:
    """Run the control plane apart from any edge: the REST API for operators, and for
    edges started with --control-url."""
    from relay.cli import run_async
    from relay.stop_signals import install_stop_handlers

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    config = ControlConfig(
        data_dir=data_dir or default_data_dir(),
        store=store_url or "",
        listen=listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        base_domains=tuple(d.strip().lower().rstrip(".") for d in base_domains if d.strip()),
    )

    async def main() -> None:
        stopped = asyncio.Event()
        install_stop_handlers(stopped.set)
        await serve(config, stopped)

    run_async(main)


def register(main: click.Group) -> None:
    main.add_command(control_command)
