"""The agent config file: one session, several endpoints (``relay start web ssh``).

.. code-block:: yaml

    version: 1
    agent:
      edge: edge.example.com:7000
      authtoken: rly_...            # or env RELAY_TOKEN
      ca_file: /path/ca.pem         # or pin: sha256:...
      server_name: edge.example.com
      # edge: [eu1.example.com:7000, eu2.example.com:7000]   # several PoPs
      # region: eu                  # only PoPs of this region
      # links: 2                    # connections, each serving a share of visitors
      # grace_period: 30            # seconds live streams get on a stop (SIGTERM, Ctrl-C)
    endpoints:
      - name: web
        kind: http                  # tcp | http | https | tls
        upstream: http://localhost:8080
        subdomain: myapp
        host_header: rewrite        # keep (default) | rewrite | a literal value
        proxy_protocol: v2          # none (default) | v1 | v2
        pool: false                 # share the name with the token's other --pool agents
      - name: ssh
        kind: tcp
        upstream: 22
        remote_port: 20022

Every mistake is a :class:`AgentConfigError` (code RLY_401) whose message starts with the
file and the key path, e.g. ``agent.yml: endpoints[1].upstrem: unknown key (did you mean
'upstream'?)``. Unknown keys are errors: a typo must never fall back to a default silently.

The authtoken comes from the file when it is there, else from ``RELAY_TOKEN``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml

from relay.agent.client import EndpointSpec
from relay.errors import ConfigError
from relay.protocol import MAX_HOST_HEADER, is_host_header_value

__all__ = [
    "CONFIG_VERSION",
    "ENDPOINT_KINDS",
    "AgentConfigError",
    "AgentFile",
    "AgentSection",
    "EndpointConfig",
    "Upstream",
    "load_agent_config",
    "parse_agent_config",
    "parse_upstream_url",
    "select",
]

CONFIG_VERSION = 1
ENDPOINT_KINDS = ("tcp", "http", "https", "tls")
PROXY_PROTOCOL_VERSIONS = ("none", "v1", "v2")
TOKEN_ENV = "RELAY_TOKEN"

Scheme = Literal["tcp", "http", "https"]
Kind = Literal["tcp", "http", "https", "tls"]
ProxyProtocol = Literal["none", "v1", "v2"]

_TOP_KEYS = ("version", "agent", "endpoints")
_AGENT_KEYS = (
    "edge",
    "authtoken",
    "ca_file",
    "pin",
    "server_name",
    "admin_listen",
    "region",
    "links",
    "grace_period",
)
#: At most this many links (the edge refuses more).
MAX_LINKS = 16
#: The longest grace period a stop may give live streams (an hour).
MAX_GRACE_PERIOD = 3600.0
_ENDPOINT_KEYS = (
    "name",
    "kind",
    "upstream",
    "subdomain",
    "domain",
    "host_header",
    "proxy_protocol",
    "upstream_tls_verify",
    "remote_port",
    "pool",
)
#: Which optional keys make sense for which kind (``name``, ``kind``, ``upstream``,
#: ``proxy_protocol`` are for all).
_KEYS_FOR_KIND: dict[str, frozenset[str]] = {
    "subdomain": frozenset({"http", "https"}),
    "domain": frozenset({"http", "https", "tls"}),
    "host_header": frozenset({"http", "https"}),
    "upstream_tls_verify": frozenset({"http", "https"}),
    "remote_port": frozenset({"tcp"}),
}

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PIN_RE = re.compile(r"sha256:[0-9a-fA-F]{64}")


class AgentConfigError(ConfigError):
    """A config file mistake; ``key_path`` is where (``endpoints[1].upstream``), or ``""``."""

    def __init__(self, message: str, *, key_path: str = "", code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.key_path = key_path


def _fail(path: str, problem: str) -> NoReturn:
    raise AgentConfigError(f"{path}: {problem}" if path else problem, key_path=path)


# --------------------------------------------------------------------------------------
# the result


@dataclass(frozen=True)
class Upstream:
    """Where the agent dials. ``scheme`` ``tcp`` is raw bytes; ``http``/``https`` is what
    the agent speaks to the local service for HTTP endpoints."""

    scheme: Scheme
    host: str
    port: int

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.hostport if self.scheme == "tcp" else f"{self.scheme}://{self.hostport}"


@dataclass(frozen=True)
class AgentSection:
    edge: tuple[str, int] | None = None
    authtoken: str | None = None
    ca_file: Path | None = None
    pin: str | None = None
    server_name: str | None = None
    #: HOST:PORT of the agent's admin listener (/metrics, /healthz, /readyz, /status).
    admin_listen: str = ""
    #: Every PoP given (``edge`` is the first); one unless ``edge`` is a list.
    edges: tuple[tuple[str, int], ...] = ()
    #: Only PoPs of this region ("": any); connections to the edge (``--links``).
    region: str = ""
    links: int = 1
    #: Seconds live streams may take to finish when the agent is stopped.
    grace_period: float = 30.0


@dataclass(frozen=True)
class EndpointConfig:
    name: str
    kind: Kind
    upstream: Upstream
    subdomain: str | None = None
    domain: str | None = None
    #: ``"keep"``, ``"rewrite"`` or a literal Host value.
    host_header: str = "keep"
    proxy_protocol: ProxyProtocol = "none"
    upstream_tls_verify: bool = True
    #: TCP only; 0 lets the edge choose.
    remote_port: int = 0
    #: Share the name or port with the token's other agents that pool it.
    pool: bool = False

    def spec(self) -> EndpointSpec:
        """The :class:`relay.agent.client.EndpointSpec` the agent binds (its conventions:
        ``""`` for "not set", ``keep`` and ``none``; upstream scheme ``tcp`` or ``https``)."""
        return EndpointSpec(
            kind=self.kind,
            upstream_host=self.upstream.host,
            upstream_port=self.upstream.port,
            remote_port=self.remote_port,
            name=self.name,
            domain=self.domain or "",
            subdomain=self.subdomain or "",
            host_header="" if self.host_header == "keep" else self.host_header,
            upstream_scheme="https" if self.upstream.scheme == "https" else "tcp",
            upstream_tls_verify=self.upstream_tls_verify,
            proxy_protocol="" if self.proxy_protocol == "none" else self.proxy_protocol,
            pool=self.pool,
        )


@dataclass(frozen=True)
class AgentFile:
    agent: AgentSection
    endpoints: tuple[EndpointConfig, ...]

    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.endpoints)


# --------------------------------------------------------------------------------------
# upstreams


def _host_ok(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return _hostname_ok(host.lower())


def _hostname_ok(host: str) -> bool:
    if not host or len(host) > 253 or not host.isascii():
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return all(_LABEL_RE.fullmatch(label) for label in labels)


def _split_host_port(text: str, original: str) -> tuple[str, str | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` → (host, port text or None)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise AgentConfigError(f"{original!r}: missing ']' after an IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AgentConfigError(
                f"{original!r}: {host!r} in brackets is not an IPv6 address"
            ) from None
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise AgentConfigError(f"{original!r}: unexpected {rest!r} after ']'")
        return host, rest[1:]
    if text.count(":") > 1:
        raise AgentConfigError(f"{original!r}: write an IPv6 upstream in brackets, e.g. '[::1]:80'")
    host, sep, port = text.partition(":")
    return host, port if sep else None


def _port_value(text: str, original: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise AgentConfigError(f"{original!r}: port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise AgentConfigError(f"{original!r}: port {port} is not in 1..65535")
    return port


def parse_upstream_url(text: str | int, *, default_scheme: Scheme = "tcp") -> Upstream:
    """``8080`` · ``localhost:8080`` · ``[::1]:80`` · ``http://localhost:8080`` ·
    ``https://localhost:8443`` · ``tcp://10.0.0.2:22``.

    A bare port means 127.0.0.1; ``http://`` defaults to port 80 and ``https://`` to 443;
    without a scheme ``default_scheme`` applies and a port is required. Raises
    :class:`AgentConfigError` (a :class:`ConfigError`, RLY_401) whose message names the input.
    """
    if isinstance(text, bool):
        raise AgentConfigError(f"{text!r} is not an upstream")
    original = text
    if isinstance(text, int):
        text = str(text)
    if not isinstance(text, str):
        raise AgentConfigError(f"{original!r} is not an upstream")
    text = text.strip()
    if not text:
        raise AgentConfigError("upstream is empty")
    scheme: Scheme = default_scheme
    explicit = False
    if "://" in text:
        given, _, text = text.partition("://")
        lowered = given.lower()
        if lowered not in ("tcp", "http", "https"):
            raise AgentConfigError(f"{original!r}: scheme {given!r} is not tcp, http or https")
        scheme = "tcp" if lowered == "tcp" else "http" if lowered == "http" else "https"
        explicit = True
        for mark, what in (("/", "a path"), ("?", "a query"), ("#", "a fragment")):
            if mark in text:
                if mark == "/" and text.endswith("/") and text.count("/") == 1:
                    text = text[:-1]
                    continue
                raise AgentConfigError(f"{original!r}: an upstream URL cannot have {what}")
        if "@" in text:
            raise AgentConfigError(f"{original!r}: an upstream URL cannot carry credentials")
    if text.isascii() and text.isdigit():
        return Upstream(scheme, "127.0.0.1", _port_value(text, str(original)))
    host, port_text = _split_host_port(text, str(original))
    if not host or not _host_ok(host):
        raise AgentConfigError(f"{original!r}: {host!r} is not a host name or IP address")
    if port_text is None:
        if explicit and scheme == "http":
            port = 80
        elif explicit and scheme == "https":
            port = 443
        else:
            raise AgentConfigError(f"{original!r}: no port (write HOST:PORT, or just PORT)")
    else:
        port = _port_value(port_text, str(original))
    return Upstream(scheme, host if ":" in host else host.lower(), port)


# --------------------------------------------------------------------------------------
# validation helpers


def _check_keys(mapping: Mapping[Any, Any], allowed: Sequence[str], path: str) -> None:
    for key in mapping:
        where = f"{path}.{key}" if path else str(key)
        if not isinstance(key, str):
            _fail(where, "keys must be strings")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            _fail(where, f"unknown key{hint}; expected one of: {', '.join(allowed)}")


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        _fail(path, f"must be a mapping, not {_type_name(value)}")
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, f"must be a string, not {_type_name(value)}")
    if not value.strip():
        _fail(path, "must not be empty")
    return value.strip()


def _choice(value: Any, path: str, choices: Sequence[str]) -> str:
    text = value if isinstance(value, str) else None
    if text is None or text not in choices:
        shown = repr(value) if value is not None else "empty"
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close and text is not None else ""
        _fail(path, f"{shown} is not one of: {', '.join(choices)}{hint}")
    return text


# --------------------------------------------------------------------------------------
# sections


def _agent_section(raw: Any, env: Mapping[str, str]) -> AgentSection:
    data = _mapping(raw, "agent") if raw is not None else {}
    _check_keys(data, _AGENT_KEYS, "agent")
    edges: list[tuple[str, int]] = []
    if data.get("edge") is not None:
        given = data["edge"]
        many = isinstance(given, list)
        if many and not 1 <= len(given) <= 16:
            _fail("agent.edge", "a list of 1 to 16 HOST:PORT")
        for i, item in enumerate(given if many else [given]):
            where = f"agent.edge[{i}]" if many else "agent.edge"
            edges.append(_edge_address(_string(item, where), where))
    edge = edges[0] if edges else None
    region = ""
    if data.get("region") is not None:
        region = _string(data["region"], "agent.region")
    links = 1
    if data.get("links") is not None:
        value = data["links"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LINKS:
            _fail("agent.links", f"must be a number 1..{MAX_LINKS}, not {value!r}")
        links = value
    grace_period = 30.0
    if data.get("grace_period") is not None:
        value = data["grace_period"]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= MAX_GRACE_PERIOD
        ):
            _fail("agent.grace_period", f"must be seconds 0..{MAX_GRACE_PERIOD:g}, not {value!r}")
        grace_period = float(value)
    token: str | None = None
    if data.get("authtoken") is not None:
        token = _string(data["authtoken"], "agent.authtoken")
    elif env.get(TOKEN_ENV):
        token = env[TOKEN_ENV].strip()
    ca_file: Path | None = None
    if data.get("ca_file") is not None:
        ca_file = Path(_string(data["ca_file"], "agent.ca_file")).expanduser()
    pin: str | None = None
    if data.get("pin") is not None:
        pin = _string(data["pin"], "agent.pin")
        if not _PIN_RE.fullmatch(pin):
            _fail("agent.pin", "must be 'sha256:' and 64 hex digits, as printed by 'relay edge'")
        pin = pin.lower()
    if ca_file is not None and pin is not None:
        _fail("agent", "give ca_file or pin, not both")
    server_name: str | None = None
    if data.get("server_name") is not None:
        server_name = _string(data["server_name"], "agent.server_name").lower()
        if not _hostname_ok(server_name):
            _fail("agent.server_name", f"{server_name!r} is not a host name")
    admin_listen = ""
    if data.get("admin_listen") is not None:
        admin_listen = _string(data["admin_listen"], "agent.admin_listen")
    return AgentSection(
        edge=edge,
        authtoken=token,
        ca_file=ca_file,
        pin=pin,
        server_name=server_name,
        admin_listen=admin_listen,
        edges=tuple(edges),
        region=region,
        links=links,
        grace_period=grace_period,
    )


def _edge_address(text: str, where: str) -> tuple[str, int]:
    try:
        host, port_text = _split_host_port(text, text)
        if port_text is None:
            raise AgentConfigError(f"{text!r}: no port (write HOST:PORT)")
        port = _port_value(port_text, text)
    except AgentConfigError as exc:
        _fail(where, exc.message)
    if not _host_ok(host):
        _fail(where, f"{host!r} is not a host name or IP address")
    return host, port


def _endpoint(raw: Any, index: int) -> EndpointConfig:
    path = f"endpoints[{index}]"
    data = _mapping(raw, path)
    _check_keys(data, _ENDPOINT_KEYS, path)
    for key in ("name", "kind", "upstream"):
        if data.get(key) is None:
            _fail(f"{path}.{key}", "required")
    name = _string(data["name"], f"{path}.name")
    if not _NAME_RE.fullmatch(name):
        _fail(
            f"{path}.name",
            f"{name!r}: use letters, digits, '.', '_' or '-' (at most 63, starting with a "
            "letter or digit)",
        )
    kind = _choice(data["kind"], f"{path}.kind", ENDPOINT_KINDS)
    for key, kinds in _KEYS_FOR_KIND.items():
        if data.get(key) is not None and kind not in kinds:
            allowed = "/".join(k for k in ENDPOINT_KINDS if k in kinds)
            _fail(f"{path}.{key}", f"only for {allowed} endpoints, not {kind}")

    # upstream
    http_like = kind in ("http", "https")
    try:
        upstream = parse_upstream_url(
            data["upstream"], default_scheme="http" if http_like else "tcp"
        )
    except AgentConfigError as exc:
        _fail(f"{path}.upstream", exc.message)
    if not http_like and upstream.scheme != "tcp":
        _fail(
            f"{path}.upstream",
            f"{upstream.scheme}:// upstreams are for http/https endpoints; "
            f"a {kind} endpoint forwards bytes (write HOST:PORT)",
        )
    if http_like and upstream.scheme == "tcp":
        _fail(f"{path}.upstream", "an http/https endpoint needs an http:// or https:// upstream")

    # names on the edge
    subdomain = domain = None
    if data.get("subdomain") is not None:
        subdomain = _string(data["subdomain"], f"{path}.subdomain").lower()
        if not _LABEL_RE.fullmatch(subdomain):
            _fail(
                f"{path}.subdomain",
                f"{subdomain!r} is not one DNS label (a-z, 0-9, '-', at most 63)",
            )
    if data.get("domain") is not None:
        domain = _string(data["domain"], f"{path}.domain").lower().rstrip(".")
        bare = domain[2:] if domain.startswith("*.") else domain
        if not _hostname_ok(bare) or "." not in bare or "*" in bare:
            _fail(
                f"{path}.domain",
                f"{domain!r} is not a full host name (or a wildcard like '*.example.com')",
            )
    if subdomain is not None and domain is not None:
        _fail(path, "give subdomain or domain, not both")
    if kind == "tls" and domain is None:
        _fail(f"{path}.domain", "required for tls endpoints (routing is by the TLS server name)")

    # options
    host_header = "keep"
    if data.get("host_header") is not None:
        host_header = _string(data["host_header"], f"{path}.host_header")
        if host_header not in ("keep", "rewrite") and not is_host_header_value(host_header):
            _fail(
                f"{path}.host_header",
                f"must be keep, rewrite or a Host value: a host[:port] of 1 to {MAX_HOST_HEADER} "
                "visible ASCII characters, without spaces",
            )
    proxy_protocol = "none"
    if "proxy_protocol" in data:
        proxy_protocol = _choice(
            data["proxy_protocol"], f"{path}.proxy_protocol", PROXY_PROTOCOL_VERSIONS
        )
    verify = True
    if data.get("upstream_tls_verify") is not None:
        value = data["upstream_tls_verify"]
        if not isinstance(value, bool):
            _fail(f"{path}.upstream_tls_verify", f"must be true or false, not {value!r}")
        if upstream.scheme != "https":
            _fail(f"{path}.upstream_tls_verify", "only for https:// upstreams")
        verify = value
    remote_port = 0
    if data.get("remote_port") is not None:
        value = data["remote_port"]
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(f"{path}.remote_port", f"must be a number, not {_type_name(value)}")
        if not 1 <= value <= 65535:
            _fail(f"{path}.remote_port", f"{value} is not in 1..65535 (leave it out to get any)")
        remote_port = value

    pool = False
    if data.get("pool") is not None:
        if not isinstance(data["pool"], bool):
            _fail(f"{path}.pool", f"must be true or false, not {data['pool']!r}")
        pool = data["pool"]

    return EndpointConfig(
        name=name,
        kind=_as_kind(kind),
        upstream=upstream,
        subdomain=subdomain,
        domain=domain,
        host_header=host_header,
        proxy_protocol=_as_pp(proxy_protocol),
        upstream_tls_verify=verify,
        remote_port=remote_port,
        pool=pool,
    )


def _as_kind(text: str) -> Kind:
    for kind in ("tcp", "http", "https", "tls"):
        if text == kind:
            return kind
    raise AssertionError(text)


def _as_pp(text: str) -> ProxyProtocol:
    for version in ("none", "v1", "v2"):
        if text == version:
            return version
    raise AssertionError(text)


# --------------------------------------------------------------------------------------
# entry points


def parse_agent_config(data: Any, *, env: Mapping[str, str] | None = None) -> AgentFile:
    """Validate an already-loaded document (what ``yaml.safe_load`` returns)."""
    env = os.environ if env is None else env
    if data is None:
        _fail("", "the file is empty (expected 'version: 1', 'agent:' and 'endpoints:')")
    top = _mapping(data, "(top level)")
    _check_keys(top, _TOP_KEYS, "")
    if "version" not in top:
        _fail("version", f"required (this agent reads version {CONFIG_VERSION})")
    version = top["version"]
    if isinstance(version, bool) or version != CONFIG_VERSION:
        _fail(
            "version", f"{version!r} is not supported (this agent reads version {CONFIG_VERSION})"
        )
    agent = _agent_section(top.get("agent"), env)
    raw_endpoints = top.get("endpoints")
    if raw_endpoints is None:
        _fail("endpoints", "required: a list of endpoints")
    if not isinstance(raw_endpoints, list):
        _fail("endpoints", f"must be a list, not {_type_name(raw_endpoints)}")
    if not raw_endpoints:
        _fail("endpoints", "the list is empty")
    endpoints = tuple(_endpoint(item, i) for i, item in enumerate(raw_endpoints))
    first: dict[str, int] = {}
    for i, endpoint in enumerate(endpoints):
        key = endpoint.name.lower()
        if key in first:
            _fail(
                f"endpoints[{i}].name",
                f"{endpoint.name!r} is already used by endpoints[{first[key]}]",
            )
        first[key] = i
    _check_public_names(endpoints)
    return AgentFile(agent=agent, endpoints=endpoints)


def _check_public_names(endpoints: Sequence[EndpointConfig]) -> None:
    """Two endpoints of one session can't ask for the same public name or port. Names are
    routed per listener: ``http`` by Host on the plain-HTTP port, ``https`` and ``tls`` by
    the TLS server name on the TLS port — so only http + https may share a name."""
    seen: dict[tuple[str, str, str], int] = {}
    for i, endpoint in enumerate(endpoints):
        router = {"http": "http", "https": "sni", "tls": "sni", "tcp": "tcp"}[endpoint.kind]
        claims: list[tuple[str, str]] = []
        if endpoint.subdomain is not None:
            claims.append(("subdomain", endpoint.subdomain))
        if endpoint.domain is not None:
            claims.append(("domain", endpoint.domain))
        if endpoint.remote_port:
            claims.append(("remote_port", str(endpoint.remote_port)))
        for key, value in claims:
            claim = (router, key, value)
            if claim in seen:
                _fail(
                    f"endpoints[{i}].{key}",
                    f"{value!r} is already used by endpoints[{seen[claim]}]",
                )
            seen[claim] = i


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # '<<: *anchor' — flatten_mapping lets explicit keys win, as intended
        key = loader.construct_object(key_node)
        if isinstance(key, str) and key in seen:
            mark = key_node.start_mark
            raise AgentConfigError(
                f"line {mark.line + 1}: key {key!r} appears twice in one mapping"
            )
        if isinstance(key, str):
            seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_agent_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> AgentFile:
    """Read and validate an agent config file; every error names the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except AgentConfigError as exc:
        raise AgentConfigError(f"{path}: {exc.message}") from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}: "
        problem = getattr(exc, "problem", None) or str(exc)
        raise AgentConfigError(f"{path}: {where}not valid YAML: {problem}") from None
    try:
        return parse_agent_config(data, env=env)
    except AgentConfigError as exc:
        raise AgentConfigError(f"{path}: {exc.message}", key_path=exc.key_path) from None


def select(endpoints: Iterable[EndpointConfig], names: Sequence[str]) -> tuple[EndpointConfig, ...]:
    """The endpoints ``relay start NAME...`` asks for, in the order asked (duplicates
    dropped); no names means all of them. Unknown names are a :class:`AgentConfigError`
    that suggests the nearest name and lists the ones the file has."""
    pool = tuple(endpoints)
    if not names:
        return pool
    by_name = {e.name: e for e in pool}
    by_lower = {e.name.lower(): e for e in pool}
    chosen: list[EndpointConfig] = []
    for name in names:
        endpoint = by_name.get(name) or by_lower.get(name.lower())
        if endpoint is None:
            close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            have = ", ".join(by_name) or "none"
            raise AgentConfigError(f"no endpoint named {name!r}{hint}; the file has: {have}")
        if endpoint not in chosen:
            chosen.append(endpoint)
    return tuple(chosen)
