"""Summaries, targets and the markdown report."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.scenarios import Measurement, Scenario

X = "\u00d7"  # multiplication sign
EN = "\u2013"  # en dash

LABELS = {
    "direct": "direct",
    "ssh": "ssh -R",
    "haproxy": "haproxy",
    "relay": "relay",
    "relay-links2": "relay --links 2",
    "relay-http": "relay http",
    "relay-http-log": "relay http + access log",
    "frp": "frp",
    "frp-http": "frp http",
    "rathole": "rathole",
    "bore": "bore",
    "socat-tls": "socat+TLS",
}
#: The tunnels relay is compared with (issue 4); bore is the one without encryption.
PEERS = ("ssh", "frp", "rathole", "bore")
ENCRYPTED_PEERS = ("ssh", "frp", "rathole")
BASELINES = (("direct", f"{X} direct"), ("ssh", f"{X} ssh -R"), ("haproxy", f"{X} haproxy"))


@dataclass
class Cell:
    """One scenario by contestant over the counted repetitions."""

    values: list[float]
    failures: list[str]
    cpu_s: dict[str, float]  # role -> CPU seconds summed over successful reps
    gb: float  # GB (1e9 bytes) received over successful reps

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def cpu_per_gb(self) -> float | None:
        if not self.cpu_s or self.gb <= 0:
            return None
        return sum(self.cpu_s.values()) / self.gb

    def to_json(self) -> dict[str, Any]:
        return {
            "median_gbit_per_s": self.median,
            "min_gbit_per_s": min(self.values) if self.values else None,
            "max_gbit_per_s": max(self.values) if self.values else None,
            "values_gbit_per_s": self.values,
            "failures": self.failures,
            "cpu_seconds_per_gb": self.cpu_per_gb,
            "cpu_seconds_per_gb_by_process": (
                {role: s / self.gb for role, s in self.cpu_s.items()} if self.gb > 0 else {}
            ),
        }


def summarize(measurements: list[Measurement]) -> dict[tuple[str, str], Cell]:
    cells: dict[tuple[str, str], Cell] = {}
    for m in measurements:
        if m.rep == 0:  # warm-up
            continue
        cell = cells.setdefault((m.scenario, m.contestant), Cell([], [], {}, 0.0))
        if m.ok and m.gbps is not None:
            cell.values.append(m.gbps)
            cell.gb += (m.bytes or 0) / 1e9
            for role, s in m.cpu_s.items():
                cell.cpu_s[role] = cell.cpu_s.get(role, 0.0) + s
        else:
            cell.failures.append(f"rep {m.rep}: {m.error}")
    return cells


def ratio(cells: dict[tuple[str, str], Cell], scenario: str, a: str, b: str) -> float | None:
    ca, cb = cells.get((scenario, a)), cells.get((scenario, b))
    if not ca or not cb or ca.median is None or cb.median is None or cb.median == 0:
        return None
    return ca.median / cb.median


@dataclass
class Target:
    name: str
    met: bool | None  # None: not evaluated
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"target": self.name, "met": self.met, "detail": self.detail}


def quotient(a: float | None, b: float | None) -> float | None:
    """a ÷ b, or None when either is missing (or b is 0)."""
    return a / b if a is not None and b else None


def section_opening(res: dict[str, Any], title: str) -> tuple[list[str], bool]:
    """A phase section's first lines (its title, or why it was skipped), and whether the
    section goes on: nothing at all for a phase that did not run."""
    if not res:
        return [], False
    lines = [f"## {title}", ""]
    if res.get("skipped"):
        return [*lines, f"Skipped: {res['skipped']}.", ""], False
    return lines, True


def _fmt(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def best_of(
    values: dict[str, float | None], higher_is_better: bool = True
) -> tuple[str, float] | None:
    """The best (key, value) among the known values, or None."""
    known = [(k, v) for k, v in values.items() if v is not None]
    if not known:
        return None
    pick = max if higher_is_better else min
    return pick(known, key=lambda kv: kv[1])


def peer_targets(
    cells: dict[tuple[str, str], Cell],
    scenarios: list[Scenario],
    relay_skip: str | None,
) -> list[Target]:
    """Issue 4's bulk targets: a single stream ≥ the best peer with encryption, and
    ≥ 0.8 times the socat TLS pair (the practical ceiling of a TLS tunnel)."""
    out: list[Target] = []
    for s in (s for s in scenarios if s.streams == 1):
        way = "download" if s.reverse else "upload"
        relay = cells.get((s.key, "relay"))
        rm = relay.median if relay else None
        medians = {}
        for k in ENCRYPTED_PEERS:
            cell = cells.get((s.key, k))
            medians[k] = cell.median if cell else None
        best = best_of(medians)
        socat = cells.get((s.key, "socat-tls"))
        sm = socat.median if socat else None
        for name, base in (
            (f"single-stream ≥ the best peer with encryption ({way})", best),
            (f"single-stream ≥ 0.8{X} socat+TLS ({way})", ("socat-tls", sm) if sm else None),
        ):
            if relay_skip:
                out.append(Target(name, None, f"not evaluated: relay {relay_skip}"))
                continue
            if rm is None or base is None:
                out.append(Target(name, None, "not evaluated: no relay or peer median in this run"))
                continue
            key, value = base
            factor = 0.8 if key == "socat-tls" else 1.0
            r = rm / value
            out.append(
                Target(
                    name,
                    r >= factor,
                    f"relay {rm:.2f} vs {LABELS[key]} {value:.2f} Gbit/s = {r:.2f}{X}"
                    f" (need ≥ {factor:g}{X})",
                )
            )
    return out


#: The agent with several links, its bar and what one link reached when the bar was set.
LINKED, LINKS_BASE, ONE_LINK_THEN = "relay-links2", "bore", 0.74


def links_targets(cells: dict[tuple[str, str], Cell], scenarios: list[Scenario]) -> list[Target]:
    """One agent with ``--links 2`` (on an edge with 2 workers), 8 streams: ≥ bore's 8
    streams in the same run; relay's one link beside it, not judged."""
    out = []
    for s in (s for s in scenarios if s.streams == 8):
        way = "download" if s.reverse else "upload"
        name = f"one agent, 8 streams with --links 2 ≥ bore's 8 streams ({way})"
        links, base = cells.get((s.key, LINKED)), cells.get((s.key, LINKS_BASE))
        if not links or not base or links.median is None or not base.median:
            out.append(
                Target(name, None, "not evaluated: no relay --links 2 or bore median in this run")
            )
            continue
        r = links.median / base.median
        one = ratio(cells, s.key, "relay", LINKS_BASE)
        one_md = (
            f"{_fmt(cells[(s.key, 'relay')].median)} Gbit/s = {one:.2f}{X} bore"
            if one is not None
            else "not in this run"
        )
        out.append(
            Target(
                name,
                r >= 1.0,
                f"relay --links 2 {links.median:.2f} vs bore {base.median:.2f} Gbit/s"
                f" = {r:.2f}{X} (need ≥ 1{X}); relay with one link: {one_md}"
                f" ({ONE_LINK_THEN:g}{X} when the target was set)",
            )
        )
    return out


def targets(
    cells: dict[tuple[str, str], Cell],
    scenarios: list[Scenario],
    relay_skip: str | None,
) -> list[Target]:
    out: list[Target] = peer_targets(cells, scenarios, relay_skip)
    out += links_targets(cells, scenarios)
    singles = [s for s in scenarios if s.streams == 1]
    checks: list[tuple[str, float, str]] = [
        (f"single-stream ≥ 1.3{X} ssh -R", 1.3, "ssh"),
        (f"single-stream ≥ 0.5{X} haproxy", 0.5, "haproxy"),
    ]
    for name, factor, base in checks:
        for s in singles:
            tname = f"{name} ({'download' if s.reverse else 'upload'})"
            if relay_skip:
                out.append(Target(tname, None, f"not evaluated: relay {relay_skip}"))
                continue
            r = ratio(cells, s.key, "relay", base)
            rm = cells.get((s.key, "relay"))
            bm = cells.get((s.key, base))
            if r is None or rm is None or bm is None:
                out.append(
                    Target(tname, None, f"not evaluated: no relay or {base} median in this run")
                )
                continue
            out.append(
                Target(
                    tname,
                    r >= factor,
                    f"relay {_fmt(rm.median)} vs {LABELS[base]} {_fmt(bm.median)} Gbit/s"
                    f" = {r:.2f}{X} (need ≥ {factor}{X})",
                )
            )
    for s in scenarios:
        if s.streams == 1:
            continue
        single = next((x for x in singles if x.reverse == s.reverse), None)
        if single is None:
            continue
        tname = f"{s.streams} streams ≥ 1 stream ({'download' if s.reverse else 'upload'})"
        if relay_skip:
            out.append(Target(tname, None, f"not evaluated: relay {relay_skip}"))
            continue
        many, one = cells.get((s.key, "relay")), cells.get((single.key, "relay"))
        if not many or not one or many.median is None or one.median is None:
            out.append(Target(tname, None, "not evaluated: a relay median is missing"))
            continue
        out.append(
            Target(
                tname,
                many.median >= one.median,
                f"relay {s.streams} streams {many.median:.2f} vs 1 stream {one.median:.2f} Gbit/s"
                f" = {many.median / one.median:.2f}{X}",
            )
        )
    return out


def _load1(text: object) -> float | None:
    try:
        return float(str(text).split()[0])
    except (ValueError, IndexError):
        return None


def markdown(result: dict[str, Any], cells: dict[tuple[str, str], Cell]) -> str:
    mach = result["machine"]
    ver = mach["versions"]
    cfg = result["config"]
    contestants: list[dict[str, Any]] = result["contestants"]
    scenarios: list[dict[str, Any]] = result["scenarios"]
    lines: list[str] = []
    add = lines.append
    add(f"# relay bench — {result['mode']} — {result['started_at']}")
    add("")
    add(f"Command: `{result['command']}`")
    add("")
    if result.get("interrupted"):
        add(f"**Partial results: the run was {result['interrupted']}.**")
        add("")
    add(
        f"iperf3 TCP bulk on 127.0.0.1, {cfg['duration_s']:g} s per run, {cfg['reps']} repetitions"
        " (contestants alternated within each repetition, order rotated per repetition;"
        " one warm-up run per contestant not counted). Gbit/s = iperf3 `end.sum_received`."
        f" Cells: median (min{EN}max). Ratios are of medians in this run."
        " CPU-s/GB: CPU seconds of the contestant's own processes (and their children) per 1e9"
        " bytes received, from /proc/PID/stat."
    )
    add("")
    add("## Machine")
    add("")
    add(
        f"- CPU: {mach['cpu_model']}, {mach['cores_online']} cores online"
        f" ({mach['cores_usable']} usable); memory {mach['memory_gib']} GiB"
    )
    add(f"- Kernel: {mach['kernel']}")
    load1 = _load1(mach.get("loadavg_at_start"))
    if load1 is not None and load1 > 1.0:
        add(
            f"- **Note:** 1-minute load average was {load1:.2f} at start on"
            f" {mach['cores_usable']} cores — other work was running; absolute numbers are noisy,"
            " ratios less so."
        )
    add(
        f"- Load average at start / end: {mach['loadavg_at_start']}"
        f" / {mach.get('loadavg_at_end', '?')}"
    )
    add(
        f"- Versions: iperf3 `{ver['iperf3']}`; haproxy `{ver['haproxy']}`;"
        f" OpenSSH client `{ver['openssh_client']}`, server `{ver['openssh_server']}`;"
        f" Python `{ver['python']}`; relay `{ver['relay']}` (git {ver['relay_git']})"
    )
    add("")
    add("## Contestants")
    add("")
    for c in contestants:
        status = "ran" if not c.get("skipped") else f"**skipped** — {c['skipped']}"
        add(f"- **{c['label']}** ({status}): {c.get('summary', '')}")
    add("")
    add("## Throughput")
    add("")
    header = ["scenario", "contestant", f"Gbit/s median (min{EN}max)"]
    header += [label for _, label in BASELINES] + ["CPU-s/GB", "failures"]
    add("| " + " | ".join(header) + " |")
    add("|" + "|".join([" --- "] * 2 + [" ---: "] * (len(header) - 2)) + "|")
    for s in scenarios:
        for c in contestants:
            if c.get("skipped"):
                continue
            cell = cells.get((s["key"], c["key"]))
            if cell is None:
                continue
            if cell.values:
                tput = f"{cell.median:.2f} ({min(cell.values):.2f}{EN}{max(cell.values):.2f})"
            else:
                tput = "failed"
            row = [s["label"], c["label"], tput]
            for base, _ in BASELINES:
                row.append(
                    f"1.00{X}"
                    if base == c["key"] and cell.values
                    else _fmt(ratio(cells, s["key"], c["key"], base), ".2f", X)
                )
            cpg = cell.cpu_per_gb
            if cpg is not None and len(cell.cpu_s) > 1 and cell.gb > 0:
                parts = " + ".join(f"{r} {v / cell.gb:.2f}" for r, v in cell.cpu_s.items())
                row.append(f"{cpg:.2f} ({parts})")
            else:
                row.append(_fmt(cpg))
            nrep = len(cell.values) + len(cell.failures)
            row.append(f"{len(cell.failures)}/{nrep}" if cell.failures else "0")
            add("| " + " | ".join(row) + " |")
    add("")
    add("## Targets for relay")
    add("")
    for t in result["targets"]:
        mark = {True: "✅ met", False: "❌ not met", None: "⚪ not evaluated"}[t["met"]]
        add(f"- {mark} — {t['target']}: {t['detail']}")
    failures = [
        (s["label"], c["label"], f)
        for s in scenarios
        for c in contestants
        for f in (cells[(s["key"], c["key"])].failures if (s["key"], c["key"]) in cells else [])
    ]
    if failures:
        add("")
        add("## Failures")
        add("")
        for sl, cl, f in failures:
            add(f"- {cl}, {sl}, {f.splitlines()[0] if f else f}")
    add("")
    add(f"Total wall time: {result['wall_seconds']:.0f} s. Raw data: `{result['json_name']}`.")
    add("")
    return "\n".join(lines)
