"""Contestants: what a visitor's TCP connection goes through to reach the origin (iperf3 server).

Each contestant is started once per run, measured alternately with the others, and stopped in a
`finally`. `cpu_procs()` names the processes whose CPU the run charges to the contestant (each
with its descendants).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from bench.procs import (
    BenchError,
    Proc,
    free_port,
    free_port_in_range,
    run_tool,
    wait_listening,
    wait_until,
)

START_TIMEOUT = 30.0
SSHD = "/usr/sbin/sshd"
AES_GCM = "aes128-gcm@openssh.com"


class Contestant(ABC):
    key: str = ""
    label: str = ""
    #: Host header visitors must send (HTTP-routing contestants: relay http, frp http vhost).
    http_host: str | None = None
    #: One line on what it is, for the report.
    summary: str = ""
    #: The stream counts of the bulk scenarios it runs (None: all of them).
    streams: tuple[int, ...] | None = None

    def __init__(self, work: Path, origin_port: int) -> None:
        self.work = work / self.key
        self.work.mkdir(parents=True, exist_ok=True)
        self.origin_port = origin_port
        self.procs: dict[str, Proc] = {}
        self.config: dict[str, Any] = {}

    def unavailable(self) -> str | None:
        """Why this contestant cannot run here (missing tool), or None."""
        return None

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def visitor_port(self) -> int: ...

    def cpu_procs(self) -> dict[str, Proc]:
        return dict(self.procs)

    def _spawn(self, role: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        p = Proc(f"{self.key}-{role}", argv, self.work, env)
        self.procs[role] = p
        return p

    def stop(self) -> None:
        # Reverse start order: clients before servers (ssh before sshd, agent before edge).
        for p in reversed(list(self.procs.values())):
            p.stop()

    def logs(self) -> dict[str, str]:
        return {role: p.tail(40) for role, p in self.procs.items()}


class Direct(Contestant):
    key = "direct"
    label = "direct"

    def start(self) -> None:
        self.config = {"path": "iperf3 client -> iperf3 server on 127.0.0.1"}

    def visitor_port(self) -> int:
        return self.origin_port


class Haproxy(Contestant):
    key = "haproxy"
    label = "haproxy"

    def __init__(self, work: Path, origin_port: int, nbthread: int = 1) -> None:
        super().__init__(work, origin_port)
        self.nbthread = nbthread
        self.port = 0

    def unavailable(self) -> str | None:
        return None if shutil.which("haproxy") else "haproxy not installed"

    #: The ``defaults`` lines that make the hop plain TCP (HaproxyHttp parses HTTP).
    mode_lines: tuple[str, ...] = ("    mode tcp",)
    config_name = "haproxy.cfg"

    def start(self) -> None:
        self.port = free_port()
        cfg = "\n".join(
            [
                "global",
                f"    nbthread {self.nbthread}",
                "    maxconn 4096",
                "defaults",
                *self.mode_lines,
                "    timeout connect 5s",
                "    timeout client 120s",
                "    timeout server 120s",
                "listen bench",
                f"    bind 127.0.0.1:{self.port}",
                f"    server origin 127.0.0.1:{self.origin_port}",
                "",
            ]
        )
        path = self.work / self.config_name
        path.write_text(cfg)
        self.config = {"nbthread": self.nbthread, "haproxy.cfg": cfg}
        check = run_tool(["haproxy", "-c", "-q", "-f", str(path)])
        if check.returncode != 0:
            raise BenchError(f"haproxy config check failed: {check.stderr.strip()}")
        p = self._spawn("haproxy", ["haproxy", "-db", "-f", str(path)])
        wait_listening(self.port, "haproxy", START_TIMEOUT, [p])

    def visitor_port(self) -> int:
        return self.port


class SshR(Contestant):
    key = "ssh"
    label = "ssh -R"

    def __init__(self, work: Path, origin_port: int) -> None:
        super().__init__(work, origin_port)
        self.sshd_port = 0
        self.port = 0

    def unavailable(self) -> str | None:
        missing = [t for t in ("ssh", "ssh-keygen") if not shutil.which(t)]
        if not os.access(SSHD, os.X_OK):
            missing.append(SSHD)
        if missing:
            return "not installed: " + ", ".join(missing)
        if os.geteuid() != 0:
            return "sshd contestant needs root (it logs in as root with a temporary key)"
        return None

    def start(self) -> None:
        w = self.work
        host_key, user_key = w / "host_ed25519", w / "user_ed25519"
        for key in (host_key, user_key):
            r = run_tool(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(key)]
            )
            if r.returncode != 0:
                raise BenchError(f"ssh-keygen failed: {r.stderr.strip()}")
        (w / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
        # sshd refuses to start without its privilege-separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.sshd_port = free_port()
        sshd_cfg = "\n".join(
            [
                f"Port {self.sshd_port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {w / 'authorized_keys'}",
                f"PidFile {w / 'sshd.pid'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "AllowTcpForwarding yes",
                "GatewayPorts no",
                "X11Forwarding no",
                "PrintMotd no",
                "UseDNS no",
                "LogLevel ERROR",
                "",
            ]
        )
        cfg_path = w / "sshd_config"
        cfg_path.write_text(sshd_cfg)
        sshd = self._spawn("sshd", [SSHD, "-D", "-e", "-f", str(cfg_path)])
        wait_listening(self.sshd_port, "sshd", START_TIMEOUT, [sshd])
        self.port = free_port()
        ssh_argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-N",
            "-R",
            f"{self.port}:127.0.0.1:{self.origin_port}",
            "-c",
            AES_GCM,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={w / 'known_hosts'}",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
            str(user_key),
            "-p",
            str(self.sshd_port),
            "root@127.0.0.1",
        ]
        self.config = {"sshd_config": sshd_cfg, "ssh": " ".join(ssh_argv), "cipher": AES_GCM}
        ssh = self._spawn("ssh", ssh_argv)
        wait_listening(self.port, "ssh -R forwarded port", START_TIMEOUT, [sshd, ssh])

    def visitor_port(self) -> int:
        return self.port


RELAY_BIN_ENV = "RELAY_BENCH_BIN"


def relay_binary() -> str | None:
    """$RELAY_BENCH_BIN, else the relay CLI next to this interpreter (the venv), else on PATH."""
    override = os.environ.get(RELAY_BIN_ENV)
    if override:
        return override
    local = Path(sys.executable).parent / "relay"
    if local.exists():
        return str(local)
    return shutil.which("relay")


class Relay(Contestant):
    key = "relay"
    label = "relay"
    TCP_PORTS = (20000, 20100)

    def __init__(self, work: Path, origin_port: int) -> None:
        super().__init__(work, origin_port)
        self.bin = relay_binary()
        self.edge_port = 0
        self.port = 0
        self.forwarding_line: str | None = None
        self.edge_help = ""
        self.http_port = 0
        self.token = ""

    def unavailable(self) -> str | None:
        if self.bin is None:
            return "relay CLI not found (no .venv/bin/relay and none on PATH) — run `make setup`"
        for sub in (["tcp", "--help"], ["edge", "--help"], ["token", "create", "--help"]):
            try:
                r = run_tool([self.bin, *sub], timeout=60)
            except BenchError as e:
                return f"`relay {' '.join(sub)}` failed: {e}"
            if sub[0] == "edge":
                self.edge_help = r.stdout
            if r.returncode != 0:
                err = (r.stderr or r.stdout).strip().splitlines()
                last = err[-1] if err else "(no output)"
                return f"`relay {' '.join(sub)}` exited {r.returncode}: {last}"
        return None

    def _create_token(self, data_dir: Path) -> str:
        assert self.bin is not None
        base = [self.bin, "token", "create", "--data-dir", str(data_dir), "--description", "bench"]
        r = run_tool([*base, "-o", "json"], timeout=60)
        if r.returncode == 0:
            lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
            try:
                token = json.loads(lines[-1])["token"]
                if isinstance(token, str) and token:
                    return token
            except (IndexError, ValueError, KeyError, TypeError):
                pass
        r = run_tool(base, timeout=60)
        lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
        if r.returncode != 0 or not lines:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise BenchError(
                f"`relay token create` exited {r.returncode}: {msg[-1] if msg else '(no output)'}"
            )
        return lines[-1]

    def edge_extra(self) -> list[str]:
        """More edge options a variant of this contestant needs."""
        return []

    def choose_admin_port(self) -> int:
        """The admin listener's port (a variant with several edge processes needs a run)."""
        return free_port()

    def start_edge(self) -> tuple[str, Path]:
        """Start the edge only; (token, CA file)."""
        if not self.edge_help:
            # The options below are detected from `relay edge --help`; without it the edge
            # would bind its default HTTP/HTTPS listeners on 0.0.0.0.
            why = self.unavailable()
            if why:
                raise BenchError(why)
        assert self.bin is not None
        data_dir = self.work / "data"
        data_dir.mkdir(exist_ok=True)
        token = self._create_token(data_dir)
        self.edge_port = free_port()
        lo, hi = self.TCP_PORTS
        edge_argv = [
            self.bin,
            "edge",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{self.edge_port}",
            "--tcp-ports",
            f"{lo}-{hi}",
        ]
        # Keep visitor endpoints on loopback and shutdown short, where the CLI has the options.
        if "--tcp-bind" in self.edge_help:
            edge_argv += ["--tcp-bind", "127.0.0.1"]
        if "--drain-timeout" in self.edge_help:
            edge_argv += ["--drain-timeout", "1"]
        if "--admin-listen" in self.edge_help:  # off the default port: others may hold it
            edge_argv += ["--admin-listen", f"127.0.0.1:{self.choose_admin_port()}"]
        if "--http-listen" in self.edge_help:
            self.http_port = free_port()
            edge_argv += ["--http-listen", f"127.0.0.1:{self.http_port}"]
            edge_argv += ["--https-listen", f"127.0.0.1:{free_port()}"]
            edge_argv += ["--base-domain", "relay.localhost"]
        edge_argv += self.edge_extra()
        if "--workers" in self.edge_help and "--workers" not in edge_argv:
            # One process unless a variant says (the default is one per core): the
            # peers it is compared with each run one server process.
            edge_argv += ["--workers", "1"]
        edge = self._spawn("edge", edge_argv)
        self.config = {"edge": " ".join(edge_argv)}
        wait_listening(self.edge_port, "relay edge", START_TIMEOUT, [edge])
        ca = data_dir / "ca" / "ca.pem"
        wait_until(f"{ca} to exist", ca.exists, START_TIMEOUT, [edge])
        self.token = token
        return token, ca

    def start(self) -> None:
        token, ca = self.start_edge()
        edge = self.procs["edge"]
        agent_argv = self.agent_argv(token, ca)
        self.config["agent"] = " ".join(a if a != token else "<token>" for a in agent_argv)
        agent = self._spawn("agent", agent_argv)
        wait_listening(self.visitor_port(), "relay endpoint port", START_TIMEOUT, [edge, agent])
        # The port may listen before the agent has finished registering; also wait for the
        # agent's "Forwarding" line (bounded; a missing line is noted, not fatal).
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            for line in agent.output().splitlines():
                if line.startswith("Forwarding"):
                    self.forwarding_line = line.strip()
                    break
            if self.forwarding_line or not agent.alive():
                break
            time.sleep(0.05)
        if not agent.alive():
            raise BenchError(agent.describe_exit())
        self.config["forwarding_line"] = self.forwarding_line or "(not printed within 10 s)"

    def agent_argv(self, token: str, ca: Path) -> list[str]:
        assert self.bin is not None
        lo, hi = self.TCP_PORTS
        self.port = free_port_in_range(lo, hi)
        return [
            self.bin,
            "tcp",
            f"127.0.0.1:{self.origin_port}",
            *self.link_args(token, ca),
            "--remote-port",
            str(self.port),
        ]

    def link_args(self, token: str, ca: Path) -> list[str]:
        """How an agent reaches and trusts this edge."""
        return [
            "--edge",
            f"127.0.0.1:{self.edge_port}",
            "--token",
            token,
            "--ca-file",
            str(ca),
            "--server-name",
            "localhost",
        ]

    def visitor_port(self) -> int:
        return self.port


ALL = {c.key: c for c in (Direct, Haproxy, SshR, Relay)}
