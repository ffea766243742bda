"""More contestants: HTTP-aware hops (haproxy `mode http`, relay http endpoint, frp http vhost)
and the tunnels users pick instead of relay (frp, rathole, bore, two socat relays joined by TLS).

Every one listens on 127.0.0.1 only and is stopped by PID (`Proc.stop`). Configs go into the
result. Versions are the pinned ones from bench/tools.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench import tools
from bench.contestants import (
    START_TIMEOUT,
    Contestant,
    Direct,
    Haproxy,
    Relay,
    SshR,
)
from bench.procs import BenchError, free_port, run_tool, wait_listening
from bench.workers import RelayLinks

TOKEN = "bench-secret-token"


def make_tls(d: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for `localhost` (ECDSA P-256), with openssl."""
    d.mkdir(parents=True, exist_ok=True)
    out = {
        "ca": d / "ca.pem",
        "ca_key": d / "ca.key",
        "key": d / "server.key",
        "csr": d / "server.csr",
        "cert": d / "server.pem",
        "ext": d / "san.ext",
        "p12": d / "identity.p12",
        "bundle": d / "server-bundle.pem",
    }
    if out["p12"].exists():
        return out
    out["ext"].write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        ["openssl", "req", "-x509", *ec, "-keyout", str(out["ca_key"]), "-out", str(out["ca"]),
         "-days", "2", "-subj", "/CN=bench CA"],
        ["openssl", "req", *ec, "-keyout", str(out["key"]), "-out", str(out["csr"]),
         "-subj", "/CN=localhost"],
        ["openssl", "x509", "-req", "-in", str(out["csr"]), "-CA", str(out["ca"]), "-CAkey",
         str(out["ca_key"]), "-CAcreateserial", "-out", str(out["cert"]), "-days", "2",
         "-extfile", str(out["ext"])],
        ["openssl", "pkcs12", "-export", "-out", str(out["p12"]), "-inkey", str(out["key"]),
         "-in", str(out["cert"]), "-certfile", str(out["ca"]), "-passout", "pass:bench"],
    ]  # fmt: skip
    for argv in steps:
        r = run_tool(argv)
        if r.returncode != 0:
            raise BenchError(f"openssl {argv[1]} failed: {r.stderr.strip()[-200:]}")
    out["bundle"].write_text(out["cert"].read_text() + out["key"].read_text())
    return out


class HaproxyHttp(Haproxy):
    key = "haproxy-http"
    label = "haproxy http"
    mode_lines = (
        "    mode http",
        "    option http-keep-alive",
        "    http-reuse always",
        "    timeout http-keep-alive 120s",
    )
    config_name = "haproxy-http.cfg"


class RelayHttp(Relay):
    key = "relay-http"
    label = "relay http"
    http_host = "bench.relay.localhost"

    def start(self) -> None:
        super().start()
        self.http_host = f"bench.relay.localhost:{self.http_port}"

    def agent_argv(self, token: str, ca: Path) -> list[str]:
        assert self.bin is not None
        if not self.http_port:
            raise BenchError("this relay edge has no --http-listen option")
        return [
            self.bin,
            "http",
            f"127.0.0.1:{self.origin_port}",
            "--no-https",
            "--subdomain",
            "bench",
            *self.link_args(token, ca),
        ]

    def visitor_port(self) -> int:
        return self.http_port


class RelayHttpLogged(RelayHttp):
    """relay http with its access log on (one line per request, to a file): beside
    `relay http` in the same run, what logging every request costs."""

    key = "relay-http-log"
    label = "relay http + access log"

    def edge_extra(self) -> list[str]:
        if "--access-log" not in self.edge_help:
            raise BenchError("this relay edge has no --access-log option")
        return ["--access-log", str(self.work / "access.log")]


class Frp(Contestant):
    """frps + frpc with TLS (forced) and tcp_mux (yamux), one `tcp` proxy."""

    key = "frp"
    label = "frp"
    http = False

    def __init__(self, work: Path, origin_port: int) -> None:
        super().__init__(work, origin_port)
        self.port = 0

    def unavailable(self) -> str | None:
        if not (tools.local_bin("frps") and tools.local_bin("frpc")):
            return f"frp {tools.FRP_VERSION} not built (see bench/tools.py)"
        return None

    def start(self) -> None:
        frps, frpc = tools.local_bin("frps"), tools.local_bin("frpc")
        assert frps and frpc
        bind = free_port()
        self.port = free_port()
        server = [
            'bindAddr = "127.0.0.1"',
            f"bindPort = {bind}",
            'proxyBindAddr = "127.0.0.1"',
            f'auth.token = "{TOKEN}"',
            "transport.tls.force = true",
            "transport.tcpMux = true",
            'log.level = "warn"',
        ]
        proxy = [
            "[[proxies]]",
            'name = "bench"',
            'localIP = "127.0.0.1"',
            f"localPort = {self.origin_port}",
        ]
        if self.http:
            server.append(f"vhostHTTPPort = {self.port}")
            proxy += ['type = "http"', 'customDomains = ["bench.frp.localhost"]']
            self.http_host = "bench.frp.localhost"
        else:
            proxy += ['type = "tcp"', f"remotePort = {self.port}"]
        client = [
            'serverAddr = "127.0.0.1"',
            f"serverPort = {bind}",
            f'auth.token = "{TOKEN}"',
            "transport.tls.enable = true",
            "transport.tcpMux = true",
            'log.level = "warn"',
            "",
            *proxy,
        ]
        s_cfg, c_cfg = "\n".join(server) + "\n", "\n".join(client) + "\n"
        (self.work / "frps.toml").write_text(s_cfg)
        (self.work / "frpc.toml").write_text(c_cfg)
        self.config = {"version": tools.FRP_VERSION, "frps.toml": s_cfg, "frpc.toml": c_cfg}
        s = self._spawn("frps", [frps, "-c", str(self.work / "frps.toml")])
        wait_listening(bind, "frps", START_TIMEOUT, [s])
        c = self._spawn("frpc", [frpc, "-c", str(self.work / "frpc.toml")])
        wait_listening(self.port, "frp proxy port", START_TIMEOUT, [s, c])
        if self.http:
            # The vhost port listens before the proxy registers; wait for a routed answer.
            _wait_http_ok(self.port, self.http_host or "", [s, c])

    def visitor_port(self) -> int:
        return self.port


class FrpHttp(Frp):
    key = "frp-http"
    label = "frp http"
    http = True


class Rathole(Contestant):
    """rathole server + client, TLS transport (native-tls = system OpenSSL)."""

    key = "rathole"
    label = "rathole"

    def __init__(self, work: Path, origin_port: int) -> None:
        super().__init__(work, origin_port)
        self.port = 0

    def unavailable(self) -> str | None:
        if not tools.local_bin("rathole"):
            return f"rathole {tools.RATHOLE_VERSION} not installed (see bench/tools.py)"
        return None

    def start(self) -> None:
        exe = tools.local_bin("rathole")
        assert exe
        tls = make_tls(self.work / "tls")
        bind = free_port()
        self.port = free_port()
        s_cfg = f"""[server]
bind_addr = "127.0.0.1:{bind}"
[server.transport]
type = "tls"
[server.transport.tls]
pkcs12 = "{tls["p12"]}"
pkcs12_password = "bench"
[server.services.bench]
token = "{TOKEN}"
bind_addr = "127.0.0.1:{self.port}"
"""
        c_cfg = f"""[client]
remote_addr = "localhost:{bind}"
[client.transport]
type = "tls"
[client.transport.tls]
trusted_root = "{tls["ca"]}"
hostname = "localhost"
[client.services.bench]
token = "{TOKEN}"
local_addr = "127.0.0.1:{self.origin_port}"
"""
        (self.work / "server.toml").write_text(s_cfg)
        (self.work / "client.toml").write_text(c_cfg)
        self.config = {
            "version": tools.RATHOLE_VERSION,
            "features": "default (server, client, tls = tokio-native-tls/OpenSSL, noise, ...)",
            "server.toml": s_cfg,
            "client.toml": c_cfg,
        }
        s = self._spawn("server", [exe, "-s", str(self.work / "server.toml")])
        wait_listening(bind, "rathole server", START_TIMEOUT, [s])
        c = self._spawn("client", [exe, "-c", str(self.work / "client.toml")])
        wait_listening(self.port, "rathole service port", START_TIMEOUT, [s, c])
        # The service port listens before the client's control channel is up.
        from bench.procs import wait_until

        wait_until(
            "rathole client's control channel",
            lambda: "Control channel established" in c.output(),
            START_TIMEOUT,
            [s, c],
        )

    def visitor_port(self) -> int:
        return self.port


class Bore(Contestant):
    """bore server + bore local (no encryption; one TCP connection per visitor)."""

    key = "bore"
    label = "bore"
    PORTS = (21000, 21100)

    def __init__(self, work: Path, origin_port: int) -> None:
        super().__init__(work, origin_port)
        self.port = 0

    def unavailable(self) -> str | None:
        if not tools.local_bin("bore"):
            return f"bore-cli {tools.BORE_VERSION} not installed (see bench/tools.py)"
        return None

    def start(self) -> None:
        from bench.procs import free_port_in_range

        exe = tools.local_bin("bore")
        assert exe
        lo, hi = self.PORTS
        self.port = free_port_in_range(lo, hi)
        s_argv = [exe, "server", "--min-port", str(lo), "--max-port", str(hi),
                  "--bind-addr", "127.0.0.1", "--bind-tunnels", "127.0.0.1"]  # fmt: skip
        c_argv = [exe, "local", str(self.origin_port), "--local-host", "127.0.0.1",
                  "--to", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        self.config = {
            "version": tools.BORE_VERSION,
            "server": " ".join(s_argv),
            "local": " ".join(c_argv),
            "note": "no encryption (bore has none); control port 7835 (fixed by bore)",
        }
        s = self._spawn("server", s_argv)
        wait_listening(7835, "bore server (control port 7835)", START_TIMEOUT, [s])
        c = self._spawn("local", c_argv)
        wait_listening(self.port, "bore tunnel port", START_TIMEOUT, [s, c])

    def visitor_port(self) -> int:
        return self.port


class SocatTls(Contestant):
    """Two socat relays joined by TLS: visitor -> socat TCP-LISTEN -> OPENSSL -> socat
    OPENSSL-LISTEN -> origin. One forked process pair and one TLS handshake per connection,
    no multiplexing: the practical ceiling of a TLS tunnel hop."""

    key = "socat-tls"
    label = "socat+TLS"

    def __init__(self, work: Path, origin_port: int) -> None:
        super().__init__(work, origin_port)
        self.port = 0

    def unavailable(self) -> str | None:
        return None if shutil.which("socat") else "socat not installed"

    def start(self) -> None:
        tls = make_tls(self.work / "tls")
        mid = free_port()
        self.port = free_port()
        s_argv = [
            "socat",
            f"OPENSSL-LISTEN:{mid},bind=127.0.0.1,reuseaddr,fork,backlog=4096,nodelay,"
            f"cert={tls['bundle']},verify=0,openssl-min-proto-version=TLS1.3",
            f"TCP:127.0.0.1:{self.origin_port},nodelay",
        ]
        c_argv = [
            "socat",
            f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork,backlog=4096,nodelay",
            f"OPENSSL:127.0.0.1:{mid},cafile={tls['ca']},commonname=localhost,verify=1,nodelay,"
            "openssl-min-proto-version=TLS1.3",
        ]
        self.config = {
            "version": _socat_version(),
            "tls_side": " ".join(s_argv),
            "visitor_side": " ".join(c_argv),
            "note": "TLS 1.3 with OpenSSL's default suite (TLS_AES_256_GCM_SHA384)",
        }
        s = self._spawn("tls-server", s_argv)
        wait_listening(mid, "socat TLS listener", START_TIMEOUT, [s])
        c = self._spawn("tcp-listener", c_argv)
        wait_listening(self.port, "socat visitor listener", START_TIMEOUT, [s, c])

    def visitor_port(self) -> int:
        return self.port


def _socat_version() -> str:
    r = run_tool(["socat", "-V"])
    for line in r.stdout.splitlines():
        if "socat version" in line:
            return line.strip()
    return "unknown"


def _wait_http_ok(port: int, host: str, watch: list) -> None:  # type: ignore[type-arg]
    import http.client
    import time

    from bench.procs import wait_until

    def ok() -> bool:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/", headers={"Host": host})
            r = c.getresponse()
            r.read()
            c.close()
            return r.status == 200
        except OSError:
            time.sleep(0.1)
            return False

    wait_until(f"an HTTP 200 through 127.0.0.1:{port} (Host {host})", ok, START_TIMEOUT, watch)


#: relay-links2 (bench/workers.py) runs the 8-stream scenarios only.
BULK = {c.key: c for c in (Direct, Haproxy, SshR, Relay, RelayLinks, Frp, Rathole, Bore, SocatTls)}
HTTP = {
    c.key: c
    for c in (
        Direct, Haproxy, HaproxyHttp, SshR, Relay, RelayHttp, RelayHttpLogged, Frp, FrpHttp,
        Rathole, Bore, SocatTls,
    )
}  # fmt: skip
ALL = {**BULK, **HTTP}
