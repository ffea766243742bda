"""`python -m bench quick|full`: relay beside direct, haproxy, ssh -R, frp, rathole, bore and
socat+TLS — bulk TCP (iperf3), HTTP max / new connections / fixed-rate latency, head-of-line,
memory slopes, agent sessions admitted per second, `relay edge --workers 2` beside one process,
a visitor carried between two cluster nodes, one node at scale (100,000 idle streams, 10,000
idle sessions, 1,000 agents admitted at once), CPU per unit of work."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import (
    charts,
    cluster,
    httpbench,
    machine,
    memory,
    phases,
    report,
    report_cluster,
    report_http,
    report_scale,
    report_sessions,
    report_workers,
    scale,
    sessions,
    tools,
    workers,
)
from bench.contestants import RELAY_BIN_ENV, SSHD, Contestant, Haproxy
from bench.httpbench import HttpMeasurement
from bench.origin import nginx_version
from bench.peers import BULK as ALL
from bench.peers import HTTP as HTTP_ALL
from bench.phases import HttpMode
from bench.procs import BenchError, free_port
from bench.scenarios import SCENARIOS, Measurement, Scenario, measure

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


@dataclass(frozen=True)
class Mode:
    duration: float
    reps: int
    warmup: float


MODES = {
    "quick": Mode(duration=2.0, reps=3, warmup=1.0),
    "full": Mode(duration=10.0, reps=5, warmup=2.0),
}
HTTP_MODES = {
    "quick": HttpMode(
        duration=2.0,
        lat_duration=2.0,
        reps=3,
        sweep=(),
        close_latency=False,
        hol=("relay", "ssh"),
        hol_rate=200.0,
        hol_duration=4.0,
        mem_sessions=(100, 200),
        mem_streams=(4000, 8000),
    ),
    "full": HttpMode(
        duration=5.0,
        lat_duration=4.0,
        reps=3,
        sweep=(0.25, 0.5, 0.75, 0.9),
        close_latency=True,
        hol=("relay", "ssh", "frp", "rathole", "direct"),
        hol_rate=200.0,
        hol_duration=8.0,
        mem_sessions=(500, 1000),
        mem_streams=(4000, 8000),
    ),
}
#: Seconds per run of the sessions phase (its reps are the mode's; --duration/--reps override).
SESSIONS_DURATION = {"quick": 3.0, "full": 5.0}
PHASES = ("bulk", "http", "memory", "sessions", "workers", "cluster", "scale")


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("mode", nargs="?", choices=sorted(MODES), default="quick")
    p.add_argument(
        "--contestants",
        default=",".join(dict.fromkeys([*ALL, *HTTP_ALL])),
        help="comma-separated subset of: "
        + ", ".join(dict.fromkeys([*ALL, *HTTP_ALL]))
        + " (direct is always included; -http ones are HTTP-phase only)",
    )
    p.add_argument("--phases", default=",".join(PHASES), help="subset of: " + ", ".join(PHASES))
    p.add_argument(
        "--no-install",
        action="store_true",
        help="never install peers (cargo/go builds); missing ones are skipped with the reason",
    )
    p.add_argument(
        "--scenarios", default=",".join(s.key for s in SCENARIOS), help="subset of scenarios"
    )
    p.add_argument(
        "--duration",
        type=float,
        help="seconds per iperf3 run and per sessions run (overrides the mode)",
    )
    p.add_argument(
        "--reps",
        type=int,
        help="repetitions of the bulk, sessions, workers and cluster phases and of the scale"
        " phase's admissions (overrides the mode)",
    )
    p.add_argument("--haproxy-nbthread", type=int, default=1, help="haproxy nbthread (default 1)")
    p.add_argument("--relay-bin", help="relay CLI to run (default: .venv/bin/relay, then PATH)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="results directory")
    p.add_argument("--no-setup", action="store_true", help="never run bench/setup.sh")
    p.add_argument("--keep-temp", action="store_true", help="keep the temp dir (configs, logs)")
    return p.parse_args(argv)


def tools_missing(keys: list[str], phases_on: set[str] | None = None) -> list[str]:
    need = ["iperf3"]
    if "cluster" in (phases_on or set()) and "relay" in keys:
        need.append(cluster.REDIS_SERVER)
    if "haproxy" in keys:
        need.append("haproxy")
    if "ssh" in keys:
        need += ["ssh", "ssh-keygen", SSHD]
    return [
        t for t in need if not (os.access(t, os.X_OK) if t.startswith("/") else shutil.which(t))
    ]


def ensure_prereqs(keys: list[str], allow_setup: bool, phases_on: set[str]) -> None:
    missing = tools_missing(keys, phases_on)
    if not missing:
        return
    if not allow_setup:
        log(f"missing tools: {', '.join(missing)} (not running bench/setup.sh: --no-setup)")
        return
    log(f"missing tools: {', '.join(missing)} — running bench/setup.sh to install them")
    try:
        subprocess.run(
            ["bash", str(BENCH_DIR / "setup.sh")],
            stdin=subprocess.DEVNULL,
            timeout=900,
            check=False,
        )
    except subprocess.TimeoutExpired:
        log("bench/setup.sh timed out after 900 s")
    still = tools_missing(keys, phases_on)
    if still:
        log(f"still missing after setup: {', '.join(still)}; those contestants will be skipped")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def progress_line(i: int, total: int, reps: int, m: Measurement, label: str) -> str:
    rep = "warm-up" if m.rep == 0 else f"rep {m.rep}/{reps}"
    head = f"[{i:>3}/{total}] {rep:<9} {m.scenario:<11} {label:<15}"
    if not m.ok:
        first = (m.error or "").splitlines()[0] if m.error else "unknown error"
        return f"{head} FAILED: {first}"
    cpu = ""
    if m.cpu_s and m.bytes:
        cpu = f"  cpu {m.cpu_total / (m.bytes / 1e9):.2f} s/GB"
    return f"{head} {m.gbps:6.2f} Gbit/s{cpu}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    mode = MODES[args.mode]
    duration = args.duration or mode.duration
    reps = args.reps or mode.reps
    keys = ["direct", *[k for k in args.contestants.split(",") if k and k != "direct"]]
    unknown = [k for k in keys if k not in ALL and k not in HTTP_ALL]
    phases_on = set(args.phases.split(","))
    hmode = HTTP_MODES[args.mode]
    scen_keys = args.scenarios.split(",")
    scenarios = [s for s in SCENARIOS if s.key in scen_keys]
    bad_scen = [k for k in scen_keys if k not in {s.key for s in SCENARIOS}]
    bad_phases = sorted(phases_on - set(PHASES))
    if unknown or bad_scen or not scenarios or bad_phases:
        log(f"unknown contestants {unknown} / scenarios {bad_scen} / phases {bad_phases}")
        return 2
    if args.relay_bin:
        os.environ[RELAY_BIN_ENV] = args.relay_bin
    signal.signal(signal.SIGTERM, _on_sigterm)
    t_start = time.monotonic()
    started_at = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    command = shlex.join([sys.executable, "-m", "bench", *(sys.argv[1:] if argv is None else argv)])

    ensure_prereqs(keys, not args.no_setup, phases_on)
    # Peers and load tools are installed (once, cached in bench/work/tools) before anything is
    # timed; the install time is not part of the run's measurements.
    t_inst = time.monotonic()
    peer_keys = {k.split("-")[0] for k in keys}
    missing_tools = tools.ensure(peer_keys, allow_install=not args.no_install)
    for k, why in missing_tools.items():
        log(f"unavailable: {k}: {why}")
    install_s = time.monotonic() - t_inst
    memory.raise_nofile()
    if not shutil.which("iperf3"):
        log("iperf3 is not installed; cannot run any scenario (run bench/setup.sh)")
        return 1
    log("describing the machine and tool versions")
    mach = machine.describe(REPO)

    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    measurements: list[Measurement] = []
    http_ms: list[HttpMeasurement] = []
    http_res: dict[str, Any] = {}
    mem_res: dict[str, Any] = {}
    sess_res: dict[str, Any] = {}
    work_res: dict[str, Any] = {}
    clu_res: dict[str, Any] = {}
    scale_res: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    bulk_keys = [k for k in keys if k in ALL] if "bulk" in phases_on else []
    active: list[Contestant] = []
    interrupted: str | None = None
    try:
        with ExitStack() as stack:
            origin_port = free_port()
            for key in bulk_keys:
                c: Contestant = (
                    Haproxy(tmp, origin_port, args.haproxy_nbthread)
                    if key == "haproxy"
                    else ALL[key](tmp, origin_port)
                )
                info[key] = {"key": key, "label": c.label}
                skip_reason = c.unavailable()
                if not skip_reason and not runs_of(c, scenarios):
                    skip_reason = f"runs only the {c.streams}-stream scenarios, none selected"
                if skip_reason:
                    log(f"skipping {c.label}: {skip_reason}")
                    info[key]["skipped"] = skip_reason
                    continue
                stack.callback(c.stop)
                log(f"starting {c.label}")
                try:
                    c.start()
                except BenchError as e:
                    log(f"skipping {c.label}: failed to start: {e}")
                    info[key]["skipped"] = f"failed to start: {str(e).splitlines()[0]}"
                    info[key]["start_error"] = str(e)
                    info[key]["logs"] = c.logs()
                    info[key]["config"] = c.config
                    c.stop()
                    continue
                info[key]["config"] = c.config
                info[key]["pids"] = {role: p.pid for role, p in c.procs.items()}
                info[key]["visitor_port"] = c.visitor_port()
                active.append(c)

            per_rep = sum(len(runs_of(c, scenarios)) for c in active)
            total = len(active) + reps * per_rep
            est = len(active) * (mode.warmup + 1) + reps * per_rep * (duration + 1.0)
            log(
                f"{total} iperf3 runs ({len(active)} warm-up + {reps} reps x {per_rep}"
                f" (scenario, contestant) pairs, {duration:g} s each), about {est / 60:.1f} min"
            )
            try:
                # Memory first: thousands of idle connections need ephemeral ports, and
                # the bulk and HTTP phases leave tens of thousands in TIME_WAIT behind them.
                if "memory" in phases_on and "relay" in keys:
                    mem_res = phases.run_memory(tmp, hmode, log)
                # Sessions next, on a fresh edge, before the bulk and HTTP phases fill the
                # port space with TIME_WAIT (its own short links leave some too; loopback
                # reuses them).
                if "sessions" in phases_on and "relay" in keys:
                    secs = args.duration or SESSIONS_DURATION[args.mode]
                    sessions.run_sessions(tmp, secs, reps, mode.warmup, log, sess_res)
                if active:
                    run_all(
                        active, scenarios, reps, duration, mode.warmup, origin_port, tmp,
                        measurements,
                    )  # fmt: skip
                for c in active:
                    dead = [role for role, p in c.procs.items() if not p.alive()]
                    if dead:
                        info[c.key]["died"] = {r: c.procs[r].describe_exit() for r in dead}
                        info[c.key]["logs"] = c.logs()
                    c.stop()
                if "http" in phases_on:
                    http_keys = [k for k in keys if k in HTTP_ALL]
                    http_res = phases.run_http(
                        http_keys, tmp, hmode, args.haproxy_nbthread, log, http_ms
                    )
                # Last: relay only, the http phase's run length and repetitions.
                if "workers" in phases_on and "relay" in keys:
                    wreps = args.reps or hmode.reps
                    workers.run_workers(tmp, hmode.duration, wreps, log, work_res)
                if "cluster" in phases_on and "relay" in keys:
                    creps = args.reps or hmode.reps
                    cluster.run_cluster(
                        tmp, hmode.duration, hmode.lat_duration, creps, log, clu_res
                    )
                # After everything else: 100,000 idle streams and 10,000 sessions are the
                # most the machine holds at once, and the other phases' numbers must not
                # share it with their teardown. Its load connects from 127.0.1.x and dials
                # holders on 127.0.2.x, so the TIME_WAIT the others leave on 127.0.0.1
                # takes none of its ports.
                if "scale" in phases_on and "relay" in keys:
                    scale.run_scale(tmp, args.mode, args.reps, log, scale_res)
            except (KeyboardInterrupt, SystemExit) as e:
                interrupted = f"interrupted ({type(e).__name__}) after {len(measurements)} runs"
                log(f"{interrupted}; stopping contestants and writing partial results")
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
    finally:
        # ExitStack has stopped every contestant by now (or on the way out of an exception).
        if args.keep_temp:
            log(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    mach["loadavg_at_end"] = machine.loadavg()
    mach["versions"].update(
        {
            "nginx": nginx_version(),
            "wrk": tools.version_of(["wrk", "-v"]),
            "oha": httpbench.oha_version(),
            "frp": f"{tools.FRP_VERSION} (frps/frpc built from the Go module)",
            "rathole": f"{tools.RATHOLE_VERSION} (crates.io, default features: tls=native-tls)",
            "bore": f"bore-cli {tools.BORE_VERSION} (crates.io)",
            "socat": tools.version_of(["socat", "-V"]),
        }
    )
    extra = {
        "http": http_res,
        "http_measurements": http_ms,
        "memory": mem_res,
        "sessions": sess_res,
        "workers": work_res,
        "cluster": clu_res,
        "scale": scale_res,
        "install_seconds": round(install_s, 1),
        "unavailable_tools": missing_tools,
        "http_mode": hmode,
    }
    return write_results(
        args,
        mode,
        duration,
        reps,
        started_at,
        command,
        mach,
        keys,
        info,
        scenarios,
        measurements,
        time.monotonic() - t_start,
        interrupted,
        extra,
    )


def run_all(
    active: list[Contestant],
    scenarios: list[Scenario],
    reps: int,
    duration: float,
    warmup: float,
    origin_port: int,
    tmp: Path,
    measurements: list[Measurement],
) -> None:
    """One warm-up per contestant, then reps x scenarios, contestants alternated and rotated
    (a contestant that runs only some scenarios sits the others out)."""
    total = len(active) + reps * sum(len(runs_of(c, scenarios)) for c in active)
    seq = 0

    def one(s: Scenario, c: Contestant, rep: int, secs: float) -> None:
        nonlocal seq
        seq += 1
        m = measure(s, c.key, rep, c.visitor_port(), origin_port, secs, c.cpu_procs(), tmp, seq)
        measurements.append(m)
        log(progress_line(seq, total, reps, m, c.label))
        time.sleep(0.2)

    for c in active:
        if runs_of(c, scenarios):
            one(runs_of(c, scenarios)[0], c, 0, warmup)
    for rep in range(1, reps + 1):
        for si, s in enumerate(scenarios):
            shift = (rep - 1 + si) % max(len(active), 1)
            for c in active[shift:] + active[:shift]:
                if s in runs_of(c, scenarios):
                    one(s, c, rep, duration)


def runs_of(c: Contestant, scenarios: list[Scenario]) -> list[Scenario]:
    """The scenarios contestant ``c`` runs."""
    return [s for s in scenarios if c.streams is None or s.streams in c.streams]


def _contestant_summary(key: str, cfg: dict[str, Any]) -> str:
    if key == "direct":
        return "iperf3 client → iperf3 server, no hop"
    if key == "haproxy":
        return f"one plain TCP hop, `mode tcp`, nbthread {cfg.get('nbthread', '?')}"
    if key == "ssh":
        return f"OpenSSH `ssh -N -R`, cipher {cfg.get('cipher', '?')}, sshd on 127.0.0.1"
    if key == "relay":
        return "relay edge + `relay tcp` agent (TLS agent link)" + (
            f"; agent said: `{cfg['forwarding_line']}`" if cfg.get("forwarding_line") else ""
        )
    if key == "relay-links2":
        where, end = cfg.get("placement", {}), cfg.get("placement_at_end")
        moved = "unchanged" if end == where.get("workers") else f"{end}"
        return (
            "`relay edge --workers 2` + one `relay tcp --links 2` agent, a link on each worker"
            f" (workers of links 0 and 1: {where.get('workers')} after {where.get('tries')} agent"
            f" start(s); after the runs: {moved}); 8-stream scenarios only"
        )
    peers = {
        "frp": "frps + frpc (TLS forced, tcp_mux/yamux), one `tcp` proxy",
        "rathole": "rathole server + client, TLS transport (native-tls), no mux",
        "bore": "bore server + bore local, no encryption, one TCP connection per visitor",
        "socat-tls": "two socat relays joined by TLS 1.3, one fork + handshake per connection",
    }
    return peers.get(key, "")


def write_results(
    args: argparse.Namespace,
    mode: Mode,
    duration: float,
    reps: int,
    started_at: str,
    command: str,
    mach: dict[str, Any],
    keys: list[str],
    info: dict[str, dict[str, Any]],
    scenarios: list[Scenario],
    measurements: list[Measurement],
    wall: float,
    interrupted: str | None,
    extra: dict[str, Any],
) -> int:
    cells = report.summarize(measurements)
    relay_skip: str | None = "not in this run (--contestants)"
    if "relay" in info:
        relay_skip = "skipped (see Contestants)" if info["relay"].get("skipped") else None
    tgts = report.targets(cells, scenarios, relay_skip)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{started_at}-{args.mode}"
    for k in keys:
        if k in info:
            info[k]["summary"] = _contestant_summary(k, info[k].get("config", {}))
    http_ms: list[HttpMeasurement] = extra["http_measurements"]
    hcells = report_http.cells(http_ms)
    hmode: HttpMode = extra["http_mode"]
    tgts += report_http.targets(hcells, extra["memory"])
    sess_res: dict[str, Any] = extra["sessions"]
    cores = int(mach.get("cores_usable") or 1)
    if sess_res:
        sess_res["summary"] = report_sessions.summary(sess_res, cores)
    tgts.append(report_sessions.target(sess_res, cores))  # "not evaluated" when not run
    work_res: dict[str, Any] = extra["workers"]
    if work_res:
        work_res["summary"] = report_workers.summary(work_res)
    tgts += report_workers.targets(work_res, cores)
    clu_res: dict[str, Any] = extra["cluster"]
    if clu_res and not clu_res.get("skipped"):
        clu_res["summary"] = report_cluster.summary(clu_res)
    tgts += report_cluster.targets(clu_res)
    scale_res: dict[str, Any] = extra["scale"]
    if scale_res:
        scale_res["summary"] = report_scale.summary(scale_res)
    tgts += report_scale.targets(scale_res)
    http_summary: dict[str, dict[str, Any]] = {}
    for (scen, key, rate), cell in hcells.items():
        if scen in ("ka-max", "close-max", "ka-lat", "close-lat", "hol-base", "hol-bulk"):
            http_summary.setdefault(scen, {})[key] = {"rate": rate, **cell.to_json()}
    result: dict[str, Any] = {
        "mode": args.mode,
        "started_at": started_at,
        "command": command,
        "machine": mach,
        "config": {
            "duration_s": duration,
            "reps": reps,
            "warmup_s": mode.warmup,
            "haproxy_nbthread": args.haproxy_nbthread,
            "tool": "iperf3 --json, end.sum_received",
        },
        "contestants": [info[k] for k in keys if k in info],
        "http": extra["http"],
        "http_summary": http_summary,
        "memory": extra["memory"],
        "sessions": sess_res,
        "workers": work_res,
        "cluster": clu_res,
        "scale": scale_res,
        "install_seconds": extra["install_seconds"],
        "unavailable_tools": extra["unavailable_tools"],
        "http_config": {
            **hmode.__dict__,
            "wrk": f"wrk -t{httpbench.WRK_THREADS} -c{httpbench.KA_CONNS} (keep-alive),"
            f" -c{httpbench.CLOSE_CONNS} with Connection: close",
            "oha": f"oha -q RATE -c{httpbench.OHA_CONNS} --latency-correction -w",
        },
        "scenarios": [
            {"key": s.key, "label": s.label, "streams": s.streams, "reverse": s.reverse}
            for s in scenarios
        ],
        "results": {
            s.key: {k: cells[(s.key, k)].to_json() for k in keys if (s.key, k) in cells}
            for s in scenarios
        },
        "ratios": {
            s.key: {
                k: {b: report.ratio(cells, s.key, k, b) for b, _ in report.BASELINES}
                for k in keys
                if (s.key, k) in cells
            }
            for s in scenarios
        },
        "targets": [t.to_json() for t in tgts],
        "measurements": [m.to_json() for m in measurements],
        "http_measurements": [m.to_json() for m in http_ms],
        "wall_seconds": round(wall, 1),
        "interrupted": interrupted,
        "json_name": f"{stem}.json",
    }
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    result["charts"] = charts.draw(result, out, stem)
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    md = report.markdown(result, cells)
    labels = {k: HTTP_ALL[k].label if k in HTTP_ALL else ALL[k].label for k in keys}
    order = [k for k in HTTP_ALL if k in keys]
    result["config"].update(
        ka_conns=httpbench.KA_CONNS,
        close_conns=httpbench.CLOSE_CONNS,
        http_duration_s=hmode.duration,
        hol_duration_s=hmode.hol_duration,
    )
    result["http_measurements_raw"] = http_ms
    hmd = report_http.markdown(result, hcells, labels, order)
    del result["http_measurements_raw"]
    tail = md.rfind("\nTotal wall time")
    smd = report_sessions.markdown(sess_res, cores)
    wmd = report_workers.markdown(work_res, cores)
    cmd = report_cluster.markdown(clu_res, cores)
    scmd = report_scale.markdown(scale_res, cores)
    body = hmd + smd + wmd + cmd + scmd
    md = md[:tail] + "\n" + "\n".join(body) + _extras_md(result) + md[tail:]
    md_path.write_text(md)
    latest = out / f"latest-{args.mode}.md"
    with contextlib.suppress(OSError):
        latest.unlink()
    shutil.copyfile(md_path, latest)
    print(md)
    log(f"wrote {json_path}, {md_path} and {latest} ({wall:.0f} s)")
    if interrupted:
        return 130
    # Failure only when nothing at all was measured (a run of the http, sessions, workers or
    # cluster phase alone has no bulk measurements).
    ok = (
        any(m.ok for m in measurements)
        or any(m.ok for m in http_ms)
        or any(r.get("ok") for r in sess_res.get("runs", []) if not r.get("error"))
        or any(r.get("requests") for r in work_res.get("runs", []) if not r.get("error"))
        or any(r.get("requests") for r in clu_res.get("runs", []) if not r.get("error"))
        or any(r.get("ok") for r in [*scale_res.get("streams", {}).values(),
                                     *scale_res.get("sessions", {}).values()])
        or any(not r.get("error") for r in scale_res.get("admit", []))
    )  # fmt: skip
    return 0 if ok else 1


def _extras_md(result: dict[str, Any]) -> str:
    lines = ["", "## Peers, versions, installs", ""]
    v = result["machine"]["versions"]
    lines.append(
        "- Versions: "
        + "; ".join(
            f"{k} `{v[k]}`"
            for k in ("nginx", "wrk", "oha", "frp", "rathole", "bore", "socat")
            if k in v
        )
    )
    lines.append(f"- Installs/builds before the run (not timed): {result['install_seconds']:.0f} s")
    for k, why in result.get("unavailable_tools", {}).items():
        lines.append(f"- **{k} unavailable** — {why}")
    http = result.get("http", {}).get("contestants", {})
    for c in http.values():
        if c.get("skipped"):
            lines.append(f"- HTTP phase: **{c['label']} skipped** — {c['skipped']}")
        if c.get("died"):
            lines.append(f"- HTTP phase: **{c['label']} died** — {c['died']}")
    lines.append("- Configs of every contestant (both phases) are in the JSON (`contestants`,"
                 " `http.contestants`).")  # fmt: skip
    charts_ = result.get("charts") or []
    if charts_:
        lines += ["", "## Charts", ""] + [f"![{c}]({c})" for c in charts_]
    else:
        lines += ["", "(no charts: matplotlib is not in the venv, or no charted phase ran)"]
    lines.append("")
    return "\n".join(lines)
