"""Summary, targets and markdown of the cluster phase (a visitor carried from node a to
node b of one region; bench/cluster.py)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.report import EN, Target, X, quotient, section_opening

PATHS = ("forwarded", "direct")
BULK = ("down", "up")
PATH_LABELS = {"forwarded": "forwarded (visitor at a → b)", "direct": "direct (visitor at b)"}
BULK_LABELS = {"down": "download", "up": "upload"}
#: Issue 14: forwarded throughput at least this times direct's, in the same run.
MIN_FORWARDED = 0.7
PERCENTILES = ("p50", "p90", "p99", "p99.9", "max")
#: The percentiles whose hop is spelled out (difference and ratio).
HOP = ("p50", "p99")


def _name(way: str) -> str:
    return (
        f"cluster: forwarded A→B bulk {way} ≥ {MIN_FORWARDED:g}{X} direct to B"
        " (Gbit/s, median of per-rep ratios)"
    )


TARGET_NAMES = {w: _name(BULK_LABELS[w]) for w in BULK}


def _nodes_cpu(r: dict[str, Any]) -> float | None:
    """What the edge nodes spent on a run: a + b when forwarded, b alone when direct."""
    cpu = r.get("cpu_s") or {}
    if "node b" not in cpu:
        return None
    return float(cpu["node b"]) + (float(cpu.get("node a", 0.0)) if r["path"] == "forwarded" else 0)


@dataclass
class CCell:
    """One workload through one path over the counted repetitions (warm-up excluded)."""

    runs: list[dict[str, Any]]

    @property
    def good(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if not r.get("error") and r.get("requests")]

    def values(self, key: str = "gbps") -> list[float]:
        return [float(r[key]) for r in self.good if r.get(key) is not None]

    def median(self, key: str = "gbps") -> float | None:
        v = self.values(key)
        return statistics.median(v) if v else None

    def of_rep(self, rep: int, key: str = "gbps") -> float | None:
        v = [float(r[key]) for r in self.good if r["rep"] == rep and r.get(key) is not None]
        return v[0] if v else None

    def latency(self, pct: str) -> float | None:
        v = [float(r["latency_ms"][pct]) for r in self.good if pct in r.get("latency_ms", {})]
        return statistics.median(v) if v else None

    def latency_of_rep(self, rep: int, pct: str) -> float | None:
        v = [r["latency_ms"].get(pct) for r in self.good if r["rep"] == rep]
        return float(v[0]) if v and v[0] is not None else None

    def _cpu(self, role: str | None) -> float | None:
        total = 0.0
        for r in self.good:
            c = _nodes_cpu(r) if role is None else (r.get("cpu_s") or {}).get(role)
            if c is None:
                return None
            total += c
        return total

    def cpu_per_gb(self, role: str | None = None) -> float | None:
        """CPU-s per 1e9 bytes: the nodes' (a + b forwarded, b direct) or ``role``'s."""
        gb = sum(r["bytes"] for r in self.good) / 1e9
        c = self._cpu(role)
        return c / gb if c is not None and gb else None

    def cpu_us(self, role: str | None = None) -> float | None:
        """CPU-µs per request: the nodes' (a + b forwarded, b direct) or ``role``'s."""
        n = sum(r["requests"] for r in self.good)
        c = self._cpu(role)
        return c * 1e6 / n if c is not None and n else None

    def cores(self, key: str) -> float | None:
        """Median over the runs of ``key`` (CPU seconds) per second of the run."""
        v = [float(r[key]) / r["elapsed_s"] for r in self.good
             if r.get(key) is not None and r.get("elapsed_s")]  # fmt: skip
        return statistics.median(v) if v else None

    def other_cores(self) -> float | None:
        v = [x / r["elapsed_s"] for r in self.good
             if (x := _rest(r)) is not None and r.get("elapsed_s")]  # fmt: skip
        return statistics.median(v) if v else None

    def errors(self) -> int:
        return sum(int(r.get("errors") or 0) for r in self.runs)

    @property
    def failed_runs(self) -> int:
        return len(self.runs) - len(self.good)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "failed_runs": self.failed_runs,
            "errors": self.errors(),
            "machine_busy_cores_median": self.cores("machine_cpu_s"),
            "load_generator_cores_median": self.cores("load_cpu_s"),
            "other_processes_cores_median": self.other_cores(),
        }
        workload = self.runs[0]["workload"] if self.runs else ""
        if workload in BULK:
            v = self.values()
            out.update(
                values_gbit_per_s=v,
                median_gbit_per_s=self.median(),
                min_gbit_per_s=min(v) if v else None,
                max_gbit_per_s=max(v) if v else None,
                nodes_cpu_s_per_gb=self.cpu_per_gb(),
                cpu_s_per_gb_by_role={r: self.cpu_per_gb(r) for r in _roles(self)},
            )
        else:
            v = self.values("rps")
            out.update(
                values_rps=v,
                median_rps=self.median("rps"),
                nodes_cpu_us_per_request=self.cpu_us(),
                cpu_us_per_request_by_role={r: self.cpu_us(r) for r in _roles(self)},
            )
            if workload == "lat":
                out["rate"] = self.runs[0].get("rate") if self.runs else None
                out["latency_ms_median"] = {p: self.latency(p) for p in PERCENTILES}
        return out


def _rest(r: dict[str, Any]) -> float | None:
    """What none of the phase's processes nor the load generator used of the machine's
    busy time: other work on a shared machine."""
    machine, load = r.get("machine_cpu_s"), r.get("load_cpu_s")
    if machine is None or load is None:
        return None
    own = sum(float(v) for v in (r.get("cpu_s") or {}).values())
    return max(float(machine) - float(load) - own, 0.0)


def _roles(cell: CCell) -> list[str]:
    return list(dict.fromkeys(role for r in cell.good for role in r.get("cpu_s", {})))


def cells(res: dict[str, Any]) -> dict[tuple[str, str], CCell]:
    out: dict[tuple[str, str], CCell] = {}
    for r in res.get("runs", []):
        if r["rep"] > 0:
            out.setdefault((r["path"], r["workload"]), CCell([])).runs.append(r)
    return out


def _reps(a: CCell, b: CCell) -> list[int]:
    return sorted({r["rep"] for r in a.good} & {r["rep"] for r in b.good})


def per_rep_ratios(
    c: dict[tuple[str, str], CCell], workload: str, key: str = "gbps"
) -> list[float]:
    """Forwarded ÷ direct within each repetition (the two runs are neighbours in time)."""
    fwd, direct = c.get(("forwarded", workload)), c.get(("direct", workload))
    if fwd is None or direct is None:
        return []
    pairs = [quotient(fwd.of_rep(k, key), direct.of_rep(k, key)) for k in _reps(fwd, direct)]
    return [x for x in pairs if x is not None]


def hop(c: dict[tuple[str, str], CCell]) -> dict[str, Any] | None:
    """What the forwarding hop adds to the fixed-rate latency: per percentile, the
    difference and ratio of the two paths' medians over the reps, and per-rep differences."""
    fwd, direct = c.get(("forwarded", "lat")), c.get(("direct", "lat"))
    if fwd is None or direct is None:
        return None
    out: dict[str, Any] = {}
    for pct in PERCENTILES:
        f, d = fwd.latency(pct), direct.latency(pct)
        per_rep = [
            fr - dr
            for k in _reps(fwd, direct)
            if (fr := fwd.latency_of_rep(k, pct)) is not None
            and (dr := direct.latency_of_rep(k, pct)) is not None
        ]
        out[pct] = {
            "forwarded_ms": f,
            "direct_ms": d,
            "added_ms": f - d if f is not None and d is not None else None,
            "ratio": quotient(f, d),
            "added_ms_per_rep": per_rep,
        }
    return out


def forwarding_problem(res: dict[str, Any]) -> str | None:
    """Runs that did not go the way they were meant to: a forwarded run that a did not
    carry to b, a direct run a carried anything in, visitors a could not forward."""
    bad = []
    for r in res.get("runs", []):
        if r.get("error") or not r.get("links"):
            continue
        links = r["links"]
        fwd, got = links.get("a_forwarded", 0), links.get("b_received", 0)
        failed = links.get("a_failed", 0)
        tag = f"{r['path']} {r['workload']} rep {r['rep']}"
        if failed:
            bad.append(f"{tag}: a failed to forward {failed} visitor(s)")
        elif r["path"] == "forwarded" and (fwd < 1 or got != fwd):
            bad.append(f"{tag}: a forwarded {fwd}, b received {got}")
        elif r["path"] == "direct" and (fwd or got):
            bad.append(f"{tag}: a forwarded {fwd} visitor(s) in a direct run")
    return "; ".join(bad) if bad else None


def summary(res: dict[str, Any]) -> dict[str, Any]:
    c = cells(res)
    out: dict[str, Any] = {}
    for w in ("down", "up", "ka", "lat"):
        row: dict[str, Any] = {p: c[(p, w)].to_json() for p in PATHS if (p, w) in c}
        fwd, direct = c.get(("forwarded", w)), c.get(("direct", w))
        if fwd is not None and direct is not None:
            key = "gbps" if w in BULK else "rps"
            ratios = per_rep_ratios(c, w, key)
            row["ratio_per_rep"] = ratios
            row["ratio"] = statistics.median(ratios) if ratios else None
            row["ratio_of_medians"] = quotient(fwd.median(key), direct.median(key))
            if w in BULK:
                row["nodes_cpu_per_gb_ratio"] = quotient(fwd.cpu_per_gb(), direct.cpu_per_gb())
            else:
                row["nodes_cpu_per_request_ratio"] = quotient(fwd.cpu_us(), direct.cpu_us())
        out[w] = row
    out["hop"] = hop(c)
    out["forwarding_problem"] = forwarding_problem(res)
    return out


def targets(res: dict[str, Any]) -> list[Target]:
    """Forwarded bulk throughput against direct, download and upload, judged."""
    if not res or res.get("skipped"):
        why = res.get("skipped", "phase not run") if res else "phase not run"
        return [Target(n, None, f"not evaluated: {why}") for n in TARGET_NAMES.values()]
    c = cells(res)
    problem = forwarding_problem(res)
    out = []
    for w, name in TARGET_NAMES.items():
        fwd, direct = c.get(("forwarded", w)), c.get(("direct", w))
        ratios = per_rep_ratios(c, w)
        if problem or fwd is None or direct is None or not ratios:
            out.append(Target(name, None, f"not evaluated: {problem or 'no pair of runs'}"))
            continue
        r = statistics.median(ratios)
        fm, dm = fwd.median(), direct.median()
        cpu = quotient(fwd.cpu_per_gb(), direct.cpu_per_gb())
        out.append(
            Target(
                name,
                r >= MIN_FORWARDED,
                f"forwarded {_f(fm)} vs direct {_f(dm)} Gbit/s (medians) = {r:.2f}{X} (need ≥"
                f" {MIN_FORWARDED:g}{X}; per rep {_range(ratios)}); the nodes' CPU per GB"
                f" forwarded (a + b) {_f(cpu, '.2f', X)} direct (b)",
            )
        )
    return out


def _f(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def _range(v: list[float]) -> str:
    return f"{min(v):.2f}{EN}{max(v):.2f}{X}" if v else "—"


def _med_range(v: list[float], spec: str) -> str:
    if not v:
        return "failed"
    return f"{statistics.median(v):{spec}} ({min(v):{spec}}{EN}{max(v):{spec}})"


def _by_role(cell: CCell, per: str) -> str:
    """Each process's CPU per unit: ``per`` is ``gb`` or ``request``."""
    parts = []
    for role in _roles(cell):
        if cell.runs and cell.runs[0]["path"] == "direct" and role == "node a":
            continue
        v = cell.cpu_per_gb(role) if per == "gb" else cell.cpu_us(role)
        if v is not None and (v >= 0.005 if per == "gb" else v >= 0.05):
            parts.append(f"{role} {v:.2f}" if per == "gb" else f"{role} {v:.1f}")
    return " / ".join(parts) or "—"


def _failed(cell: CCell) -> str:
    return f"{cell.errors()}" + (f" ({cell.failed_runs} runs failed)" if cell.failed_runs else "")


def markdown(res: dict[str, Any], cores: int) -> list[str]:
    L, goes_on = section_opening(res, "Cluster: a visitor carried from node A to node B")
    add = L.append
    if not goes_on:
        return L
    cfg = res.get("config", {})
    redis = res.get("redis", {})
    add(
        "Two `relay edge` nodes of region"
        f" `{cfg.get('region')}` sharing presence through one redis-server"
        f" (`{redis.get('version', '?').split(' sha=')[0]}`, on 127.0.0.1): node a on"
        f" {cfg.get('hosts', {}).get('node a')} and node b on"
        f" {cfg.get('hosts', {}).get('node b')}, every listener of a node on its own address,"
        " one data directory for both (tokens, cluster CA). One agent, `relay http ORIGIN"
        " --no-https --subdomain far`, connected to b only, in front of the http phase's nginx"
        " origin. a learned b's name (its `/status` `cluster.presence.remote_names` ≥ 1)"
        f" {_f(res.get('presence_seconds'), '.1f')} s after the agent bound it. The same"
        " visitor, alternated within each repetition (order rotated per rep and workload):"
        " **forwarded** — it connects to a, which carries it to b over their node link"
        " (TLS 1.3 with the cluster CA's certificates on both ends, yamux), where b serves it"
        " as if it had connected there — and **direct** — it connects to b. Bulk: the"
        " origin's 100 MiB file downloaded again and again on one keep-alive connection for"
        f" {_f(cfg.get('duration_s'), 'g')} s (whole files; the harness's own client reading"
        " into one buffer; each path's files were first downloaded once SHA-256 checked), and"
        f" {_f((cfg.get('upload_body_bytes') or 0) / 2**20, 'g')} MiB POST bodies pipelined"
        " for as long, timed up to the answer of a `GET /` sent after them (nginx answers it"
        " only once it has read every body). Requests: wrk closed loop, keep-alive"
        f" (`{cfg.get('wrk')}`), and oha open loop at a fixed rate (`{cfg.get('oha')}`,"
        f" latency-corrected, {_f(cfg.get('lat_duration_s'), 'g')} s) at"
        f" {_f(cfg.get('rate_fraction'), 'g')}{X} the slower path's median keep-alive maximum."
        f" {cfg.get('reps')} reps, one warm-up run of each not counted. CPU: user + system of"
        " each process from `/proc/PID/stat` over the run; **the nodes' CPU is a + b for"
        " forwarded, b alone for direct**; the load generator's is wrk/oha's (reaped"
        " children) or the harness's own (bulk client); machine: busy time from `/proc/stat`."
    )
    add("")
    c = cells(res)
    s = summary(res)
    hdr = ["workload", "path", f"Gbit/s median (min{EN}max)", "Gbit/s per rep",
           f"{X} direct (median of per-rep ratios)", "nodes CPU-s/GB",
           "CPU-s/GB by process", "machine busy cores", "other processes' cores",
           "errors"]  # fmt: skip
    add("| " + " | ".join(hdr) + " |")
    add("|" + "|".join([" --- "] * 2 + [" ---: "] * 4 + [" --- "] + [" ---: "] * 3) + "|")
    for w in BULK:
        for p in PATHS:
            cell = c.get((p, w))
            if cell is None:
                continue
            ratio = s[w].get("ratio") if p == "forwarded" else None
            row = [
                BULK_LABELS[w] if p == "forwarded" else "",
                PATH_LABELS[p],
                _med_range(cell.values(), ".2f"),
                ", ".join(f"{v:.2f}" for v in cell.values()) or "—",
                _f(ratio, ".2f", X) if p == "forwarded" else f"1.00{X}",
                _f(cell.cpu_per_gb()),
                _by_role(cell, "gb"),
                _f(cell.cores("machine_cpu_s")),
                _f(cell.other_cores()),
                _failed(cell),
            ]
            add("| " + " | ".join(row) + " |")
    add("")
    hdr = ["workload", "path", f"req/s median (min{EN}max)", f"{X} direct (per-rep median)",
           "nodes CPU-µs per request", f"{X} direct's", "CPU-µs per request by process",
           *PERCENTILES, "machine busy cores", "other processes' cores",
           "errors"]  # fmt: skip
    add("| " + " | ".join(hdr) + " |")
    add("|" + "|".join([" --- "] * 2 + [" ---: "] * 4 + [" --- "] + [" ---: "] * 8) + "|")
    for w in ("ka", "lat"):
        for p in PATHS:
            cell = c.get((p, w))
            if cell is None:
                continue
            label = "keep-alive maximum (wrk)"
            if w == "lat":
                label = f"fixed rate {_f(res.get('rate'), ',.0f')} req/s (oha)"
            direct = c.get(("direct", w))
            fwd = p == "forwarded"
            row = [
                label if fwd else "",
                PATH_LABELS[p],
                _med_range(cell.values("rps"), ",.0f"),
                _f(s[w].get("ratio"), ".2f", X) if fwd else f"1.00{X}",
                _f(cell.cpu_us(), ".1f"),
                _f(quotient(cell.cpu_us(), direct.cpu_us() if direct else None), ".2f", X)
                if fwd
                else f"1.00{X}",
                _by_role(cell, "request"),
                *[_f(cell.latency(pct)) if w == "lat" else "—" for pct in PERCENTILES],
                _f(cell.cores("machine_cpu_s")),
                _f(cell.other_cores()),
                _failed(cell),
            ]
            add("| " + " | ".join(row) + " |")
    add("")
    add(f"Latency columns: milliseconds, medians over the reps; {_latency_note(res)}")
    add("")
    h = s.get("hop")
    if h:
        parts = []
        for pct in HOP:
            x = h[pct]
            if x["added_ms"] is None:
                continue
            per_rep = ", ".join(f"{v:+.2f}" for v in x["added_ms_per_rep"])
            parts.append(
                f"{pct} {x['direct_ms']:.2f} → {x['forwarded_ms']:.2f} ms, **{x['added_ms']:+.2f}"
                f" ms** ({_f(x['ratio'], '.2f', X)}; per rep {per_rep or '—'})"
            )
        if parts:
            add(
                "What the forwarding hop adds at the fixed rate (not judged: issue 14 asks for"
                " the figures): " + "; ".join(parts) + ". The keep-alive req/s and the CPU per"
                " request are shown, not judged."
            )
            add("")
    add(_links_line(res))
    add("")
    problem = s.get("forwarding_problem")
    if problem:
        add(f"**Runs not forwarded as meant:** {problem}; the targets are not evaluated.")
        add("")
    add(_reading(c, cores))
    add("")
    errors = [(r["path"], r["workload"], r["rep"], r["error"])
              for r in res.get("runs", []) if r.get("error")]  # fmt: skip
    if errors:
        add("Failures: " + "; ".join(f"{p} {w} rep {k}: {msg.splitlines()[0]}"
                                     for p, w, k, msg in errors) + ".")  # fmt: skip
        add("")
    if res.get("latency_skipped"):
        add(f"Fixed-rate latency not measured: {res['latency_skipped']}.")
        add("")
    if res.get("error"):
        add(f"**The phase stopped early:** {res['error'].splitlines()[0]}")
        add("")
    if res.get("died"):
        add(f"**Processes died during the phase:** {res['died']}")
        add("")
    return L


def _reading(c: dict[tuple[str, str], CCell], cores: int) -> str:
    """Where the bulk paths' CPU went, from the figures of this run."""
    parts = []
    for w in BULK:
        fwd, direct = c.get(("forwarded", w)), c.get(("direct", w))
        if fwd is None or direct is None:
            continue
        a, bf, bd = fwd.cpu_per_gb("node a"), fwd.cpu_per_gb("node b"), direct.cpu_per_gb("node b")
        if a is None or bf is None or bd is None:
            continue
        parts.append(
            f"{BULK_LABELS[w]}: a {a:.2f} CPU-s/GB, and b {bf:.2f} for a forwarded visitor"
            f" against {bd:.2f} for a direct one ({_f(quotient(bf, bd), '.2f', X)})"
        )
    figures = (
        " Here, " + "; ".join(parts) + ": besides a's own share, b pays more per byte for a"
        " forwarded visitor: the node link's TLS and yamux on its side, a second encryption"
        " or decryption of every byte (its stream is joined to the agent's in the byte path,"
        " relay/cluster/nodelink.py; no socket between them)."
        if parts
        else ""
    )
    return (
        f"Reading: both nodes, the agent, nginx, redis and the load generator share this"
        f" machine's {cores} cores (the machine-busy column), so each path runs as fast as"
        " its CPU per byte or per request lets it, and the forwarded path has a whole extra"
        f" edge process to feed from the same cores.{figures} Nodes on hosts of their own"
        " would take a's share off b's cores; b's extra per byte would remain."
    )


def _latency_note(res: dict[str, Any]) -> str:
    ka = res.get("ka_max") or {}
    frac = res.get("config", {}).get("rate_fraction")
    return (
        f"the rate is {_f(res.get('rate'), ',.0f')} req/s, {_f(frac, 'g')}{X} the slower"
        f" path's median keep-alive maximum (forwarded {_f(ka.get('forwarded'), ',.0f')},"
        f" direct {_f(ka.get('direct'), ',.0f')} req/s). The CPU-µs per request of the"
        " keep-alive rows are at the maximum (wrk's batching helps); the fixed-rate rows'"
        " at a rate both paths sustain."
    )


def _links_line(res: dict[str, Any]) -> str:
    end = res.get("links_at_end") or {}
    a, b = end.get("a"), end.get("b")
    if not isinstance(a, dict) or not isinstance(b, dict):
        return f"Node-link counters at the end: {end or 'unknown'}."
    return (
        f"Node-link counters at the end of the phase (`/status` `cluster.links`, warm-ups"
        f" and the hash-checked downloads included): a forwarded {a.get('forwarded')} visitors"
        f" over {len(a.get('links_out') or [])} link(s) (failed {a.get('failed')}); b received"
        f" {b.get('received')} over {b.get('links_in')} link(s), and joined"
        f" {b.get('joined')} of them to its agent's streams (the rest, sent while the link was"
        f" dialled, through a socket pair); b forwarded {b.get('forwarded')}. A forwarded run"
        " counts one visitor per connection: 1 per bulk run, the connection count per wrk or"
        " oha run."
    )
