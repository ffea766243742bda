"""The HTTP phase (max, new connections, fixed-rate latency, downloads, head-of-line) and the
memory phase. Contestants here forward to the nginx origin; they are started for this phase and
stopped by PID in a `finally`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import httpbench, memory
from bench.contestants import Contestant, Haproxy
from bench.httpbench import HttpMeasurement
from bench.loopfloor import LoopFloor
from bench.origin import Origin
from bench.peers import HTTP
from bench.procs import BenchError


@dataclass(frozen=True)
class HttpMode:
    duration: float  # wrk runs
    lat_duration: float  # oha runs
    reps: int
    sweep: tuple[float, ...]  # fractions of each contestant's own keep-alive max ()=no sweep
    close_latency: bool
    hol: tuple[str, ...]
    hol_rate: float
    # At 200 req/s a 2 s run has 400 samples: its p99 is the 4th-worst request, and the
    # ratio of two such figures swung 1.5-4x between runs of the same build (measured).
    hol_duration: float
    mem_sessions: tuple[int, ...]
    mem_streams: tuple[int, ...]


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def start_contestants(
    keys: list[str], tmp: Path, origin_port: int, nbthread: int, log: Callable[[str], None]
) -> tuple[list[Contestant], dict[str, dict[str, Any]]]:
    active: list[Contestant] = []
    info: dict[str, dict[str, Any]] = {}
    for key in keys:
        cls = HTTP[key]
        c: Contestant = (
            cls(tmp / "http", origin_port, nbthread)  # type: ignore[call-arg]
            if issubclass(cls, Haproxy)
            else cls(tmp / "http", origin_port)
        )
        info[key] = {"key": key, "label": c.label}
        why = c.unavailable()
        if why:
            log(f"http: skipping {c.label}: {why}")
            info[key]["skipped"] = why
            continue
        log(f"http: starting {c.label}")
        try:
            c.start()
        except BenchError as e:
            log(f"http: skipping {c.label}: failed to start: {e}")
            info[key].update(skipped=f"failed to start: {str(e).splitlines()[0]}", logs=c.logs())
            c.stop()
            continue
        info[key].update(
            config=c.config,
            visitor_port=c.visitor_port(),
            host_header=c.http_host,
            pids={r: p.pid for r, p in c.procs.items()},
        )
        active.append(c)
    return active, info


def run_http(
    keys: list[str],
    tmp: Path,
    mode: HttpMode,
    nbthread: int,
    log: Callable[[str], None],
    out: list[HttpMeasurement],
) -> dict[str, Any]:
    """Run every HTTP scenario; measurements go to `out` as they come (partial on interrupt)."""
    res: dict[str, Any] = {"contestants": {}, "rates": {}}
    origin = Origin(tmp)
    active: list[Contestant] = []
    floor: LoopFloor | None = None
    try:
        origin.start()
        res["origin"] = {"port": origin.port, "config": origin.config, "sha256": origin.sha256}
        active, info = start_contestants(keys, tmp, origin.port, nbthread, log)
        res["contestants"] = info

        def rec(m: HttpMeasurement, label: str) -> None:
            out.append(m)
            what = f"{m.rps:9.0f} req/s" if m.ok and m.rps is not None else f"FAILED: {m.error}"
            lat = ""
            if m.ok and m.latency_ms.get("p99") is not None and m.rate:
                lat = f"  p50 {m.latency_ms.get('p50', 0):.2f} p99 {m.latency_ms['p99']:.2f} ms"
            err = f"  errors {m.errors}" if m.errors else ""
            rep = "warm-up" if m.rep == 0 else f"rep {m.rep}"
            rate = f"@{m.rate:.0f}/s" if m.rate else ""
            log(f"http {rep:<7} {m.scenario:<9}{rate:<9} {label:<12} {what}{lat}{err}")

        # Warm-up (not counted) and hash-checked downloads.
        for c in active:
            rec(httpbench.wrk("ka-max", c.key, 0, c.visitor_port(), c.http_host, 1, c.procs,
                              close=False), c.label)  # fmt: skip
        for c in active:
            m = httpbench.download_check(
                c.key, c.visitor_port(), c.http_host, origin.sha256, c.cpu_procs()
            )
            out.append(m)
            files = m.extra.get("files", {})
            big = files.get("100m.bin", {})
            log(
                f"http download {c.label:<12} "
                + (
                    f"100 MiB sha256 {'OK' if big.get('match') else 'MISMATCH'}"
                    f" {big.get('mbyte_per_s')} MB/s"
                    if big
                    else f"FAILED: {m.error}"
                )
            )

        # Closed-loop maxima, contestants alternated and rotated per repetition.
        for rep in range(1, mode.reps + 1):
            shift = (rep - 1) % max(len(active), 1)
            for c in active[shift:] + active[:shift]:
                for close in (False, True):
                    scen = "close-max" if close else "ka-max"
                    m = httpbench.wrk(scen, c.key, rep, c.visitor_port(), c.http_host,
                                      mode.duration, c.cpu_procs(), close=close)  # fmt: skip
                    rec(m, c.label)
                    time.sleep(0.2)

        def max_median(key: str, scen: str) -> float | None:
            return med([m.rps for m in out if m.contestant == key and m.scenario == scen
                        and m.rep > 0 and m.ok and m.rps])  # fmt: skip

        ka_max = {c.key: max_median(c.key, "ka-max") for c in active}
        close_max = {c.key: max_median(c.key, "close-max") for c in active}
        res["rates"]["ka_max"] = ka_max
        res["rates"]["close_max"] = close_max
        known = [v for v in ka_max.values() if v]
        common = round(0.5 * min(known), -1) if known else None
        res["rates"]["common_ka_rate"] = common
        cknown = [v for v in close_max.values() if v]
        ccommon = round(0.5 * min(cknown), -1) if cknown else None
        res["rates"]["common_close_rate"] = ccommon if mode.close_latency else None

        # Fixed-rate latency (open loop, latency-corrected) at a rate every contestant sustains.
        # Beside the contestants: the uvloop floor (what one wake-up per request costs a
        # Python process) and, in direct's runs, the origin's own CPU (what it costs nginx).
        if common and httpbench.oha_binary():
            floor = start_floor(tmp, origin.port, log, res)
            lat_order = active + ([floor] if floor else [])
            for rep in range(1, mode.reps + 1):
                shift = (rep - 1) % max(len(lat_order), 1)
                for c in lat_order[shift:] + lat_order[:shift]:
                    procs = c.cpu_procs()
                    if c.key == "direct" and origin.proc is not None:
                        procs = {"origin nginx": origin.proc}
                    m = httpbench.oha("ka-lat", c.key, rep, c.visitor_port(), c.http_host,
                                      mode.lat_duration, common, procs)  # fmt: skip
                    rec(m, c.label)
                    if c is floor:
                        continue
                    if mode.close_latency and ccommon:
                        rec(httpbench.oha("close-lat", c.key, rep, c.visitor_port(),
                                          c.http_host, mode.lat_duration, ccommon,
                                          c.cpu_procs(), close=True, conns=CLOSE_LAT_CONNS),
                            c.label)  # fmt: skip
            # Sweep: fractions of each contestant's own maximum, to find its knee.
            for frac in mode.sweep:
                for rep in range(1, mode.reps + 1):
                    for c in active:
                        top = ka_max.get(c.key)
                        if not top:
                            continue
                        m = httpbench.oha("ka-sweep", c.key, rep, c.visitor_port(), c.http_host,
                                          mode.lat_duration, round(top * frac, -1),
                                          c.cpu_procs())  # fmt: skip
                        m.extra["fraction_of_max"] = frac
                        rec(m, c.label)
        elif not httpbench.oha_binary():
            res["latency_skipped"] = "oha not installed"

        # Head-of-line: small requests at a fixed rate with and without a 100 MiB download
        # running on the same tunnel (relay TCP endpoint: the same agent session).
        if httpbench.oha_binary():
            for rep in range(1, mode.reps + 1):
                for c in active:
                    if c.key not in mode.hol:
                        continue
                    rec(httpbench.oha("hol-base", c.key, rep, c.visitor_port(), c.http_host,
                                      mode.hol_duration, mode.hol_rate, c.cpu_procs(),
                                      conns=10), c.label)  # fmt: skip
                    with httpbench.BulkLoop(
                        c.visitor_port(), c.http_host, origin.sha256["100m.bin"]
                    ) as bulk:
                        m = httpbench.oha("hol-bulk", c.key, rep, c.visitor_port(), c.http_host,
                                          mode.hol_duration, mode.hol_rate, c.cpu_procs(),
                                          conns=10)  # fmt: skip
                    m.extra["bulk"] = {
                        "downloads_completed": bulk.done,
                        "sha256_mismatches": bulk.bad,
                        "bytes": bulk.bytes,
                        "errors": bulk.errors[:5],
                    }
                    if bulk.bad:
                        m.errors += bulk.bad
                        m.error_kinds["bulk sha256 mismatch"] = bulk.bad
                    rec(m, c.label)
        for c in active:
            dead = [r for r, p in c.procs.items() if not p.alive()]
            if dead:
                info[c.key]["died"] = {r: c.procs[r].describe_exit() for r in dead}
                info[c.key]["logs"] = c.logs()
    finally:
        for c in active:
            c.stop()
        if floor is not None:
            floor.stop()
        origin.stop()
    return res


def start_floor(
    tmp: Path, origin_port: int, log: Callable[[str], None], res: dict[str, Any]
) -> LoopFloor | None:
    """Start the uvloop floor responder; None (and the reason in `res`) when it cannot run."""
    floor = LoopFloor(tmp / "http", origin_port)
    log(f"http: starting {floor.label}")
    try:
        floor.start()
    except BenchError as e:
        log(f"http: skipping {floor.label}: {e}")
        res["loopfloor"] = {"skipped": str(e).splitlines()[0], "logs": floor.logs()}
        floor.stop()
        return None
    res["loopfloor"] = {"label": floor.label, "summary": floor.summary, "config": floor.config}
    return floor


CLOSE_LAT_CONNS = 20


def run_memory(tmp: Path, mode: HttpMode, log: Callable[[str], None]) -> dict[str, Any]:
    memory.raise_nofile()
    out: dict[str, Any] = {}
    log(f"memory: idle agent sessions, steps {list(mode.mem_sessions)}")
    out["sessions"] = memory.sessions_slope(tmp, list(mode.mem_sessions))
    s = out["sessions"]
    log(
        "memory: edge "
        + (
            f"{s['edge_bytes_per_session'] / 1024:.1f} KiB per idle agent session"
            if s.get("ok")
            else f"FAILED: {s.get('error')}"
        )
    )
    log(f"memory: idle open streams, steps {list(mode.mem_streams)}")
    out["streams"] = memory.streams_slope(tmp, list(mode.mem_streams))
    t = out["streams"]
    log(
        "memory: edge "
        + (
            f"{t['edge_bytes_per_stream']:.0f} B per idle stream"
            f" (agent {t.get('agent_bytes_per_stream') or 0:.0f} B)"
            if t.get("ok")
            else f"FAILED: {t.get('error')}"
        )
    )
    return out
