"""Tools the harness installs itself, pinned, into bench/work/tools (gitignored).

- Debian packages (apt-get): nginx-light (origin), wrk (closed-loop HTTP max), socat (TLS
  peer), plus iperf3/haproxy/OpenSSH via bench/setup.sh.
- crates.io (`cargo install --locked --version`): oha (open-loop, latency-corrected HTTP load),
  rathole (TLS transport through its default `tls` feature = tokio-native-tls, i.e. the system
  OpenSSL), bore-cli (no encryption).
- Go module proxy: frp (frps/frpc) built from a pinned module version in a scratch module (a
  plain `go install pkg@version` fails here: the proxy refuses frp's version list, which
  `go install` reads for deprecation notices).

Installs happen before anything is timed and print one line each. They are slow (cargo builds
take minutes on 2 cores), so they are cached; `--no-install` skips them and the missing peers are
reported as skipped, with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError, run_tool

BENCH_DIR = Path(__file__).resolve().parent
WORK = BENCH_DIR / "work"
TOOLS = WORK / "tools"
BIN = TOOLS / "bin"

OHA_VERSION = "1.16.0"
RATHOLE_VERSION = "0.5.0"
BORE_VERSION = "0.6.0"
FRP_VERSION = "v0.65.0"

APT = {"nginx": "nginx-light", "wrk": "wrk", "socat": "socat"}


@dataclass(frozen=True)
class CargoTool:
    crate: str
    version: str
    binary: str


CARGO = {
    "oha": CargoTool("oha", OHA_VERSION, "oha"),
    "rathole": CargoTool("rathole", RATHOLE_VERSION, "rathole"),
    "bore": CargoTool("bore-cli", BORE_VERSION, "bore"),
}


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def apt_install(names: list[str]) -> None:
    missing = [n for n in names if not (shutil.which(n) or os.access(f"/usr/sbin/{n}", os.X_OK))]
    if not missing:
        return
    pkgs = sorted({APT[n] for n in missing})
    if not shutil.which("apt-get"):
        log(f"missing {', '.join(missing)} and no apt-get; install {' '.join(pkgs)} by hand")
        return
    log(f"installing {' '.join(pkgs)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=600, check=False)
            subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False)
    except (subprocess.TimeoutExpired, OSError) as e:
        log(f"apt-get failed: {e}")


def cargo_install(tool: CargoTool) -> str | None:
    """Install the pinned crate into bench/work/tools; return why not, or None."""
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    if not os.access(cargo, os.X_OK):
        return "cargo not available"
    log(f"installing {tool.crate} {tool.version} (cargo install --locked; takes minutes)")
    t0 = time.monotonic()
    # --locked first (the crate's own lock file); if that no longer compiles with this
    # toolchain (rathole 0.5.0's lock pins a `time` that fails on Rust >= 1.80), let cargo
    # resolve current compatible dependencies instead. Either way it is the pinned version.
    for flags in (["--locked"], []):
        try:
            r = subprocess.run(
                [cargo, "install", "--root", str(TOOLS), *flags, tool.crate, "--version",
                 tool.version],
                capture_output=True, text=True, timeout=1800, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return "cargo install timed out after 1800 s"
        if r.returncode == 0:
            break
        errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
        log(f"cargo install {' '.join(flags)} {tool.crate} failed: {errors[:1]}")
    if r.returncode != 0:
        errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
        return f"cargo install {tool.crate} failed: {(errors or ['?'])[0]}"
    log(f"installed {tool.crate} {tool.version} in {time.monotonic() - t0:.0f} s")
    return None


def go_build_frp() -> str | None:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go, os.X_OK):
        return "go not available"
    build = WORK / "frp-build"
    build.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOFLAGS="-buildvcs=false")
    log(f"building frps/frpc {FRP_VERSION} (Go module proxy; takes a few minutes)")
    t0 = time.monotonic()
    steps: list[list[str]] = []
    if not (build / "go.mod").exists():
        steps.append([go, "mod", "init", "benchfrp"])
    steps += [
        [
            go,
            "get",
            f"github.com/fatedier/frp/cmd/frps@{FRP_VERSION}",
            f"github.com/fatedier/frp/cmd/frpc@{FRP_VERSION}",
        ],
        [go, "build", "-o", str(BIN / "frps"), "github.com/fatedier/frp/cmd/frps"],
        [go, "build", "-o", str(BIN / "frpc"), "github.com/fatedier/frp/cmd/frpc"],
    ]
    BIN.mkdir(parents=True, exist_ok=True)
    for argv in steps:
        try:
            r = subprocess.run(
                argv, cwd=build, env=env, capture_output=True, text=True, timeout=1200,
                check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"{' '.join(argv[1:3])} timed out"
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            return f"`go {' '.join(argv[1:3])}` failed: {last}"
    log(f"built frp {FRP_VERSION} in {time.monotonic() - t0:.0f} s")
    return None


def local_bin(name: str) -> str | None:
    p = BIN / name
    return str(p) if p.exists() and os.access(p, os.X_OK) else None


def ensure(need_peers: set[str], allow_install: bool, allow_slow: bool = True) -> dict[str, str]:
    """Install what is missing. Returns {tool: reason} for tools that are unavailable."""
    why: dict[str, str] = {}
    if allow_install:
        apt_install(["nginx", "wrk", "socat"])
    for name in ("wrk", "socat"):
        if not shutil.which(name):
            why[name] = f"{name} not installed (apt-get install {APT[name]})"
    wanted = {"oha"} | ({"rathole", "bore"} & need_peers)
    for key in sorted(wanted):
        tool = CARGO[key]
        if local_bin(tool.binary):
            continue
        if not allow_install or not allow_slow:
            why[key] = f"{tool.crate} {tool.version} not installed and installs were disabled"
            continue
        err = cargo_install(tool)
        if err:
            why[key] = err
    if "frp" in need_peers and not (local_bin("frps") and local_bin("frpc")):
        if not allow_install or not allow_slow:
            why["frp"] = f"frp {FRP_VERSION} not built and installs were disabled"
        else:
            err = go_build_frp()
            if err:
                why["frp"] = err
    return why


def version_of(argv: list[str]) -> str:
    try:
        r = run_tool(argv, timeout=20)
    except BenchError as e:
        return f"unavailable ({e})"
    text = (r.stdout or r.stderr).strip().splitlines()
    return text[0].strip() if text else f"unknown (exit {r.returncode})"
