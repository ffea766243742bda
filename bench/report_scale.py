"""Summary, targets and markdown of the scale phase (issue 14's "Scale" figures;
bench/scale.py)."""

from __future__ import annotations

import statistics
from typing import Any

from bench.report import EN, Target, X, quotient, section_opening

#: "Memory per session and per stream unchanged from one worker": the slope with N workers
#: at most this many times one worker's (RSS slopes of one process repeat within a few %).
MAX_MEMORY_GROWTH = 1.10
STREAMS_GOAL = 100_000
SESSIONS_GOAL = 10_000
ADMIT_GOAL = 1_000
FAILED = 'outcome="failed"'


def _name_streams(n: int | str) -> str:
    return (
        f"scale: {STREAMS_GOAL:,} idle open streams on one node ({n} workers), edge memory per"
        f" stream ≤ {MAX_MEMORY_GROWTH:g}{X} one worker's"
    )


def _name_sessions(n: int | str) -> str:
    return (
        f"scale: {SESSIONS_GOAL:,} idle agent sessions on one node ({n} workers), edge memory"
        f" per session ≤ {MAX_MEMORY_GROWTH:g}{X} one worker's"
    )


ADMIT_NAME = (
    f"scale: {ADMIT_GOAL:,} agents admitted at once (auth + bind), no failure, 1 and 2 workers"
)


def _f(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def _range(v: list[float], spec: str = ",.0f") -> str:
    if not v:
        return "—"
    return f"{statistics.median(v):{spec}} ({min(v):{spec}}{EN}{max(v):{spec}})"


def _big(res: dict[str, Any]) -> str:
    return f"w{res.get('config', {}).get('workers', 8)}"


def _part(res: dict[str, Any], part: str, workers: str) -> dict[str, Any]:
    got: dict[str, Any] = res.get(part, {}).get(workers, {})
    return got


def _memory_figures(res: dict[str, Any], part: str) -> dict[str, Any]:
    one, big = _part(res, part, "w1"), _part(res, part, _big(res))
    a = big.get("edge_bytes_per_unit") if big.get("ok") else None
    b = one.get("edge_bytes_per_unit") if one.get("ok") else None
    return {
        "one_worker_bytes": b,
        "n_workers_bytes": a,
        "n_workers": res.get("config", {}).get("workers"),
        "n_workers_held": big.get("target") if big.get("ok") else None,
        "ratio_n_to_1": quotient(a, b),
    }


def admit_cells(res: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in res.get("admit", []):
        out.setdefault(int(r["workers"]), []).append(r)
    return out


def _good(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if not r.get("error") and r.get("seconds")]


def _edge_ms(runs: list[dict[str, Any]]) -> list[float]:
    return [r["edge_cpu_s"] * 1e3 / r["admitted"] for r in _good(runs)
            if r.get("edge_cpu_s") is not None and r["admitted"]]  # fmt: skip


def _cores(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] / r["seconds"] for r in _good(runs) if r.get(key) is not None]


def _others(r: dict[str, Any]) -> float | None:
    if r.get("machine_cpu_s") is None or r.get("edge_cpu_s") is None:
        return None
    rest = float(r["machine_cpu_s"]) - float(r["edge_cpu_s"]) - float(r.get("gen_cpu_s") or 0.0)
    return max(rest, 0.0)


def _failures(runs: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in runs:
        for kind, n in r.get("failures", {}).items():
            out[kind] = out.get(kind, 0) + int(n)
        if r.get("error"):
            kind = f"run failed: {str(r['error']).splitlines()[0]}"
            out[kind] = out.get(kind, 0) + 1
    return out


def summary(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "streams": _memory_figures(res, "streams"),
        "sessions": _memory_figures(res, "sessions"),
        "admit": {},
    }
    for workers, runs in sorted(admit_cells(res).items()):
        good = _good(runs)
        secs = [float(r["seconds"]) for r in good]
        rates = [float(r["per_s"]) for r in good]
        out["admit"][f"w{workers}"] = {
            "runs": len(runs),
            "failed_runs": len(runs) - len(good),
            "seconds_median": statistics.median(secs) if secs else None,
            "seconds_min": min(secs) if secs else None,
            "seconds_max": max(secs) if secs else None,
            "sessions_per_s_median": statistics.median(rates) if rates else None,
            "sessions_per_s_min": min(rates) if rates else None,
            "sessions_per_s_max": max(rates) if rates else None,
            "edge_cpu_ms_per_session_median": (
                statistics.median(ms) if (ms := _edge_ms(runs)) else None
            ),
            "failures": _failures(runs),
        }
    return out


def targets(res: dict[str, Any]) -> list[Target]:
    n = res.get("config", {}).get("workers", "N") if res else "N"
    names = [_name_streams(n), _name_sessions(n), ADMIT_NAME]
    if not res or res.get("skipped"):
        why = res.get("skipped", "phase not run") if res else "phase not run"
        return [Target(t, None, f"not evaluated: {why}") for t in names]
    out: list[Target] = []
    for part, name, goal, unit in (
        ("streams", names[0], STREAMS_GOAL, "stream"),
        ("sessions", names[1], SESSIONS_GOAL, "session"),
    ):
        one, big = _part(res, part, "w1"), _part(res, part, _big(res))
        problems = [f"{w}: {str(r.get('error', 'not run')).splitlines()[0]}"
                    for w, r in (("1 worker", one), (f"{n} workers", big))
                    if not r.get("ok")]  # fmt: skip
        if problems:
            out.append(Target(name, None, "not evaluated: " + "; ".join(problems)))
            continue
        a, b = big["edge_bytes_per_unit"], one["edge_bytes_per_unit"]
        held = int(big.get("target", 0))
        r = a / b if b else None
        out.append(
            Target(
                name,
                held >= goal and r is not None and r <= MAX_MEMORY_GROWTH,
                f"{held:,} held on {n} workers: {a:,.0f} B per {unit} vs {b:,.0f} with one"
                f" worker ({int(one.get('target', 0)):,} held) = {_f(r, '.2f', X)} (need"
                f" ≤ {MAX_MEMORY_GROWTH:g}{X}" + (f" and {goal:,} held)" if held < goal else ")"),
            )
        )
    cells = admit_cells(res)
    if not cells:
        out.append(Target(ADMIT_NAME, None, "not evaluated: no admission run"))
        return out
    details, met = [], True
    for workers, runs in sorted(cells.items()):
        good = _good(runs)
        fails = sum(_failures(runs).values())
        short = sum(
            int(r.get("agents", ADMIT_GOAL)) - int(r.get("admitted", 0))
            for r in runs
            if not r.get("error")
        )
        met = met and fails == 0 and short == 0 and len(good) == len(runs)
        rates = [float(r["per_s"]) for r in good]
        details.append(
            f"{workers} worker{'s' if workers > 1 else ''}: {_range(rates)} sessions/s over"
            f" {len(runs)} runs, failures {fails}"
        )
    out.append(Target(ADMIT_NAME, met, "; ".join(details)))
    return out


# --------------------------------------------------------------------------- markdown


def _mib(b: float | None) -> str:
    return "—" if b is None else f"{b / 2**20:,.0f}"


def _memory_row(label: str, r: dict[str, Any], base: dict[str, Any]) -> list[str]:
    if not r:
        return [label, "not run"] + ["—"] * 10
    if not r.get("ok"):
        why = str(r.get("error", "?")).splitlines()[0]
        pts = r.get("points", [])
        reached = f"; reached {pts[-1]['count']:,}" if len(pts) > 1 else ""
        return [label, f"**failed**: {why}{reached}"] + ["—"] * 10
    pts = r["points"]
    top = pts[-1]
    per_worker = r.get("worker_bytes_per_unit") or []
    is_base = r is base
    growth = quotient(r["edge_bytes_per_unit"], base.get("edge_bytes_per_unit"))
    ratio = "1.00" + X if is_base else _f(growth, ".2f", X)
    counts = top["edge_counts_by_worker"]
    spread = f"{min(counts):,}{EN}{max(counts):,}" if len(counts) > 1 else f"{counts[0]:,}"
    verified = f"edge {top['edge_count']:,}"
    if "probes" in top:
        verified += f"; echo {top['probes'][0]}/{top['probes'][1]}"
    steps = " → ".join(f"{p['count']:,}" for p in pts)
    opened = sum(p.get("open_s", 0) for p in pts)
    return [
        label,
        steps,
        f"{spread} ({verified})",
        f"{_mib(pts[0]['edge_rss'])} → {_mib(top['edge_rss'])}",
        f"**{r['edge_bytes_per_unit']:,.0f}**",
        ratio,
        _range(per_worker) if per_worker else "—",
        f"{max(v for v in top['worker_fds'] if v is not None):,}",
        _f(r.get("agents_bytes_per_unit") or r.get("load_generators_bytes_per_unit"), ",.0f"),
        _f(r.get("kernel_slab_bytes_per_unit"), ",.0f"),
        f"{opened:.0f} s ({top['count'] / opened:,.0f}/s)" if opened else "—",
        f"{r.get('wall_s', 0):.0f} s",
    ]


def markdown(res: dict[str, Any], cores: int) -> list[str]:
    L, goes_on = section_opening(res, "Scale: one node, many workers (issue 14)")
    add = L.append
    if not goes_on:
        return L
    cfg = res.get("config", {})
    lim = cfg.get("limits", {})
    n = cfg.get("workers", 8)
    big = f"w{n}"
    agents = cfg.get("stream_agents", {})
    per_agent = cfg.get("streams_per_agent", 0)
    ports = EN.join(str(lim.get("ip_local_port_range", "?")).split())
    add(
        f"Machine limits worked around: the hard RLIMIT_NOFILE is {lim.get('rlimit_nofile_hard')}"
        f" per process (soft {lim.get('rlimit_nofile_soft')}) and cannot be raised here (no"
        " CAP_SYS_RESOURCE); fs.file-max is"
        f" {lim.get('file_max')}. So the streams are spread over processes that each stay well"
        f" under it: `relay edge --workers {n}` (each worker its own process and limit),"
        f" {agents.get(str(n))} `relay tcp` agents of {per_agent:,} streams each (one upstream"
        f" socket per stream in the agent), agents restarted until no worker holds more than"
        f" {cfg.get('agents_per_worker_max')} (a TCP endpoint listens only in the worker holding"
        " its agent, so a worker's visitor sockets are its agents'), and one load-generator"
        " process per agent (`python -m bench.memload streams`: its holder upstream and its"
        " visitors, two sockets per stream). The ephemeral port range"
        f" ({ports}) bounds connections per source address and"
        " destination: each load generator connects from its own address in 127.0.1.0/24"
        " (bound with IP_BIND_ADDRESS_NO_PORT) to its agent's own endpoint port, and each holder"
        " listens on its own address in 127.0.2.0/24; every socket is closed with a reset, so"
        " nothing is left in TIME_WAIT. Only 127.0.0.0/8 is used. One worker is measured at"
        f" {int(agents.get('1', 0)) * per_agent:,} streams, what one process holds under the"
        " descriptor limit. Every edge runs with edge.yaml `max_sessions: 1000000` (the"
        " default, 10,000 per process, is the whole session count of one worker: a single"
        " extra link, such as a reconnect racing its old session's end, would be refused) and"
        " `reclaim_grace: 0` (a restarted agent gets its port back at once)."
    )
    add("")
    add(
        f"Memory: after each step (and {cfg.get('settle_s', 2):g} s to settle) the RSS (VmRSS) of"
        " every edge process, supervisor and workers summed; bytes per stream or session = the"
        " least-squares slope over the points, 0 included. The step counts are checked: each"
        " holder accepted as many upstream connections as its load generator opened, the"
        " workers' `relay_streams_open` (or `relay_agent_sessions`) sum to the total, and"
        f" {cfg.get('probes_per_load_generator')} streams per load generator picked at random"
        " echo 16 random bytes end to end (visitor → edge → agent → holder and back). Per-worker"
        " slope: each worker's RSS against its own count. Kernel: the machine's unreclaimable"
        " slab (`/proc/meminfo` SUnreclaim), where socket structures live — four sockets per"
        " stream (visitor, edge side, agent side, holder), two per session; machine-wide, so"
        " other work moves it too. /proc/net/sockstat `TCP mem` stays at its floor: idle"
        " sockets hold no buffers."
    )
    add("")
    hdr = [
        "edge",
        "steps",
        "per worker at the top (verified)",
        "edge RSS MiB",
        "edge B per stream",
        f"{X} 1 worker",
        f"per-worker slope, median (min{EN}max)",
        "busiest worker's descriptors",
        "agents B per stream",
        "kernel slab B per stream",
        "time opening",
        "part's wall time",
    ]
    add("### Idle open streams")
    add("")
    add("| " + " | ".join(hdr) + " |")
    add("|" + "|".join([" --- "] * 4 + [" ---: "] * (len(hdr) - 4)) + "|")
    s1, sn = _part(res, "streams", "w1"), _part(res, "streams", big)
    add("| " + " | ".join(_memory_row("1 worker", s1, s1)) + " |")
    add("| " + " | ".join(_memory_row(f"{n} workers", sn, s1)) + " |")
    add("")
    if sn.get("ok"):
        add(
            f"Placement ({n} workers): agents per worker {sn.get('agents_per_worker')} after"
            f" {sn.get('restarts', 0)} agent restart(s); load generators' RSS"
            f" {_f(sn.get('load_generators_bytes_per_unit'), ',.0f')} B per stream (two"
            " sockets each); setup (edge, agents, load generators)"
            f" {sn.get('setup_s', 0):.0f} s, teardown {sn.get('teardown_s', 0):.0f} s."
        )
        add("")
    add("### Idle agent sessions")
    add("")
    add(
        f"{cfg.get('sessions', 0):,} `relay.agent.client.Agent` sessions (each binds an http"
        f" name), from {cfg.get('session_processes')} processes (`python -m bench.memload"
        f" sessions`, at most {cfg.get('session_pending')} handshakes in flight each), in"
        " steps; with workers the sessions land where the kernel's SO_REUSEPORT hash puts them."
    )
    add("")
    hdr2 = [h.replace("stream", "session") for h in hdr]
    hdr2[8] = "load generator B per session"
    add("| " + " | ".join(hdr2) + " |")
    add("|" + "|".join([" --- "] * 4 + [" ---: "] * (len(hdr2) - 4)) + "|")
    e1, en = _part(res, "sessions", "w1"), _part(res, "sessions", big)
    add("| " + " | ".join(_memory_row("1 worker", e1, e1)) + " |")
    add("| " + " | ".join(_memory_row(f"{n} workers", en, e1)) + " |")
    add("")
    extra = ""
    if e1.get("ok") and en.get("ok") and n > 1:
        d = en["edge_bytes_per_unit"] - e1["edge_bytes_per_unit"]
        extra = (
            f" Here {n} workers pay {d:,.0f} B more per session than one, {d / (n - 1):,.0f} B"
            f" in each of the {n - 1} workers that do not hold it."
        )
    add(
        "With workers each name an agent binds is also known to every other worker (its"
        " `elsewhere` table, so that a visitor accepted there is handed to the right one): part"
        " of a session's cost is paid N - 1 more times, the rest once." + extra
    )
    add("")
    L += _admit_md(res, cores)
    return L


def _admit_md(res: dict[str, Any], cores: int) -> list[str]:
    L: list[str] = []
    add = L.append
    cfg = res.get("config", {})
    add(f"### Admitting {cfg.get('admit_agents', ADMIT_GOAL):,} agents at once")
    add("")
    add(
        "A fresh edge per run (`--workers 1`, then `--workers 2`, alternated, order swapped every"
        f" other rep; {cfg.get('admit_reps')} reps), TCP ports {cfg.get('admit_ports')} for the"
        f" random-port binds. {cfg.get('admit_agents', ADMIT_GOAL):,} clients of relay's wire"
        f" protocol (bench/sessions.py's) in {cfg.get('admit_processes')} processes, released at"
        " one wall-clock instant: each connects, TLS handshake (full, the agent's settings and CA"
        " check), Auth → AuthOk, Bind tcp → Bound, then holds its session. Time: from the"
        " release until the last one is bound; sessions/s = bound ÷ that time. Failures by"
        " kind (a refusal by any limit counts as one and says why). The failed-auth guard at"
        " its defaults; the edge's accept backlog 1,024 per listener (net.core.somaxconn"
        f" {cfg.get('limits', {}).get('somaxconn')}). CPU: user + system over the admission from"
        " `/proc/PID/stat` (sampled every 50 ms); other processes': the machine's busy time less"
        " the edge's and the load generator's."
    )
    add("")
    hdr = [
        "edge",
        "bound (runs)",
        f"time until all bound, s, median (min{EN}max)",
        f"sessions/s, median (min{EN}max)",
        "per-agent time p50 / p90, s",
        "edge CPU-ms per session",
        "edge CPU by process, s",
        "edge cores",
        "load generator cores",
        "other processes' cores",
        "failures",
    ]
    add("| " + " | ".join(hdr) + " |")
    add("|" + "|".join([" --- "] + [" ---: "] * (len(hdr) - 1)) + "|")
    cells = admit_cells(res)
    for workers, runs in sorted(cells.items()):
        good = _good(runs)
        secs = [float(r["seconds"]) for r in good]
        rates = [float(r["per_s"]) for r in good]
        p50 = [float(r["latency_s"]["p50"]) for r in good if r.get("latency_s")]
        p90 = [float(r["latency_s"]["p90"]) for r in good if r.get("latency_s")]
        by: dict[str, list[float]] = {}
        for r in good:
            for role, v in r.get("edge_cpu_by_process", {}).items():
                by.setdefault(role, []).append(v)
        by_md = " / ".join(f"{role} {statistics.median(v):.2f}" for role, v in by.items())
        others = [o / r["seconds"] for r in good if (o := _others(r)) is not None]
        fails = _failures(runs)
        admitted = sum(int(r.get("admitted", 0)) for r in runs)
        add(
            "| "
            + " | ".join(
                [
                    f"{workers} worker{'s' if workers > 1 else ''}",
                    f"{admitted:,} ({len(runs)})",
                    _range(secs, ".2f"),
                    f"**{_range(rates)}**",
                    f"{_f(statistics.median(p50) if p50 else None)} /"
                    f" {_f(statistics.median(p90) if p90 else None)}",
                    _range(_edge_ms(runs), ".2f"),
                    by_md or "—",
                    _range(_cores(runs, "edge_cpu_s"), ".2f"),
                    _range(_cores(runs, "gen_cpu_s"), ".2f"),
                    _range(others, ".2f"),
                    str(sum(fails.values())),
                ]
            )
            + " |"
        )
    add("")
    counters: dict[str, float] = {}
    held = []
    for r in res.get("admit", []):
        for k, v in r.get("edge_counters", {}).items():
            counters[k] = counters.get(k, 0.0) + v
        if r.get("sessions_held") is not None:
            held.append(int(r["sessions_held"]))

    def total(prefix: str, label: str = "") -> int:
        return int(sum(v for k, v in counters.items() if k.startswith(prefix) and label in k))

    if counters:
        add(
            "Edge counters over all runs (admin `/metrics` of every worker): sessions opened"
            f" {total('relay_agent_sessions_opened_total'):,}; failed authentications"
            f" {total('relay_auth_failures_total')}, sources blocked"
            f" {total('relay_auth_source_blocks_total')}, links refused"
            f" {total('relay_agent_links_refused_total')} (full or draining), binds refused"
            f" {total('relay_binds_refused_total')}, failed TLS handshakes"
            f" {total('relay_tls_handshakes_total', FAILED)}. Sessions the"
            f" workers held once all were bound, per run: {', '.join(map(str, held)) or '—'}."
        )
        add("")
    kinds = [(w, k, v) for w, runs in sorted(cells.items()) for k, v in _failures(runs).items()]
    if kinds:
        add("Failures: " + "; ".join(f"{w} worker(s): {k} (x{v})" for w, k, v in kinds) + ".")
        add("")
    add(
        f"Reading: on {cores} shared cores the clients' TLS handshakes take CPU from the same"
        " cores as the edge, and a burst of 1,000 handshakes interleaves in the edge's loop, so"
        " most agents are bound near the end of the burst (p50 close to the total); the edge's"
        " CPU per session is the figure a PoP with cores of its own would scale by."
        f" Load average at the phase's start / end: {cfg.get('loadavg_at_start')} /"
        f" {cfg.get('loadavg_at_end')}."
    )
    add("")
    return L
