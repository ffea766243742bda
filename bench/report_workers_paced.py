"""Rows and targets of the workers phase's control runs (bench/workers_paced.py): CPU per
request at equal load per process."""

from __future__ import annotations

import statistics
from typing import Any

from bench.report import EN, Target, X
from bench.report_workers import (
    MAX_CPU_GROWTH,
    MAX_HANDED,
    WCell,
    handed_ratio,
    handoff_sender,
    sender_cpu_us,
)
from bench.workers import LINKED
from bench.workers_paced import HANDOFF, HANDOFF_LABEL, HANDOFF_OF, HANDOFF_SUB, PACED, PLAN

#: How each run of PLAN is named in the table.
PLAN_LABELS = {("w1", 0.5): "1 worker at R/2", ("w1", 1.0): "1 worker at R",
               ("w2", 1.0): "2 workers at R (R/2 each)"}  # fmt: skip


def _name(label: str) -> str:
    return (
        f"edge workers, {label} (control): edge CPU-µs per request with 2 workers at R ≤"
        f" {MAX_CPU_GROWTH:g}{X} one worker at R/2, the same load per process"
    )


def paced_cells(res: dict[str, Any]) -> dict[tuple[str, str, float], WCell]:
    """(workload, config, share of R) → its counted runs."""
    rates = res.get("config", {}).get("paced", {}).get("rates", {})
    out: dict[tuple[str, str, float], WCell] = {}
    for r in res.get("runs", []):
        rate = rates.get(r["workload"])
        if r["rep"] == 0 or rate is None or r.get("rate") is None:
            continue
        share = min((s for _, s in PLAN), key=lambda s: abs(r["rate"] - s * rate))
        out.setdefault((r["workload"], r["config"], share), WCell([])).runs.append(r)
    return out


def _per_rep(a: WCell, b: WCell) -> list[float]:
    reps = sorted({r["rep"] for r in a.good} & {r["rep"] for r in b.good})
    out = []
    for rep in reps:
        x, y = a.cpu_us_of_rep(rep), b.cpu_us_of_rep(rep)
        if x is not None and y:
            out.append(x / y)
    return out


HANDOFF_TARGET = (
    f"edge workers: a handed-over visitor connection costs the edge ≤ {MAX_HANDED:g}{X} a"
    " local one (control: one edge of 2 workers at one fixed rate, agent"
    f" {HANDOFF_SUB} against agent {LINKED})"
)


def handoff_control(res: dict[str, Any]) -> dict[str, Any] | None:
    """The handed-over visitor priced on one edge at one load: agent a's runs (fraction f
    handed over) against agent l's (none) on ``w2`` at the same R."""
    c = paced_cells(res)
    mixed, local = c.get((HANDOFF, "w2", 1.0)), c.get((HANDOFF_OF, "w2", 1.0))
    if mixed is None or local is None:
        return None
    f = mixed.handed_fraction()
    ratio = handed_ratio(local.cpu_us(), mixed.cpu_us(), f)
    reps = sorted({r["rep"] for r in mixed.good} & {r["rep"] for r in local.good})
    per_rep = [handed_ratio(local.cpu_us_of_rep(k), mixed.cpu_us_of_rep(k), f) for k in reps]
    local_us = local.cpu_us()
    return {
        "local_cpu_us": local_us,
        "mixed_cpu_us": mixed.cpu_us(),
        "handed_fraction": f,
        "handed_cpu_us": ratio * local_us if ratio is not None and local_us else None,
        "handed_to_local": ratio,
        "handed_to_local_per_rep": [x for x in per_rep if x is not None],
        "sender_cpu_us_per_handoff": sender_cpu_us(mixed, handoff_sender(res)),
        "handoffs_failed": mixed.handoffs_failed(),
    }


def _handoff_target(res: dict[str, Any]) -> Target:
    h = handoff_control(res)
    if h is None or h["handed_to_local"] is None:
        return Target(HANDOFF_TARGET, None, "not evaluated: a paced run is missing")
    r, per_rep = h["handed_to_local"], h["handed_to_local_per_rep"]
    spread = f"{min(per_rep):.2f}{EN}{max(per_rep):.2f}{X}" if per_rep else "—"
    sender = h["sender_cpu_us_per_handoff"]
    sent = f"; the sending worker spent {sender:.1f} per visitor it handed over" if sender else ""
    return Target(
        HANDOFF_TARGET,
        r <= MAX_HANDED,
        f"R = {res['config']['paced']['rates'][HANDOFF]:,.0f} req/s offered to each:"
        f" {h['handed_fraction']:.0%} of agent {HANDOFF_SUB}'s connections handed over,"
        f" {h['mixed_cpu_us']:.1f} CPU-µs per connection vs {h['local_cpu_us']:.1f} for agent"
        f" {LINKED}'s (all local) ⇒ handed-over {h['handed_cpu_us']:.1f} = {r:.2f}{X} a local"
        f" one (need ≤ {MAX_HANDED:g}{X}; per rep {spread}){sent}",
    )


def paced_targets(res: dict[str, Any]) -> list[Target]:
    if not res or res.get("skipped"):
        return []
    c = paced_cells(res)
    out = []
    for workload, (label, *_rest) in PACED.items():
        name = _name(label.removesuffix(", fixed rate"))
        two, half, full = (
            c.get((workload, "w2", 1.0)),
            c.get((workload, "w1", 0.5)),
            c.get((workload, "w1", 1.0)),
        )
        a = two.cpu_us() if two else None
        b = half.cpu_us() if half else None
        if two is None or half is None or a is None or b is None:
            out.append(Target(name, None, "not evaluated: a paced run is missing"))
            continue
        same_total = full.cpu_us() if full else None
        load = (
            f"; 1 worker at R costs {same_total:.1f}, so at R/2 it pays {b / same_total:.2f}{X}"
            " that per request: the load effect the closed-loop row charges to the second"
            " worker"
            if same_total
            else ""
        )
        per_rep = _per_rep(two, half)
        spread = f"{min(per_rep):.2f}{EN}{max(per_rep):.2f}{X}" if per_rep else "—"
        out.append(
            Target(
                name,
                a / b <= MAX_CPU_GROWTH,
                f"R = {res['config']['paced']['rates'][workload]:,.0f} req/s offered: 2 workers"
                f" {a:.1f} vs 1 worker at R/2 {b:.1f} CPU-µs per request = {a / b:.2f}{X}"
                f" (need ≤ {MAX_CPU_GROWTH:g}{X}; per rep {spread}){load}",
            )
        )
    if HANDOFF in res.get("config", {}).get("paced", {}).get("rates", {}):
        out.append(_handoff_target(res))
    return out


def paced_markdown(res: dict[str, Any]) -> list[str]:
    paced = res.get("config", {}).get("paced")
    if not paced:
        return []
    c = paced_cells(res)
    lines = [
        "### Control: the same edges at a fixed offered rate",
        "",
        f"Agent {LINKED} only (a link on each worker: nothing handed over), oha open loop at a"
        f" fixed rate ({paced.get('oha')}, latency-corrected), R ="
        f" {paced['rate_fraction']:g}{X} the slower edge's closed-loop median of the same"
        " workload. One worker at R/2 carries the load each of the two workers carries at R:"
        " comparing those two rows prices a second worker at equal load per process; one"
        " worker at R against R/2 is the load effect alone (a process's CPU per request grows"
        " as its load falls).",
        "",
        "| workload | edge | offered req/s | achieved req/s median | edge CPU-µs per request"
        f" | {X} 1 worker at R/2 | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workload, (label, *_rest) in PACED.items():
        rate = paced.get("rates", {}).get(workload)
        if rate is None:
            continue
        base = c.get((workload, "w1", 0.5))
        base_us = base.cpu_us() if base else None
        first = True
        for config, share in PLAN:
            cell = c.get((workload, config, share))
            if cell is None:
                continue
            us = cell.cpu_us()
            lat = [r.get("latency_ms", {}) for r in cell.good]
            p50 = [x["p50"] for x in lat if "p50" in x]
            p99 = [x["p99"] for x in lat if "p99" in x]
            lines.append(
                f"| {label if first else ''} | {PLAN_LABELS[(config, share)]} |"
                f" {rate * share:,.0f} | {cell.median or 0:,.0f} |"
                f" {'—' if us is None else f'{us:.1f}'} |"
                f" {'—' if us is None or not base_us else f'{us / base_us:.2f}{X}'} |"
                f" {statistics.median(p50) if p50 else 0:.2f} |"
                f" {statistics.median(p99) if p99 else 0:.2f} | {cell.errors()} |"
            )
            first = False
    lines += _handoff_rows(res, c)
    lines.append("")
    return lines


def _handoff_rows(res: dict[str, Any], c: dict[tuple[str, str, float], WCell]) -> list[str]:
    """The handoff control's row, under the table, and what it prices."""
    rate = res["config"]["paced"].get("rates", {}).get(HANDOFF)
    cell = c.get((HANDOFF, "w2", 1.0))
    h = handoff_control(res)
    if rate is None or cell is None or h is None:
        return []
    us = cell.cpu_us()
    lat = [r.get("latency_ms", {}) for r in cell.good]
    p50 = [x["p50"] for x in lat if "p50" in x]
    p99 = [x["p99"] for x in lat if "p99" in x]
    f = h["handed_fraction"] or 0.0
    lines = [
        f"| {HANDOFF_LABEL} | 2 workers at R, {f:.0%} handed over | {rate:,.0f} |"
        f" {cell.median or 0:,.0f} | {'—' if us is None else f'{us:.1f}'} | — |"
        f" {statistics.median(p50) if p50 else 0:.2f} |"
        f" {statistics.median(p99) if p99 else 0:.2f} | {cell.errors()} |",
        "",
    ]
    if h["handed_to_local"] is not None:
        sender = h["sender_cpu_us_per_handoff"]
        lines.append(
            f"Handoff control: agent {HANDOFF_SUB} has one link, so about half of its visitors"
            " land on the other worker and are handed over; agent"
            f" {LINKED}'s are all served where they land. On the same edge at the same rate,"
            f" a handed-over connection costs {h['handed_cpu_us']:.1f} CPU-µs against"
            f" {h['local_cpu_us']:.1f} for a local one ({h['handed_to_local']:.2f}{X})"
            + (f", of which the sending worker spent {sender:.1f}." if sender else ".")
            + f" Handoffs failed: {h['handoffs_failed']}."
        )
    return lines
