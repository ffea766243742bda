"""The agent config file: the happy path, upstream forms, and every error message shape."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from relay.agent.client import EndpointSpec
from relay.agent.config import (
    AgentConfigError,
    AgentSection,
    EndpointConfig,
    Upstream,
    load_agent_config,
    parse_agent_config,
    parse_upstream_url,
    select,
)
from relay.errors import ConfigError

PIN = "sha256:" + "ab" * 32

FULL = """\
version: 1
agent:
  edge: edge.example.com:7000
  authtoken: rly_abc_def
  pin: {pin}
  server_name: Edge.Example.com
endpoints:
  - name: web
    kind: http
    upstream: http://localhost:8080
    subdomain: MyApp
    host_header: rewrite
    proxy_protocol: v2
  - name: api
    kind: https
    upstream: https://localhost:8443
    domain: '*.example.com'
    upstream_tls_verify: false
  - name: ssh
    kind: tcp
    upstream: 22
    remote_port: 20022
  - name: passthrough
    kind: tls
    upstream: '[::1]:443'
    domain: tls.example.com
    proxy_protocol: v1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yml"
    path.write_text(textwrap.dedent(text))
    return path


def test_full_file(tmp_path: Path) -> None:
    config = load_agent_config(write(tmp_path, FULL.format(pin=PIN)), env={})
    assert config.agent == AgentSection(
        edge=("edge.example.com", 7000),
        authtoken="rly_abc_def",
        ca_file=None,
        pin=PIN,
        server_name="edge.example.com",
        edges=(("edge.example.com", 7000),),
    )
    web, api, ssh, tls = config.endpoints
    assert web == EndpointConfig(
        name="web",
        kind="http",
        upstream=Upstream("http", "localhost", 8080),
        subdomain="myapp",
        host_header="rewrite",
        proxy_protocol="v2",
    )
    assert api.domain == "*.example.com"
    assert api.upstream == Upstream("https", "localhost", 8443)
    assert api.upstream_tls_verify is False
    assert ssh.upstream == Upstream("tcp", "127.0.0.1", 22)
    assert ssh.remote_port == 20022
    assert ssh.spec() == EndpointSpec("tcp", "127.0.0.1", 22, 20022, "ssh")
    assert web.spec() == EndpointSpec(
        "http",
        "localhost",
        8080,
        name="web",
        subdomain="myapp",
        host_header="rewrite",
        upstream_scheme="tcp",
        proxy_protocol="v2",
    )
    assert api.spec().upstream_scheme == "https"
    assert api.spec().upstream_tls_verify is False
    assert api.spec().domain == "*.example.com"
    assert tls.upstream == Upstream("tcp", "::1", 443)
    assert str(tls.upstream) == "[::1]:443"
    assert tls.proxy_protocol == "v1"
    assert config.names() == ("web", "api", "ssh", "passthrough")


def test_token_from_env_when_file_has_none(tmp_path: Path) -> None:
    text = (
        "version: 1\nagent:\n  edge: 127.0.0.1:7000\n"
        "endpoints:\n- {name: a, kind: tcp, upstream: 1}\n"
    )
    path = write(tmp_path, text)
    assert load_agent_config(path, env={"RELAY_TOKEN": "rly_x_y"}).agent.authtoken == "rly_x_y"
    assert load_agent_config(path, env={}).agent.authtoken is None
    with_token = text.replace("agent:\n", "agent:\n  authtoken: rly_file\n")
    path = write(tmp_path, with_token)
    assert load_agent_config(path, env={"RELAY_TOKEN": "rly_env"}).agent.authtoken == "rly_file"


def test_agent_section_optional_and_ca_file(tmp_path: Path) -> None:
    config = parse_agent_config(
        {"version": 1, "endpoints": [{"name": "a", "kind": "tcp", "upstream": 1}]}, env={}
    )
    assert config.agent == AgentSection()
    config = parse_agent_config(
        {
            "version": 1,
            "agent": {"ca_file": "~/ca.pem", "edge": "[::1]:7000"},
            "endpoints": [{"name": "a", "kind": "tcp", "upstream": 1}],
        },
        env={},
    )
    assert config.agent.ca_file == Path("~/ca.pem").expanduser()
    assert config.agent.edge == ("::1", 7000)


def test_several_pops_a_region_links_and_a_pool() -> None:
    config = parse_agent_config(
        {
            "version": 1,
            "agent": {
                "edge": ["eu1.example.com:7000", "[::1]:7001"],
                "region": "eu",
                "links": 2,
                "grace_period": 5,
            },
            "endpoints": [{"name": "a", "kind": "tcp", "upstream": 1, "pool": True}],
        },
        env={},
    )
    agent = config.agent
    assert agent.edge == ("eu1.example.com", 7000)
    assert agent.edges == (("eu1.example.com", 7000), ("::1", 7001))
    assert (agent.region, agent.links, agent.grace_period) == ("eu", 2, 5.0)
    assert config.endpoints[0].spec().pool is True


@pytest.mark.parametrize(
    ("agent", "endpoint", "message"),
    [
        ({"edge": []}, {}, "agent.edge: a list of 1 to 16 HOST:PORT"),
        ({"edge": ["a:1", "b"]}, {}, "agent.edge[1]: 'b': no port"),
        ({"links": 0}, {}, "agent.links: must be a number 1..16, not 0"),
        ({"links": True}, {}, "agent.links: must be a number 1..16, not True"),
        ({"grace_period": -1}, {}, "agent.grace_period: must be seconds 0..3600, not -1"),
        ({"grace_period": "30s"}, {}, "agent.grace_period: must be seconds 0..3600, not '30s'"),
        ({}, {"pool": "yes"}, "endpoints[0].pool: must be true or false, not 'yes'"),
    ],
)
def test_pop_and_pool_mistakes(agent: Any, endpoint: Any, message: str) -> None:
    data = {
        "version": 1,
        "agent": agent,
        "endpoints": [{"name": "a", "kind": "tcp", "upstream": 1, **endpoint}],
    }
    with pytest.raises(AgentConfigError) as info:
        parse_agent_config(data, env={})
    assert str(info.value).startswith(message), str(info.value)


# --------------------------------------------------------------------------------------
# upstream forms


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("8080", "tcp", Upstream("tcp", "127.0.0.1", 8080)),
        (8080, "http", Upstream("http", "127.0.0.1", 8080)),
        ("localhost:8080", "tcp", Upstream("tcp", "localhost", 8080)),
        ("LocalHost:8080", "http", Upstream("http", "localhost", 8080)),
        ("192.168.1.2:80", "http", Upstream("http", "192.168.1.2", 80)),
        ("[::1]:80", "tcp", Upstream("tcp", "::1", 80)),
        ("http://localhost", "tcp", Upstream("http", "localhost", 80)),
        ("https://localhost", "tcp", Upstream("https", "localhost", 443)),
        ("https://localhost:8443", "http", Upstream("https", "localhost", 8443)),
        ("HTTP://[::1]", "tcp", Upstream("http", "::1", 80)),
        ("http://[2001:db8::1]:8080/", "tcp", Upstream("http", "2001:db8::1", 8080)),
        ("tcp://10.0.0.2:22", "http", Upstream("tcp", "10.0.0.2", 22)),
        ("http://8080", "tcp", Upstream("http", "127.0.0.1", 8080)),
    ],
)
def test_parse_upstream_url(text: str | int, default: Any, expected: Upstream) -> None:
    assert parse_upstream_url(text, default_scheme=default) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "upstream is empty"),
        ("localhost", "no port"),
        ("tcp://localhost", "no port"),
        ("0", "port 0 is not in 1..65535"),
        ("70000", "port 70000 is not in 1..65535"),
        ("localhost:http", "port 'http' is not a number"),
        ("::1:80", "write an IPv6 upstream in brackets"),
        ("[::1:80", "missing ']'"),
        ("[localhost]:80", "is not an IPv6 address"),
        ("[::1]x", "unexpected 'x' after ']'"),
        ("ftp://localhost:21", "scheme 'ftp' is not tcp, http or https"),
        ("http://localhost:8080/app", "cannot have a path"),
        ("http://localhost:8080?x=1", "cannot have a query"),
        ("http://user:pw@localhost:8080", "cannot carry credentials"),
        ("bad_host!:80", "is not a host name or IP address"),
        (True, "is not an upstream"),
    ],
)
def test_parse_upstream_url_errors(text: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_upstream_url(text)
    assert info.value.code == "RLY_401"


# --------------------------------------------------------------------------------------
# every error message shape


def doc(*endpoints: Any, **top: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"version": 1, "endpoints": list(endpoints)}
    base.update(top)
    return base


TCP = {"name": "ssh", "kind": "tcp", "upstream": 22}
WEB = {"name": "web", "kind": "http", "upstream": 8080}


def ep(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not ...}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "the file is empty (expected 'version: 1', 'agent:' and 'endpoints:')"),
        ([1, 2], "(top level): must be a mapping, not a list"),
        (
            {"version": 1, "endpoint": []},
            "endpoint: unknown key (did you mean 'endpoints'?); "
            "expected one of: version, agent, endpoints",
        ),
        ({"endpoints": [TCP]}, "version: required (this agent reads version 1)"),
        (doc(TCP, version=2), "version: 2 is not supported (this agent reads version 1)"),
        (doc(TCP, version=True), "version: True is not supported (this agent reads version 1)"),
        ({"version": 1}, "endpoints: required: a list of endpoints"),
        (doc(), "endpoints: the list is empty"),
        ({"version": 1, "endpoints": {"a": 1}}, "endpoints: must be a list, not a mapping"),
        (doc("ssh"), "endpoints[0]: must be a mapping, not a string"),
        (
            doc(TCP, ep(WEB, upstream=..., upstrem=8080)),
            "endpoints[1].upstrem: unknown key (did you mean 'upstream'?); expected one of: "
            "name, kind, upstream, subdomain, domain, host_header, proxy_protocol, "
            "upstream_tls_verify, remote_port",
        ),
        (doc(ep(TCP, name=...)), "endpoints[0].name: required"),
        (doc(ep(TCP, kind=None)), "endpoints[0].kind: required"),
        (doc(ep(TCP, upstream=...)), "endpoints[0].upstream: required"),
        (doc(ep(TCP, name=True)), "endpoints[0].name: must be a string, not a boolean"),
        (doc(ep(TCP, name=" ")), "endpoints[0].name: must not be empty"),
        (
            doc(ep(TCP, name="a b")),
            "endpoints[0].name: 'a b': use letters, digits, '.', '_' or '-' "
            "(at most 63, starting with a letter or digit)",
        ),
        (
            doc(ep(TCP, kind="htp")),
            "endpoints[0].kind: 'htp' is not one of: tcp, http, https, tls (did you mean 'http'?)",
        ),
        (doc(ep(TCP, kind=7)), "endpoints[0].kind: 7 is not one of: tcp, http, https, tls"),
        (
            doc(TCP, ep(TCP, name="SSH", upstream=23)),
            "endpoints[1].name: 'SSH' is already used by endpoints[0]",
        ),
        (
            doc(ep(TCP, domain="a.example.com")),
            "endpoints[0].domain: only for http/https/tls endpoints, not tcp",
        ),
        (
            doc(ep(TCP, subdomain="a")),
            "endpoints[0].subdomain: only for http/https endpoints, not tcp",
        ),
        (
            doc(ep(TCP, kind="tls", subdomain="a")),
            "endpoints[0].subdomain: only for http/https endpoints, not tls",
        ),
        (
            doc(ep(TCP, host_header="rewrite")),
            "endpoints[0].host_header: only for http/https endpoints, not tcp",
        ),
        (
            doc(ep(WEB, remote_port=8080)),
            "endpoints[0].remote_port: only for tcp endpoints, not http",
        ),
        (
            doc(ep(TCP, kind="tls")),
            "endpoints[0].domain: required for tls endpoints (routing is by the TLS server name)",
        ),
        (
            doc(ep(TCP, remote_port=0)),
            "endpoints[0].remote_port: 0 is not in 1..65535 (leave it out to get any)",
        ),
        (
            doc(ep(TCP, remote_port=65536)),
            "endpoints[0].remote_port: 65536 is not in 1..65535 (leave it out to get any)",
        ),
        (
            doc(ep(TCP, remote_port="22")),
            "endpoints[0].remote_port: must be a number, not a string",
        ),
        (
            doc(ep(TCP, proxy_protocol="v3")),
            "endpoints[0].proxy_protocol: 'v3' is not one of: none, v1, v2",
        ),
        (
            doc(ep(TCP, proxy_protocol="nnoe")),
            "endpoints[0].proxy_protocol: 'nnoe' is not one of: none, v1, v2 "
            "(did you mean 'none'?)",
        ),
        (
            doc(ep(TCP, proxy_protocol=None)),
            "endpoints[0].proxy_protocol: empty is not one of: none, v1, v2",
        ),
        (
            doc(ep(TCP, proxy_protocol=False)),
            "endpoints[0].proxy_protocol: False is not one of: none, v1, v2",
        ),
        (
            doc(ep(TCP, upstream="http://localhost:80")),
            "endpoints[0].upstream: http:// upstreams are for http/https endpoints; "
            "a tcp endpoint forwards bytes (write HOST:PORT)",
        ),
        (
            doc(ep(WEB, upstream="tcp://localhost:80")),
            "endpoints[0].upstream: an http/https endpoint needs an http:// or https:// upstream",
        ),
        (
            doc(ep(TCP, upstream="localhost")),
            "endpoints[0].upstream: 'localhost': no port (write HOST:PORT, or just PORT)",
        ),
        (
            doc(ep(WEB, subdomain="my.app")),
            "endpoints[0].subdomain: 'my.app' is not one DNS label (a-z, 0-9, '-', at most 63)",
        ),
        (
            doc(ep(WEB, domain="localhost")),
            "endpoints[0].domain: 'localhost' is not a full host name "
            "(or a wildcard like '*.example.com')",
        ),
        (
            doc(ep(WEB, domain="a.*.example.com")),
            "endpoints[0].domain: 'a.*.example.com' is not a full host name "
            "(or a wildcard like '*.example.com')",
        ),
        (
            doc(ep(WEB, domain="a.example.com", subdomain="a")),
            "endpoints[0]: give subdomain or domain, not both",
        ),
        (
            doc(ep(WEB, host_header="bad\r\nx: y")),
            "endpoints[0].host_header: must be keep, rewrite or a Host value: a host[:port] "
            "of 1 to 259 visible ASCII characters, without spaces",
        ),
        (
            doc(ep(WEB, host_header="two words")),
            "endpoints[0].host_header: must be keep, rewrite or a Host value: a host[:port] "
            "of 1 to 259 visible ASCII characters, without spaces",
        ),
        (
            doc(ep(WEB, host_header="x" * 260)),
            "endpoints[0].host_header: must be keep, rewrite or a Host value: a host[:port] "
            "of 1 to 259 visible ASCII characters, without spaces",
        ),
        (
            doc(ep(WEB, upstream_tls_verify="yes")),
            "endpoints[0].upstream_tls_verify: must be true or false, not 'yes'",
        ),
        (
            doc(ep(WEB, upstream_tls_verify=False)),
            "endpoints[0].upstream_tls_verify: only for https:// upstreams",
        ),
        (
            doc(ep(WEB, subdomain="x"), ep(WEB, name="web2", subdomain="x")),
            "endpoints[1].subdomain: 'x' is already used by endpoints[0]",
        ),
        (
            doc(ep(TCP, remote_port=2222), ep(TCP, name="b", remote_port=2222)),
            "endpoints[1].remote_port: '2222' is already used by endpoints[0]",
        ),
        (
            doc(
                ep(WEB, kind="https", domain="a.example.com"),
                ep(TCP, name="t", kind="tls", domain="a.example.com"),
            ),
            "endpoints[1].domain: 'a.example.com' is already used by endpoints[0]",
        ),
        (doc(TCP, agent=[]), "agent: must be a mapping, not a list"),
        (
            doc(TCP, agent={"authtoken": "x", "edg": "a:1"}),
            "agent.edg: unknown key (did you mean 'edge'?); "
            "expected one of: edge, authtoken, ca_file, pin, server_name",
        ),
        (doc(TCP, agent={"edge": "edge.example.com"}), "agent.edge: 'edge.example.com': no port"),
        (
            doc(TCP, agent={"edge": "edge.example.com:99999"}),
            "agent.edge: 'edge.example.com:99999': port 99999 is not in 1..65535",
        ),
        (
            doc(TCP, agent={"edge": "bad host:7000"}),
            "agent.edge: 'bad host' is not a host name or IP address",
        ),
        (doc(TCP, agent={"authtoken": 5}), "agent.authtoken: must be a string, not a number"),
        (
            doc(TCP, agent={"pin": "sha1:abcd"}),
            "agent.pin: must be 'sha256:' and 64 hex digits, as printed by 'relay edge'",
        ),
        (doc(TCP, agent={"pin": PIN, "ca_file": "ca.pem"}), "agent: give ca_file or pin, not both"),
        (
            doc(TCP, agent={"server_name": "not a name"}),
            "agent.server_name: 'not a name' is not a host name",
        ),
        (doc(TCP, agent={1: "x"}), "agent.1: keys must be strings"),
    ],
)
def test_error_messages(data: Any, message: str) -> None:
    with pytest.raises(AgentConfigError) as info:
        parse_agent_config(data, env={})
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.code == "RLY_401"
    assert isinstance(info.value, ConfigError)
    assert info.value.key_path == message.split(":", 1)[0].strip() or not info.value.key_path


def test_error_from_file_names_file_and_key_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        endpoints:
          - name: ssh
            kind: tcp
            upstream: 22
          - name: web
            kind: http
            upstrem: 8080
        """,
    )
    with pytest.raises(AgentConfigError) as info:
        load_agent_config(path, env={})
    assert str(info.value).startswith(
        f"{path}: endpoints[1].upstrem: unknown key (did you mean 'upstream'?)"
    )
    assert info.value.key_path == "endpoints[1].upstrem"
    assert info.value.one_line().startswith("error RLY_401: ")


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        endpoints:
          - name: ssh
            kind: tcp
            upstream: 22
            upstream: 23
        """,
    )
    with pytest.raises(AgentConfigError, match=r"line 6: key 'upstream' appears twice"):
        load_agent_config(path, env={})


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nendpoints: [\n  - a\n")
    with pytest.raises(AgentConfigError, match=r"agent\.yml: line \d+, column \d+: not valid YAML"):
        load_agent_config(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match=r"nope\.yml: cannot read"):
        load_agent_config(tmp_path / "nope.yml", env={})


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match=r"agent\.yml: the file is empty"):
        load_agent_config(write(tmp_path, ""), env={})


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        endpoints:
          - &base {name: a, kind: tcp, upstream: 22}
          - <<: *base
            name: b
        """,
    )
    config = load_agent_config(path, env={})
    assert [e.name for e in config.endpoints] == ["a", "b"]


# --------------------------------------------------------------------------------------
# relay start NAME...


def _endpoints() -> tuple[EndpointConfig, ...]:
    return parse_agent_config(doc(TCP, WEB, ep(TCP, name="db", upstream=5432)), env={}).endpoints


def test_select_all_when_no_names() -> None:
    endpoints = _endpoints()
    assert select(endpoints, []) == endpoints


def test_select_in_given_order_without_duplicates() -> None:
    chosen = select(_endpoints(), ["db", "ssh", "DB"])
    assert [e.name for e in chosen] == ["db", "ssh"]


def test_select_unknown_name_suggests_and_lists() -> None:
    with pytest.raises(AgentConfigError) as info:
        select(_endpoints(), ["web", "wbe"])
    assert (
        str(info.value)
        == "no endpoint named 'wbe' (did you mean 'web'?); the file has: ssh, web, db"
    )
    with pytest.raises(AgentConfigError, match=r"^no endpoint named 'zzz'; the file has"):
        select(_endpoints(), ["zzz"])
