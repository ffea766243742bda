"""The ``relay`` command: run an edge, manage tokens, expose local services."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click

from relay import __version__
from relay.cli_options import data_dir_option, store_option
from relay.errors import (
    AuthError,
    BindError,
    ConfigError,
    DataDirError,
    ListenError,
    RelayError,
)
from relay.logs import setup_logging
from relay.protocol import MAX_HOST_HEADER, is_host_header_value
from relay.stop_signals import install_stop_handlers

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_BIND = 4


def fail(err: RelayError) -> NoReturn:
    click.echo(err.one_line(), err=True)
    if isinstance(err, AuthError):
        sys.exit(EXIT_AUTH)
    if isinstance(err, BindError | ListenError):
        sys.exit(EXIT_BIND)
    if isinstance(err, ConfigError):
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_ERROR)


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run on uvloop; RelayError becomes one line with its code, not a traceback."""
    import uvloop

    try:
        uvloop.run(main())
    except RelayError as err:
        fail(err)
    except KeyboardInterrupt:
        pass


@click.group(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        "show_default": True,
    }
)
@click.version_option(__version__, "-V", "--version", prog_name="relay")
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="How much to log on stderr.",
)
@click.option(
    "--log-format",
    default=None,
    type=click.Choice(["text", "json"]),
    help="Log lines as text, or one JSON object per line (also the edge's access log). "
    "Default text.",
)
@click.pass_context
def main(ctx: click.Context, log_level: str, log_format: str | None) -> None:
    """relay — give a local service a public address through your own edge.

    \b
    Run an edge (a point of presence) on a public machine:
        relay token create --description laptop      # prints a token, once
        relay edge --listen 0.0.0.0:7000
    Then, on the private machine, expose a local port:
        relay tcp 22 --edge edge.example.com:7000 --token rly_… --ca-file ca.pem
    """
    setup_logging(log_level, log_format or "text")
    ctx.obj = {"log_format": log_format}


# --- edge ---------------------------------------------------------------------------------


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="YAML file with edge settings (flags override it).",
)
@data_dir_option
@click.option(
    "--listen", default=None, help="Agent listener HOST:PORT (TLS). Default 0.0.0.0:7000."
)
@click.option(
    "--tcp-ports", default=None, help="Range for TCP endpoints, e.g. 20000-20999 (the default)."
)
@click.option("--tcp-bind", default=None, help="Address TCP endpoints listen on. Default 0.0.0.0.")
@click.option("--public-host", default=None, help="Host name shown in endpoint URLs.")
@click.option("--region", default=None, help="Region id of this PoP, e.g. eu.")
@click.option(
    "--reclaim-grace",
    type=float,
    default=None,
    help="Seconds an endpoint stays reserved for its token after the agent vanished.",
)
@click.option(
    "--http-listen",
    default=None,
    help="Plain HTTP listener HOST:PORT for http endpoints ('' disables). Default 0.0.0.0:8080.",
)
@click.option(
    "--https-listen",
    default=None,
    help="TLS listener HOST:PORT for https (terminated) and tls (passthrough) "
    "endpoints ('' disables). Default 0.0.0.0:8443.",
)
@click.option(
    "--base-domain",
    default=None,
    help="Random and --subdomain names are <name>.<BASE_DOMAIN>. Default localhost.",
)
@click.option(
    "--http-header-timeout",
    type=float,
    default=None,
    help="Seconds a visitor may take to send a request head (slowloris guard).",
)
@click.option(
    "--http-idle-timeout",
    type=float,
    default=None,
    help="Seconds an HTTP connection may stay silent both ways.",
)
@click.option(
    "--https-redirect/--no-https-redirect",
    default=None,
    help="Redirect plain-HTTP requests for names served only over HTTPS (default: on).",
)
@click.option(
    "--cert-issuer",
    type=click.Choice(["local", "acme", "files"]),
    default=None,
    help="Where https certificates come from: the edge's CA (default), ACME, files.",
)
@click.option("--acme-directory", default=None, help="ACME directory URL (RFC 8555).")
@click.option("--acme-email", default=None, help="Contact e-mail for the ACME account.")
@click.option(
    "--acme-ca-bundle",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="CA bundle that signs the ACME server's own HTTPS certificate.",
)
@click.option(
    "--acme-challenge",
    type=click.Choice(["http-01", "tls-alpn-01"]),
    default=None,
    help="How ACME validates names: HTTP on the HTTP listener, or TLS-ALPN on the TLS port. "
    "Default http-01.",
)
@click.option(
    "--cert-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="With --cert-issuer files: the certificate chain (PEM) served for https endpoints.",
)
@click.option(
    "--key-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="With --cert-issuer files: the private key (PEM) of --cert-file.",
)
@click.option(
    "--admin-listen",
    default=None,
    help="Admin listener HOST:PORT for /metrics, /healthz and /readyz; keep it off the "
    "public interfaces ('' disables). Default 127.0.0.1:9190.",
)
@click.option(
    "--metrics-endpoint-labels",
    type=int,
    default=None,
    metavar="N",
    help="Give the first N endpoint names bound their own metric series (an endpoint "
    "label; about 10 series each). Default 0: per-kind series only.",
)
@click.option(
    "--store",
    default=None,
    envvar="RELAY_STORE",
    metavar="URL",
    help="The token and audit database: postgresql://USER:PASSWORD@HOST/DB. Default: "
    "SQLite in the data directory.",
)
@click.option(
    "--control-url",
    default=None,
    envvar="RELAY_CONTROL_URL",
    metavar="URL",
    help="A `relay control` process to verify agents' tokens with, instead of a store of "
    "this edge's own.",
)
@click.option(
    "--control-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The API key (scope edge) this edge presents to --control-url.",
)
@click.option(
    "--control-ca-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="CA certificate of --control-url's HTTPS certificate, if not a system-trusted one.",
)
@click.option(
    "--access-log",
    default=None,
    help="One line per request (http, https) and per connection (tcp, tls): '-' for "
    "stderr, or a file to append to. Default: off.",
)
@click.option(
    "--drain-timeout",
    type=float,
    default=None,
    help="Seconds live streams may take to finish on SIGTERM.",
)
@click.option(
    "--workers",
    default=None,
    help="Edge processes, each on every listener (SO_REUSEPORT), under one supervisor; "
    "'auto' (the default): one per core this process may use; 1 runs no supervisor.",
)
@click.option(
    "--cluster-redis",
    default=None,
    help="Join a cluster of edge nodes whose presence is in this Redis (redis://HOST:PORT).",
)
@click.option(
    "--cluster-listen", default=None, help="HOST:PORT for links from other nodes of the cluster."
)
@click.option(
    "--cluster-advertise",
    default=None,
    help="HOST:PORT other nodes dial to reach this one. Default: --cluster-listen.",
)
@click.option(
    "--node-id",
    default=None,
    help="This node's name, in the cluster and to agents (which tell PoPs apart by it);"
    " default: host name/--listen.",
)
@click.option(
    "--credential-check-interval",
    type=float,
    default=None,
    help="Seconds between checks of live sessions' credentials (revocations, suspensions). "
    "Default 1.",
)
@click.pass_context
def edge(ctx: click.Context, /, config_file: Path | None, **flags: Any) -> None:
    """Start an edge (PoP): accept agents over TLS and serve their endpoints.

    On first start it creates its data directory, a local CA and the agent-link
    certificate; agents trust it with --ca-file DATA_DIR/ca/ca.pem or --pin.
    SIGTERM drains: no new visitors, GoAway to agents, live streams get --drain-timeout.
    """
    from relay.cluster.place import WorkerPlace
    from relay.config import EdgeConfig, load_edge_config
    from relay.edge.server import Edge
    from relay.logs import use_format, use_level

    flags["log_format"] = (ctx.obj or {}).get("log_format")
    flags["log_level"] = _given_log_level(ctx)
    source = str(config_file) if config_file is not None else "the command line"

    async def serve() -> None:
        config = load_edge_config(config_file, flags)
        use_level(config.log_level)  # the config file may ask for another level …
        use_format(config.log_format)  # … and for JSON
        place = WorkerPlace.from_env()
        if place is None and config.workers > 1:
            from relay.cli_workers import supervise

            exit_code.append(await supervise(config, install_stop_handlers, reload_config))
            return
        if place is not None:
            from relay.cli_workers import name_worker_logs

            name_worker_logs(place.index)
        server = Edge(config, place)
        # Signals first: one that arrives while the edge starts must drain it (SIGTERM)
        # or wait for it (SIGHUP: it kills by default, and operators and logrotate send
        # it), never kill it half-started.
        stopped = asyncio.Event()
        install_stop_handlers(stopped.set)
        hangup = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, hangup.set)
        await server.start()
        assert server.address is not None
        if server.worker is not None:
            server.worker.ready(edge_banner(server))  # the supervisor shows worker 0's
        else:
            for line in edge_banner(server):
                click.echo(line, err=True)
        server.reloader = lambda: server.reload_from(reload_config, source)
        reloads = loop.create_task(_reload_on(hangup, server.reloader))
        await stopped.wait()
        reloads.cancel()
        click.echo("draining…", err=True)
        await server.stop()

    def reload_config() -> EdgeConfig:
        return load_edge_config(config_file, flags)  # the same file, the same flags on top

    exit_code: list[int] = []
    run_async(serve)
    if exit_code and exit_code[0]:
        sys.exit(exit_code[0])  # a worker's, that could not start (it said why)


def _given_log_level(ctx: click.Context) -> str | None:
    """The global --log-level if it was given (it then beats the file's log_level)."""
    parent = ctx.parent
    if parent is None:
        return None
    if parent.get_parameter_source("log_level") in (None, click.core.ParameterSource.DEFAULT):
        return None
    level = parent.params.get("log_level")
    return str(level) if level else None


async def _reload_on(hangup: asyncio.Event, reload: Callable[[], Any]) -> None:
    """Reload on each SIGHUP (several while one runs make one more): until cancelled."""
    while True:
        await hangup.wait()
        hangup.clear()
        try:
            reload()
        except Exception:  # a reload's bug must not end the edge, nor later reloads
            logging.getLogger("relay.edge").exception("reload failed; the edge runs on")


def edge_banner(server: Any) -> list[str]:
    """What an operator needs from a starting edge: every listener, and how agents
    trust it."""
    config = server.config
    host, port = server.address
    lines = [
        f"relay edge {__version__} (region {config.region})",
        f"  agents (TLS)       {_address(host, port)}   --listen",
        f"  tcp endpoints      {config.tcp_bind} ports {config.tcp_ports}   --tcp-ports",
    ]
    web = server.web
    if web is not None and web.http_port is not None:
        lines.append(
            f"  http endpoints     {_listen_host(config.http_listen)}:{web.http_port}   "
            f"--http-listen  (names under {config.base_domain})"
        )
    if web is not None and web.https_port is not None:
        lines.append(
            f"  https/tls (SNI)    {_listen_host(config.https_listen)}:{web.https_port}   "
            f"--https-listen  (certificates: {config.cert_issuer})"
        )
    if server.admin is not None and server.admin.address is not None:
        admin_host, admin_port = server.admin.address
        if server.worker is not None:  # the banner is worker 0's: the edge's is before it
            admin_port -= 1 + server.worker.index
        lines.append(
            f"  admin              {_address(admin_host, admin_port)}   --admin-listen  "
            "(/metrics /healthz /readyz)"
        )
    if server.ca_file is not None:
        lines.append(f"agents trust it with: --ca-file {server.ca_file}")
    lines.append(f"or pin it with:        --pin {server.fingerprint}")
    lines.append(f"listening for agents on {_address(host, port)}")
    return lines


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen_host(listen: str) -> str:
    return listen.rpartition(":")[0].strip("[]") or "0.0.0.0"


# --- tokens -------------------------------------------------------------------------------


@main.group()
def token() -> None:
    """Create, list and revoke agent authtokens (stored only as salted hashes)."""


def _open_store(data_dir: Path | None, store_url: str | None, *, create: bool = False) -> Any:
    """The edge's token store. Only ``token create`` may make a new data directory: a
    list or a revoke on a mistyped --data-dir must say so, not act on an empty store."""
    from relay.config import default_data_dir
    from relay.edge.server import open_store, prepare_data_dir

    directory = data_dir or default_data_dir()
    if store_url:
        prepare_data_dir(directory)  # the pepper lives there
        return directory, open_store(directory, store_url)
    if not create and not (directory / "relay.db").is_file():
        raise DataDirError(
            f"no edge data directory at {directory} (no relay.db): pass the --data-dir "
            "`relay edge` uses, or set RELAY_DATA_DIR"
        )
    prepare_data_dir(directory)
    return directory, open_store(directory)


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Past this a time computed from now overflows the calendar; no credential lives so long.
MAX_DURATION_S = 100 * 366 * 86400


def parse_duration(text: str) -> timedelta:
    unit = text[-1:]
    if unit not in DURATION_UNITS or not (text[:-1].isascii() and text[:-1].isdigit()):
        raise ConfigError(f"duration {text!r} is not like 30m, 12h or 90d")
    seconds = int(text[:-1]) * DURATION_UNITS[unit]
    if seconds > MAX_DURATION_S:
        raise ConfigError(f"duration {text!r} is longer than 100 years")
    return timedelta(seconds=seconds)


@token.command("create")
@data_dir_option
@store_option
@click.option("--description", default="", help="What the token is for (shown in lists).")
@click.option("--expires-in", default=None, help="Lifetime, e.g. 12h or 90d. Default: none.")
@click.option(
    "--allow",
    "allow",
    multiple=True,
    help=(
        "Bind ACL pattern (repeatable): '*' (any TCP port, any name under the edge's base "
        "domain), 'tcp:20000-20100', 'app.example.com', '*.example.com' (that wildcard and "
        "the names one label under it), 'https:…'. Default '*'."
    ),
)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def token_create(
    data_dir: Path | None,
    store_url: str | None,
    description: str,
    expires_in: str | None,
    allow: tuple[str, ...],
    output: str,
) -> None:
    """Create a token and print it. It is shown once and cannot be recovered."""
    from relay.control.tokens import load_or_create_pepper

    try:
        directory, store = _open_store(data_dir, store_url, create=True)
        expires_at = datetime.now(UTC) + parse_duration(expires_in) if expires_in else None
        record, plaintext = store.create_token(
            description=description,
            expires_at=expires_at,
            bind_acl=list(allow) or None,
            pepper=load_or_create_pepper(directory),
        )
        store.close()
    except RelayError as err:
        fail(err)
    if output == "json":
        click.echo(json.dumps({"id": record.id, "token": plaintext}))
    else:
        click.echo(f"token id {record.id} created; it is shown only now:", err=True)
        click.echo(plaintext)


@token.command("list")
@data_dir_option
@store_option
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def token_list(data_dir: Path | None, store_url: str | None, output: str) -> None:
    """List tokens (ids and metadata; secrets are never stored)."""
    try:
        _, store = _open_store(data_dir, store_url)
        records = store.list_tokens()
        store.close()
    except RelayError as err:
        fail(err)
    rows = [
        {
            "id": r.id,
            "status": str(r.status),
            "description": r.description,
            "created_at": r.created_at.isoformat(),
            "expires_at": r.expires_at.isoformat() if r.expires_at else None,
            "last_used_at": r.last_used_at.isoformat() if r.last_used_at else None,
            "allow": list(r.bind_acl),
        }
        for r in records
    ]
    if output == "json":
        click.echo(json.dumps(rows))
        return
    header = f"{'ID':<14} {'STATUS':<8} {'CREATED':<17} {'EXPIRES':<17} {'LAST USED':<17} "
    click.echo(header + "ALLOW  DESCRIPTION")
    for row in rows:
        click.echo(
            f"{row['id']:<14} {row['status']:<8} {_minute(row['created_at']):<17} "
            f"{_minute(row['expires_at']):<17} {_minute(row['last_used_at']):<17} "
            f"{','.join(row['allow']) or '-'}  {row['description']}"
        )


def _minute(iso: str | None) -> str:
    """``2026-12-02 23:41`` (UTC) for a table; ``-`` for none."""
    return iso[:16].replace("T", " ") if iso else "-"


@token.command("revoke")
@data_dir_option
@store_option
@click.argument("token_id")
def token_revoke(data_dir: Path | None, store_url: str | None, token_id: str) -> None:
    """Revoke a token by id: agents using it can no longer connect."""
    try:
        _, store = _open_store(data_dir, store_url)
        record = store.revoke_token(token_id)
        store.close()
    except RelayError as err:
        fail(err)
    click.echo(f"token {record.id} revoked")


# --- agent --------------------------------------------------------------------------------


def agent_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every agent command shares: where the edge is and how to trust it."""
    options = [
        click.option(
            "--edge",
            "edge_addr",
            envvar="RELAY_EDGE",
            required=True,
            help="Edge agent address HOST:PORT (env RELAY_EDGE); several PoPs as "
            "HOST:PORT,HOST:PORT (a name with several addresses counts as several): the "
            "agent uses the one with the lowest round-trip time and fails over to the next.",
        ),
        click.option(
            "--region",
            default="",
            show_default=False,
            help="Use only PoPs of this region (the edge's --region); default: any.",
        ),
        click.option(
            "--token",
            envvar="RELAY_TOKEN",
            required=True,
            help="Authtoken from 'relay token create' (env RELAY_TOKEN).",
        ),
        click.option(
            "--ca-file",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            envvar="RELAY_CA_FILE",
            help="Trust the edge's certificate through this CA file.",
        ),
        click.option(
            "--pin",
            envvar="RELAY_PIN",
            default=None,
            help="Trust the edge by certificate fingerprint (sha256:…), printed by 'relay edge'.",
        ),
        click.option("--server-name", default=None, help="TLS name of the edge if not its host."),
        click.option(
            "--admin-listen",
            default=None,
            envvar="RELAY_ADMIN_LISTEN",
            help="Serve /metrics, /healthz, /readyz and /status (for `relay status`) on this "
            "HOST:PORT, e.g. 127.0.0.1:9191. Default: off.",
        ),
        click.option(
            "--links",
            type=click.IntRange(1, 16),
            default=1,
            help="Connections to the edge, each serving a share of the visitors (on an edge "
            "with --workers, usually on different cores); losing one moves new visitors to "
            "the others at once.",
        ),
        click.option(
            "--grace-period",
            type=click.FloatRange(0, 3600),
            default=30.0,
            help="On SIGTERM or Ctrl-C, seconds live visitors' streams may take to finish "
            "(new visitors go to other links or pool members at once); a second signal "
            "stops at once.",
        ),
        click.option(
            "--pool",
            is_flag=True,
            help="Share the endpoint's name or port with other agents of the same token "
            "that bind it with --pool too: visitors go round robin to them.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def run_agent(
    endpoints: list[Any],
    edge_addr: str,
    token: str,
    ca_file: Path | None,
    pin: str | None,
    server_name: str | None,
    admin_listen: str | None = None,
    links: int = 1,
    pool: bool = False,
    region: str = "",
    grace_period: float = 30.0,
) -> None:
    import dataclasses

    from relay.agent.client import AgentOptions
    from relay.agent.links import LinkedAgent
    from relay.config import parse_host_port

    try:
        edges = tuple(
            parse_host_port(one.strip(), what="--edge")
            for one in edge_addr.split(",")
            if one.strip()
        )
        if not edges:
            raise ConfigError("--edge names no address")
        edge_host, edge_port = edges[0]
        admin = parse_host_port(admin_listen, what="--admin-listen") if admin_listen else None
    except RelayError as err:
        fail(err)
    options = AgentOptions(
        edge_host=edge_host,
        edge_port=edge_port,
        token=token,
        endpoints=tuple(dataclasses.replace(e, pool=True) if pool else e for e in endpoints),
        edges=edges,
        region=region,
        ca_file=ca_file,
        pin=pin,
        server_name=server_name,
        admin_listen=admin,
        grace_period=grace_period,
    )

    async def serve() -> None:
        agent = LinkedAgent(options, links, status=lambda line: click.echo(line))
        install_stop_handlers(agent.stop, lambda: agent.stop(now=True))
        await agent.run()

    run_async(serve)


def spec_for(kind: str, upstream: str, **fields: Any) -> Any:
    from relay.agent.client import EndpointSpec
    from relay.agent.config import parse_upstream_url

    try:
        target = parse_upstream_url(upstream)
    except RelayError as err:
        fail(err)
    scheme = "https" if target.scheme == "https" else "tcp"
    return EndpointSpec(kind, target.host, target.port, upstream_scheme=scheme, **fields)


def _host_header(value: str) -> str:
    """``--host-header`` as the edge takes it (relay/protocol.py), refused here first."""
    if value and value != "rewrite" and not is_host_header_value(value):
        raise click.BadParameter(
            f"must be 'rewrite' or a host[:port] of 1 to {MAX_HOST_HEADER} visible ASCII "
            "characters, without spaces"
        )
    return value


PROXY_PROTOCOL_OPTION = click.option(
    "--proxy-protocol",
    type=click.Choice(["v1", "v2"]),
    default=None,
    help="Send a PROXY protocol header with the visitor's address to the upstream.",
)


@main.command()
@click.argument("upstream")
@agent_options
@click.option(
    "--remote-port",
    type=int,
    default=0,
    help="Public port to ask for; 0 (default) lets the edge pick one.",
)
@PROXY_PROTOCOL_OPTION
def tcp(upstream: str, remote_port: int, proxy_protocol: str | None, **agent: Any) -> None:
    """Expose a local TCP port: UPSTREAM is PORT or HOST:PORT.

    \b
    Example:
        relay tcp 22 --edge edge.example.com:7000 --token rly_… --ca-file ca.pem
    Without --ca-file or --pin the system trust store is used.
    """
    spec = spec_for("tcp", upstream, remote_port=remote_port, proxy_protocol=proxy_protocol or "")
    run_agent([spec], **agent)


@main.command()
@click.argument("upstream")
@agent_options
@click.option(
    "--domain",
    default="",
    show_default=False,
    help="Full hostname to serve, e.g. app.example.com or *.example.com (reserved for the "
    "token's account: relay domains reserve).",
)
@click.option(
    "--subdomain",
    default="",
    show_default=False,
    help="Serve <SUBDOMAIN>.<edge base domain>; default: a random name.",
)
@click.option(
    "--https/--no-https",
    "use_https",
    default=True,
    show_default=True,
    help="Serve over HTTPS (certificate issued by the edge) instead of plain HTTP.",
)
@click.option(
    "--host-header",
    default="",
    show_default=False,
    callback=lambda ctx, param, value: _host_header(value),
    help="'rewrite' sends the upstream's host as Host; any other value (a host[:port]) is "
    "sent literally; default: the visitor's Host.",
)
@PROXY_PROTOCOL_OPTION
@click.option(
    "--insecure-upstream",
    is_flag=True,
    help="Do not verify the certificate of an https:// upstream.",
)
def http(
    upstream: str,
    domain: str,
    subdomain: str,
    use_https: bool,
    host_header: str,
    proxy_protocol: str | None,
    insecure_upstream: bool,
    **agent: Any,
) -> None:
    """Expose a local web service: UPSTREAM is PORT, HOST:PORT or a URL
    (http://localhost:8080, https://localhost:8443, [::1]:80).

    \b
    Examples:
        relay http 8080 --edge edge.example.com:7000 --token rly_…
        relay http 8080 --subdomain myapp --no-https
        relay http https://localhost:8443 --domain app.example.com --host-header rewrite
    """
    spec = spec_for(
        "https" if use_https else "http",
        upstream,
        domain=domain,
        subdomain=subdomain,
        host_header=host_header,
        proxy_protocol=proxy_protocol or "",
        upstream_tls_verify=not insecure_upstream,
    )
    run_agent([spec], **agent)


@main.command()
@click.argument("upstream")
@agent_options
@click.option("--domain", required=True, help="Hostname (SNI) to serve, e.g. db.example.com.")
@PROXY_PROTOCOL_OPTION
def tls(upstream: str, domain: str, proxy_protocol: str | None, **agent: Any) -> None:
    """Expose a local TLS service end to end: the edge routes by SNI and never decrypts.

    The upstream terminates TLS with its own certificate and key.

    \b
    Example:
        relay tls 8443 --domain app.example.com --edge edge.example.com:7000 --token rly_…
    """
    spec = spec_for("tls", upstream, domain=domain, proxy_protocol=proxy_protocol or "")
    run_agent([spec], **agent)


@main.command()
@click.argument("names", nargs=-1)
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Agent config file (YAML) with an agent: block and endpoints:.",
)
def start(names: tuple[str, ...], config_file: Path) -> None:
    """Start endpoints from a config file in one session: all, or the NAMES given."""
    from relay.agent.config import load_agent_config, select

    try:
        loaded = load_agent_config(config_file)
        chosen = select(loaded.endpoints, list(names)) if names else list(loaded.endpoints)
    except RelayError as err:
        fail(err)
    specs = [e.spec() for e in chosen]
    agent = loaded.agent
    if not agent.authtoken:
        fail(ConfigError("no authtoken: set agent.authtoken or RELAY_TOKEN"))
    if agent.edge is None:
        fail(ConfigError("no edge address: set agent.edge"))
    edge_addr = ",".join(
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        for host, port in (agent.edges or (agent.edge,))
    )
    run_agent(
        specs,
        edge_addr,
        agent.authtoken,
        agent.ca_file,
        agent.pin,
        agent.server_name,
        agent.admin_listen or None,
        links=agent.links,
        region=agent.region,
        grace_period=agent.grace_period,
    )


@main.command()
@click.option(
    "--admin",
    default="127.0.0.1:9190",
    help="The admin listener to read: an edge's --admin-listen (its default) or an agent's.",
)
@click.option("--interval", type=float, default=2.0, help="Seconds between redraws.")
@click.option("--once", is_flag=True, help="Print one snapshot and exit (no redrawing).")
def status(admin: str, interval: float, once: bool) -> None:
    """A live view of an edge (sessions, endpoints, traffic, errors) or an agent (its
    endpoints and recent visitors), redrawn in place; Ctrl-C ends it."""
    from relay.status import watch

    try:
        watch(admin, interval=max(0.2, interval), once=once)
    except RelayError as err:
        fail(err)
    except KeyboardInterrupt:
        pass


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".relay-demo"),
    show_default=True,
)
def demo(data_dir: Path) -> None:
    """Start an edge, an agent and a small web service on loopback, all in one process."""
    from relay.demo import run_demo

    if logging.getLogger().level == logging.INFO:
        logging.getLogger("relay").setLevel(logging.WARNING)  # keep the demo's output readable

    run_async(lambda: run_demo(data_dir))


# The control plane's commands (login, accounts, credentials, api-keys, …).
from relay.cli_control import register as _register_control  # noqa: E402
from relay.cli_reserved import register as _register_reserved  # noqa: E402

_register_control(main)
_register_reserved(main)  # relay domains, relay addrs

# `relay control`: the control plane as a process of its own.
from relay.cli_serve_control import register as _register_serve_control  # noqa: E402

_register_serve_control(main)

# `relay keys`: key-encryption keys of secrets at rest (list, rotate, retire).
from relay.cli_keys import register as _register_keys  # noqa: E402

_register_keys(main)


if __name__ == "__main__":
    main()
