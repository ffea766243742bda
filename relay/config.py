"""Edge configuration: defaults, an optional YAML file, then command-line flags.

Every key is documented in docs/configuration.md (a test keeps the two in step). Unknown
keys are errors that list the valid ones (a typo must not silently fall back to a
default). Relative paths in a file are relative to the file's folder, not to wherever
the edge happens to be started; paths given as flags are relative to the working
directory, as a shell user expects.
"""

from __future__ import annotations

import difflib
import math
import os
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from relay._fastpath import MAX_ENDPOINT_SERIES
from relay.edge.ports import PortRange
from relay.errors import ConfigError
from relay.mux import MuxConfig


def default_data_dir() -> Path:
    env = os.environ.get("RELAY_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "relay"


#: At most this many worker processes (``workers``).
MAX_WORKERS = 256
#: The largest ``http_max_head`` with several workers (relay/cluster/handoff.py carries
#: at most 160 KiB with a visitor: the head and one 16 KiB read past it, with room).
MAX_HANDED_HEAD = 128 * 1024


@dataclass(frozen=True)
class EdgeConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    #: Agents connect here (TLS).
    listen: str = "0.0.0.0:7000"
    #: TCP endpoints are allocated from this range and bound on ``tcp_bind``.
    tcp_ports: PortRange = field(default_factory=lambda: PortRange(20000, 20999))
    tcp_bind: str = "0.0.0.0"
    #: Host name or address shown in endpoint URLs.
    public_host: str = "127.0.0.1"
    region: str = "local"
    #: Extra DNS names / IPs for the agent-link certificate issued by the local CA.
    cert_names: tuple[str, ...] = ()
    #: Operator-provided certificate for the agent link (replaces the local CA's).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: An agent must authenticate within this many seconds of connecting.
    handshake_timeout: float = 10.0
    #: The token and audit database's URL; "" is SQLite in ``data_dir``.
    store: str = ""
    #: A `relay control` process to ask instead of a store of the edge's own ("": none);
    #: the edge authenticates with the API key in ``control_key_file`` (scope ``edge``).
    control_url: str = ""
    control_key_file: Path | None = None
    #: The CA that signed the control plane's HTTPS certificate ("" : the system's).
    control_ca_file: Path | None = None
    #: How long an endpoint whose agent vanished stays reserved for that token.
    reclaim_grace: float = 60.0
    #: A source (IPv4 address, IPv6 /64) that fails to authenticate this many times
    #: within ``auth_failure_window`` seconds is refused for ``auth_block_time`` seconds;
    #: 0 turns this off.
    auth_failure_limit: int = 10
    auth_failure_window: float = 60.0
    auth_block_time: float = 300.0
    max_endpoints_per_session: int = 64
    max_sessions: int = 10_000
    #: What one account may hold of this edge process (relay/edge/account_limits.py):
    #: no token fills the edge for every other account. 0 turns a limit off.
    max_sessions_per_account: int = 1_000
    max_endpoints_per_account: int = 4_000
    max_tcp_ports_per_account: int = 100
    #: How often live sessions' credentials are checked against the control plane: a
    #: revoked or expired token, or a suspended account, ends its sessions within this
    #: (plus a round trip). Changes made through this edge's API are acted on at once,
    #: and with cluster_redis every node hears of them at once: the poll is the net.
    credential_check_interval: float = 1.0
    #: SIGTERM: how long live streams may take to finish.
    drain_timeout: float = 30.0
    #: HTTP and TLS (https termination + tls passthrough) listeners; "" disables one.
    http_listen: str = "0.0.0.0:8080"
    https_listen: str = "0.0.0.0:8443"
    #: Random and ``--subdomain`` names live under this domain: <name>.<base_domain>.
    base_domain: str = "localhost"
    #: Port numbers shown in URLs (0: the listener's own port; 80/443 are left out).
    http_public_port: int = 0
    https_public_port: int = 0
    http_max_head: int = 16 * 1024
    http_max_headers: int = 100
    http_max_body: int = 0  # 0: no cap
    http_header_timeout: float = 10.0
    http_idle_timeout: float = 120.0
    #: Plain-HTTP requests for a name served only over HTTPS get a 308 redirect.
    https_redirect: bool = True
    #: Certificates for https endpoints: "local" (the edge's CA, on demand), "acme", "files".
    cert_issuer: str = "local"
    acme_directory: str = ""
    acme_email: str = ""
    acme_ca_bundle: Path | None = None
    acme_challenge: str = "http-01"
    #: With acme: certificate orders one account may start in 3 hours (renewals are free);
    #: 0: no quota. Under workers each has its share, as of the CA's orders.
    cert_orders_per_account: int = 30
    cert_file: Path | None = None
    key_file: Path | None = None
    #: /metrics, /healthz, /readyz; never a visitor or agent port ("" disables it).
    admin_listen: str = "127.0.0.1:9190"
    #: Endpoints (the first N names bound) with metric series of their own; 0: none.
    metrics_endpoint_labels: int = 0
    #: Worker processes under one supervisor (relay/cluster/): "auto" (what
    #: load_edge_config gives when neither the file nor the command line says) is one per
    #: core this process may use. 1 runs no supervisor (an EdgeConfig built in-process).
    workers: int = 1
    #: A cluster of edge nodes (docs/scaling.md): the Redis URL of their shared presence
    #: ("": this edge is on its own). A visitor for a name another node of this region
    #: holds is carried there; one held only in another region gets 421 RLY_631.
    cluster_redis: str = ""
    #: Links from other nodes (TLS, certificates from the cluster CA on both ends):
    #: HOST:PORT to listen on, and the address other nodes dial ("": cluster_listen).
    cluster_listen: str = ""
    cluster_advertise: str = ""
    #: This node's name, in the cluster and to agents of protocol 2, which tell PoPs
    #: apart by it ("": :func:`node_name`'s default).
    node_id: str = ""
    #: A directory whose ca/ holds the cluster CA, the same on every node (created on
    #: first start when missing; default: <data_dir>/cluster).
    cluster_ca_dir: Path | None = None
    #: One line per request (http, https) and per connection (tcp, tls): "" off, "-"
    #: stderr, else a file appended to.
    access_log: str = ""
    #: "text" or "json", for the access log and every other log line.
    log_format: str = "text"
    #: debug, info, warning or error: the least severe log line written.
    log_level: str = "info"
    mux: MuxConfig = field(default_factory=MuxConfig)

    def listen_address(self) -> tuple[str, int]:
        return parse_host_port(self.listen, what="listen")


def node_name(node_id: str, listen: str) -> str:
    """A PoP's name (``EdgeConfig.node_id``): the one given, else the host's name and the
    agent listener (``edge-1/0.0.0.0:7000``), the same in every worker and at every
    address the PoP answers on."""
    return node_id or f"{socket.gethostname()}/{listen}"


def parse_host_port(text: str, *, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} {text!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


LOG_LEVELS = ("debug", "info", "warning", "error")

#: Keys whose values are paths (relative ones in a file are relative to the file).
PATH_KEYS = frozenset(
    (
        "data_dir",
        "tls_cert",
        "tls_key",
        "acme_ca_bundle",
        "cert_file",
        "key_file",
        "control_key_file",
        "control_ca_file",
        "cluster_ca_dir",
    )
)


def unknown_keys_error(where: str, unknown: set[str], known: set[str]) -> ConfigError:
    """``where: unknown setting 'lisen' (did you mean 'listen'?); valid: …``."""
    parts = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    return ConfigError(
        f"{where}: unknown setting {', '.join(parts)}; valid settings: {', '.join(sorted(known))}"
    )


def _convert(name: str, kind: Any, value: Any) -> Any:
    try:
        if name == "mux":
            if not isinstance(value, dict):
                raise ConfigError("mux must be a mapping")
            known = {f.name for f in fields(MuxConfig)}
            unknown = set(value) - known
            if unknown:
                raise unknown_keys_error("mux", unknown, known)
            return MuxConfig(**{k: _whole(f"mux.{k}", v) for k, v in value.items()})
        if name == "tcp_ports":
            return PortRange.parse(str(value))
        if name in PATH_KEYS:
            return None if value is None else Path(str(value)).expanduser()
        if name == "cert_names":
            if not isinstance(value, list):
                raise ConfigError("cert_names must be a list")
            return tuple(str(v) for v in value)
        if name in (
            "handshake_timeout",
            "reclaim_grace",
            "auth_failure_window",
            "auth_block_time",
            "drain_timeout",
            "credential_check_interval",
            "http_header_timeout",
            "http_idle_timeout",
        ):
            return float(value)
        if name in (
            "max_endpoints_per_session",
            "max_sessions",
            "max_sessions_per_account",
            "max_endpoints_per_account",
            "max_tcp_ports_per_account",
            "auth_failure_limit",
            "http_public_port",
            "https_public_port",
            "http_max_head",
            "http_max_headers",
            "http_max_body",
            "metrics_endpoint_labels",
            "cert_orders_per_account",
        ):
            return _whole(name, value)
        if name == "workers":
            if str(value).strip().lower() == "auto":
                return usable_cores()
            return _whole(name, value)
        if name == "log_level":
            return str(value).lower()
        if name == "https_redirect":
            if isinstance(value, bool):
                return value
            return str(value).lower() in ("1", "true", "yes", "on")
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _whole(name: str, value: Any) -> int:
    """A whole number from the file: ``true`` (YAML's boolean, which ``int`` takes as 1)
    and ``0.5`` (which ``int`` cuts to 0, turning a limit off) are refused, not bent."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, not {value!r}") from None
    return int(value)


#: cgroup v2's CPU quota of this process's group: "max PERIOD" or "QUOTA PERIOD".
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity), at most its cgroup's CPU quota
    (a container given 2 CPUs of 64 gets 2 workers), within 1..MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        pass  # no cgroup v2 quota to honour
    return max(1, min(cores, MAX_WORKERS))


def load_edge_config(path: Path | None, overrides: dict[str, Any]) -> EdgeConfig:
    """Defaults ← file ← overrides (flags that were given; None means not given)."""
    config = EdgeConfig()
    values: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config {path} must be a mapping")
        raw = {str(k).replace("-", "_"): v for k, v in raw.items()}
        known = {f.name for f in fields(EdgeConfig)}
        unknown = set(raw) - known
        if unknown:
            raise unknown_keys_error(str(path), unknown, known)
        for key in PATH_KEYS & set(raw):
            if raw[key] is not None:
                given = Path(str(raw[key])).expanduser()
                raw[key] = given if given.is_absolute() else path.parent / given
        # A file name too, unless it says "off" or "stderr"; it stays a string.
        if raw.get("access_log") not in (None, "", "-"):
            given = Path(str(raw["access_log"])).expanduser()
            raw["access_log"] = str(given if given.is_absolute() else path.parent / given)
        values.update(raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    # An edge uses every core it may run on unless told otherwise (EdgeConfig's own
    # default stays 1: an edge built in-process, as the demo's, runs no supervisor).
    values.setdefault("workers", "auto")
    converted = {k: _convert(k, None, v) for k, v in values.items()}
    config = replace(config, **converted)
    config.listen_address()  # validate early
    for what, value in (
        ("http_listen", config.http_listen),
        ("https_listen", config.https_listen),
        ("admin_listen", config.admin_listen),
    ):
        if value:
            parse_host_port(value, what=what)
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(
            f"log_level must be one of {', '.join(LOG_LEVELS)}, not {config.log_level!r}"
        )
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be text or json, not {config.log_format!r}")
    if not 0 <= config.metrics_endpoint_labels <= MAX_ENDPOINT_SERIES:
        raise ConfigError(
            f"metrics_endpoint_labels must be 0..{MAX_ENDPOINT_SERIES}, "
            f"not {config.metrics_endpoint_labels}"
        )
    if not 1 <= config.workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be 1..{MAX_WORKERS} or auto, not {config.workers}")
    if config.workers > 1 and config.http_max_head > MAX_HANDED_HEAD:
        # What a worker read before routing travels with a handed-over visitor, bounded.
        raise ConfigError(
            f"http_max_head must be at most {MAX_HANDED_HEAD} with several workers, "
            f"not {config.http_max_head}"
        )
    if config.cluster_redis and not config.cluster_listen:
        raise ConfigError("cluster_redis needs cluster_listen: where other nodes link to this one")
    if config.cluster_redis and config.workers > 1:
        # Each worker is a node of its own, linked to at cluster_listen's port + its index.
        for key in ("cluster_listen", "cluster_advertise"):
            value = getattr(config, key)
            if value and parse_host_port(value, what=key)[1] == 0:
                raise ConfigError(
                    f"{key} needs a port with several workers: worker i links at port + i"
                )
    for key in ("cluster_listen", "cluster_advertise"):
        if getattr(config, key):
            parse_host_port(getattr(config, key), what=key)
    # The supervisor sums the workers' listeners: it must know where they are.
    if (
        config.workers > 1
        and config.admin_listen
        and parse_host_port(config.admin_listen, what="admin_listen")[1] == 0
    ):
        raise ConfigError(
            "admin_listen needs a port with several workers: the edge's is the port, "
            "worker i's the port + 1 + i"
        )
    if config.control_url and config.control_key_file is None:
        raise ConfigError("control_url needs control_key_file: the edge's API key (scope edge)")
    if config.control_url and config.store:
        raise ConfigError(
            "control_url and store exclude each other: the control plane has the store"
        )
    if config.auth_failure_limit < 0:
        raise ConfigError(f"auth_failure_limit must be >= 0, not {config.auth_failure_limit}")
    for key in ("auth_failure_window", "auth_block_time", "credential_check_interval"):
        if not getattr(config, key) > 0:
            raise ConfigError(f"{key} must be more than 0 seconds, not {getattr(config, key)}")
    if config.cert_issuer not in ("local", "acme", "files"):
        raise ConfigError(f"cert_issuer must be local, acme or files, not {config.cert_issuer!r}")
    for key in (
        "cert_orders_per_account",
        "max_sessions_per_account",
        "max_endpoints_per_account",
        "max_tcp_ports_per_account",
    ):
        if getattr(config, key) < 0:
            raise ConfigError(f"{key} must be >= 0 (0: no limit), not {getattr(config, key)}")
    return config


# --- reloading (SIGHUP) ------------------------------------------------------------------

#: Keys a reload applies while the edge runs (docs/configuration.md, "Reloading", says
#: when each takes effect). Every EdgeConfig field is in exactly one of these two sets: a
#: test fails on a new field that is in neither, so nobody adds a key without deciding.
LIVE_KEYS = frozenset(
    (
        "credential_check_interval",
        "log_format",
        "log_level",
        "access_log",
        "http_max_head",
        "http_max_headers",
        "http_max_body",
        "http_header_timeout",
        "http_idle_timeout",
        "https_redirect",
        "http_public_port",
        "https_public_port",
        "max_sessions",
        "max_endpoints_per_session",
        "max_sessions_per_account",
        "max_endpoints_per_account",
        "max_tcp_ports_per_account",
        "reclaim_grace",
        "auth_failure_limit",
        "auth_failure_window",
        "auth_block_time",
        "drain_timeout",
        "cert_file",
        "key_file",
        "cert_orders_per_account",
    )
)

#: Keys that take a restart: a reload that finds them changed names them and keeps the
#: running value. Listeners and the data directory are bound resources; the agent-link
#: certificate's names and limits, the region and the multiplexer are what agents already
#: negotiated or verified; the issuer and the base domain decide names and certificates
#: endpoints already hold.
RESTART_KEYS = frozenset(
    (
        "data_dir",
        "store",
        "control_url",
        "control_key_file",
        "control_ca_file",
        "listen",
        "tcp_ports",
        "tcp_bind",
        "public_host",
        "region",
        "cert_names",
        "tls_cert",
        "tls_key",
        "handshake_timeout",
        "http_listen",
        "https_listen",
        "base_domain",
        "cert_issuer",
        "acme_directory",
        "acme_email",
        "acme_ca_bundle",
        "acme_challenge",
        "admin_listen",
        "metrics_endpoint_labels",
        "mux",
        "workers",
        "cluster_redis",
        "cluster_listen",
        "cluster_advertise",
        "node_id",
        "cluster_ca_dir",
    )
)


@dataclass(frozen=True)
class ConfigChange:
    """What a reload from ``old`` to ``new`` does: ``config`` is the one to run with (the
    new live values, the running values of the rest), ``applied`` the live keys that
    changed, ``kept`` the restart-only keys that changed and keep their running value."""

    config: EdgeConfig
    applied: tuple[str, ...]
    kept: tuple[str, ...]


def config_change(old: EdgeConfig, new: EdgeConfig) -> ConfigChange:
    names = [f.name for f in fields(EdgeConfig)]
    changed = [n for n in names if getattr(old, n) != getattr(new, n)]
    unclassified = set(names) - LIVE_KEYS - RESTART_KEYS
    if unclassified:  # a programming error, caught by the unit tests
        raise AssertionError(f"EdgeConfig fields neither live nor restart-only: {unclassified}")
    kept = tuple(n for n in changed if n in RESTART_KEYS)
    merged = replace(new, **{n: getattr(old, n) for n in kept})
    return ConfigChange(merged, tuple(n for n in changed if n in LIVE_KEYS), kept)
