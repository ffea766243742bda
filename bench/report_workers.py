"""Summary, targets and markdown of the workers phase (`relay edge --workers 2` beside one
edge process; bench/workers.py)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.report import EN, Target, X, quotient, section_opening
from bench.workers import LINKED

WORKLOADS = ("ka", "close", "close-one", "links-ka", "links-close")
LINKS_WORKLOADS = ("links-ka", "links-close")
CONFIGS = ("w1", "w2")
ROW_LABELS = {
    "ka": "keep-alive, 2 agents (a, b)",
    "close": "new connections, 2 agents (a, b)",
    "close-one": "new connections, agent a only",
    "links-ka": "keep-alive, one agent l",
    "links-close": "new connections, one agent l",
}
EDGE_LABELS = {"w1": "1 worker", "w2": "2 workers"}
#: The rows of agent l, which holds a link per worker.
LINKS_EDGE_LABELS = {"w1": "1 worker, --links 1", "w2": "2 workers, --links 2"}
#: The issue's bar on a machine of its own: req/s with 2 workers at least this times one worker's.
SCALE_GOAL = 1.6
#: Its CPU-normalised form, judged here: CPU per request must not grow with N.
MAX_CPU_GROWTH = 1.05
#: A handed-over visitor costs the edge at most this many local ones.
MAX_HANDED = 1.10


def _name(what: str) -> str:
    return (
        f"edge workers, {what}: edge CPU-µs per request with 2 workers ≤ {MAX_CPU_GROWTH:g}{X}"
        f" one worker (CPU-normalised form of ≥ {SCALE_GOAL:g}{X} req/s)"
    )


TARGET_NAMES = {"ka": _name("keep-alive"), "close": _name("new connections")}
HANDED_NAME = (
    f"edge workers: a handed-over visitor connection costs the edge ≤ {MAX_HANDED:g}{X} a local"
    " one (CPU)"
)


@dataclass
class WCell:
    """One workload on one edge over the counted repetitions (warm-up excluded)."""

    runs: list[dict[str, Any]]

    @property
    def good(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if not r.get("error") and r.get("rps")]

    @property
    def rates(self) -> list[float]:
        return [float(r["rps"]) for r in self.good]

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    def _per_request(self, runs: list[dict[str, Any]], cpu: Callable[[Any], Any]) -> float | None:
        """CPU-µs per request over ``runs``: total CPU over total requests."""
        use = [r for r in runs if cpu(r) is not None]
        n = sum(r["requests"] for r in use)
        return sum(cpu(r) for r in use) * 1e6 / n if n else None

    def cpu_us(self) -> float | None:
        return self._per_request(self.good, lambda r: r.get("edge_cpu_s"))

    def cpu_us_of_rep(self, rep: int) -> float | None:
        runs = [r for r in self.good if r["rep"] == rep]
        return self._per_request(runs, lambda r: r.get("edge_cpu_s"))

    def cpu_us_by_process(self) -> dict[str, float]:
        roles = dict.fromkeys(role for r in self.good for role in r["edge_cpu_by_process"])
        out = {}
        for role in roles:

            def of_role(r: dict[str, Any], role: str = role) -> float | None:
                v: float | None = r["edge_cpu_by_process"].get(role)
                return v

            if (us := self._per_request(self.good, of_role)) is not None:
                out[role] = us
        return out

    def cores(self, cpu: Callable[[dict[str, Any]], float | None]) -> float | None:
        v = [c / r["seconds"] for r in self.good if (c := cpu(r)) is not None]
        return statistics.median(v) if v else None

    def handed_fraction(self) -> float | None:
        n = sum(r["requests"] for r in self.good)
        return sum(r["handed_off"] for r in self.good) / n if n else None

    def handed_per_run(self) -> float | None:
        v = [float(r["handed_off"]) for r in self.good]
        return statistics.median(v) if v else None

    def errors(self) -> int:
        """Responses wrk counted as errors (non-2xx, socket errors)."""
        return sum(sum(r.get("errors", {}).values()) for r in self.runs)

    def handoffs_failed(self) -> int:
        return sum(int(r.get("handoffs_failed", 0)) for r in self.runs)

    @property
    def failed_runs(self) -> int:
        return len(self.runs) - len(self.good)

    def to_json(self) -> dict[str, Any]:
        return {
            "median_rps": self.median,
            "min_rps": min(self.rates) if self.rates else None,
            "max_rps": max(self.rates) if self.rates else None,
            "values_rps": self.rates,
            "edge_cpu_us_per_request": self.cpu_us(),
            "edge_cpu_us_per_request_by_process": self.cpu_us_by_process(),
            "edge_cores_median": self.cores(lambda r: r.get("edge_cpu_s")),
            "wrk_cores_median": self.cores(lambda r: r.get("wrk_cpu_s")),
            "agents_and_origin_cores_median": self.cores(_others),
            "machine_busy_cores_median": self.cores(lambda r: r.get("machine_cpu_s")),
            "other_processes_cores_median": self.cores(_rest),
            "handed_over_fraction": self.handed_fraction(),
            "handed_over_per_run_median": self.handed_per_run(),
            "errors": self.errors(),
            "handoffs_failed": self.handoffs_failed(),
            "failed_runs": self.failed_runs,
        }


def _others(r: dict[str, Any]) -> float | None:
    a, o = r.get("agents_cpu_s"), r.get("origin_cpu_s")
    return None if a is None or o is None else a + o


def _rest(r: dict[str, Any]) -> float | None:
    """What neither the edge, wrk, the agents nor the origin used of the machine's busy
    time: other work on a shared machine."""
    machine, edge, wrk, others = (r.get("machine_cpu_s"), r.get("edge_cpu_s"),
                                  r.get("wrk_cpu_s"), _others(r))  # fmt: skip
    if machine is None or edge is None or wrk is None or others is None:
        return None
    return max(float(machine - edge - wrk - others), 0.0)


def cells(res: dict[str, Any]) -> dict[tuple[str, str], WCell]:
    out: dict[tuple[str, str], WCell] = {}
    for r in res.get("runs", []):
        if r["rep"] > 0:
            out.setdefault((r["config"], r["workload"]), WCell([])).runs.append(r)
    return out


def per_rep_cpu_ratios(one: WCell, two: WCell) -> list[float]:
    """2 workers ÷ 1 worker CPU-µs per request within each repetition (the two runs of a
    repetition are neighbours in time, so other load on the machine touches both alike)."""
    reps = sorted({r["rep"] for r in one.good} & {r["rep"] for r in two.good})
    pairs = [quotient(two.cpu_us_of_rep(k), one.cpu_us_of_rep(k)) for k in reps]
    return [x for x in pairs if x is not None]


def handed_ratio(local: float | None, two: float | None, f: float | None) -> float | None:
    """From cost_2w = (1 - f) * local + f * handed: handed ÷ local."""
    if local is None or two is None or not f or not local:
        return None
    return (two - (1 - f) * local) / f / local


def handed_over(res: dict[str, Any]) -> dict[str, Any] | None:
    """What a handed-over connection costs the edge, against a local one."""
    c = cells(res)
    one, two = c.get(("w1", "close-one")), c.get(("w2", "close-one"))
    if one is None or two is None:
        return None
    local, cost2, f = one.cpu_us(), two.cpu_us(), two.handed_fraction()
    ratio = handed_ratio(local, cost2, f)
    reps = sorted({r["rep"] for r in one.good} & {r["rep"] for r in two.good})
    per_rep = [handed_ratio(one.cpu_us_of_rep(k), two.cpu_us_of_rep(k), f) for k in reps]
    sender = handoff_sender(res)
    return {
        "local_cpu_us": local,
        "two_workers_cpu_us": cost2,
        "handed_fraction": f,
        "handed_cpu_us": ratio * local if ratio is not None and local else None,
        "handed_to_local": ratio,
        "handed_to_local_per_rep": [x for x in per_rep if x is not None],
        "sender": sender,
        "sender_cpu_us_per_handoff": sender_cpu_us(two, sender),
    }


def handoff_sender(res: dict[str, Any]) -> str | None:
    """The worker of ``w2`` without agent a's session: for a's visitors it only accepts,
    reads the head, routes and hands over."""
    holder = res.get("edges", {}).get("relay-w2", {}).get("placement", {}).get("workers", {})
    return f"worker {1 - int(holder['a'])}" if "a" in holder else None


def sender_cpu_us(cell: WCell, sender: str | None) -> float | None:
    """The sender's CPU per visitor it handed over: the sending half of a handoff."""
    handed_n = sum(r["handed_off"] for r in cell.good)
    if sender is None or not handed_n:
        return None
    spent = sum(float(r["edge_cpu_by_process"].get(sender, 0.0)) for r in cell.good)
    return float(spent * 1e6 / handed_n)


def _at_end(info: dict[str, Any], subs: tuple[str, ...]) -> Any:
    """Where ``subs``' links were at the end of the phase (or why that is unknown)."""
    end = info.get("placement_at_end")
    return {s: end.get(s) for s in subs} if isinstance(end, dict) else end


def placement_failed(res: dict[str, Any]) -> str | None:
    """A problem with agents a and b (the scaling targets' rows)."""
    for key, info in res.get("edges", {}).items():
        p = info.get("placement", {})
        if not p.get("ok", True):
            return f"{key}: agents a and b stayed on one worker after {p.get('tries')} starts of b"
        end = _at_end(info, ("a", "b"))
        if key != "relay-w1" and end is not None and p.get("workers") != end:
            return f"{key}: agents moved during the phase ({end})"
    return None


def links_placement_failed(res: dict[str, Any]) -> str | None:
    """A problem with agent l: its links not one per worker, or moved during the phase."""
    for key, info in res.get("edges", {}).items():
        p = info.get("placement", {}).get("links", {}).get(LINKED)
        if p is None:
            continue
        if not p.get("ok"):
            return (
                f"{key}: agent {LINKED}'s links stayed on worker(s) {p.get('workers')} after"
                f" {p.get('tries')} starts"
            )
        end = _at_end(info, (LINKED,))
        if end is not None and {LINKED: p.get("workers")} != end:
            return f"{key}: agent {LINKED}'s links moved during the phase ({end})"
    return None


def summary(res: dict[str, Any]) -> dict[str, Any]:
    c = cells(res)
    out: dict[str, Any] = {
        w: {e: c[(e, w)].to_json() for e in CONFIGS if (e, w) in c} for w in WORKLOADS
    }
    for w in WORKLOADS:
        one, two = c.get(("w1", w)), c.get(("w2", w))
        if one is not None and two is not None:
            out[w]["rps_ratio_2_to_1"] = quotient(two.median, one.median)
            out[w]["cpu_per_request_ratio_2_to_1"] = quotient(two.cpu_us(), one.cpu_us())
    out["handed_over"] = handed_over(res)
    out["placement_problem"] = placement_failed(res)
    out["links_placement_problem"] = links_placement_failed(res)
    return out


def targets(res: dict[str, Any], cores: int) -> list[Target]:
    """The CPU-normalised scaling target per workload, judged; the raw req/s ratio beside
    it, not judged: on a machine whose cores the load generator, the agents and the origin
    share with the edge, a second worker gets no core of its own to scale onto."""
    names = [*TARGET_NAMES.values(), HANDED_NAME]
    if not res or res.get("skipped"):
        why = res.get("skipped", "phase not run") if res else "phase not run"
        return [Target(n, None, f"not evaluated: {why}") for n in names]
    c = cells(res)
    out = []
    problem = placement_failed(res)
    for w, name in TARGET_NAMES.items():
        one, two = c.get(("w1", w)), c.get(("w2", w))
        a, b = (two.cpu_us() if two else None), (one.cpu_us() if one else None)
        if problem or a is None or b is None or one is None or two is None:
            out.append(Target(name, None, f"not evaluated: {problem or 'a median is missing'}"))
            continue
        q = quotient(two.median, one.median)
        out.append(
            Target(
                name,
                a / b <= MAX_CPU_GROWTH,
                f"2 workers {a:.1f} vs 1 worker {b:.1f} CPU-µs per request = {a / b:.2f}{X}"
                f" (need ≤ {MAX_CPU_GROWTH:g}{X}; per rep {_range(per_rep_cpu_ratios(one, two))});"
                " req/s 2 workers ÷ 1 worker ="
                f" {_f(q, '.2f', X)}, not judged: wrk, the agents and nginx run on the same"
                f" {cores} cores as the edge, so a second worker has no core of its own",
            )
        )
    h = handed_over(res)
    if h is None or h["handed_to_local"] is None:
        out.append(Target(HANDED_NAME, None, "not evaluated: a close-one median is missing"))
    else:
        r = h["handed_to_local"]
        out.append(
            Target(
                HANDED_NAME,
                r <= MAX_HANDED,
                f"{h['handed_fraction']:.0%} of the 2-worker connections handed over;"
                f" {h['two_workers_cpu_us']:.1f} CPU-µs per connection vs"
                f" {h['local_cpu_us']:.1f} with 1 worker ⇒ handed-over"
                f" {h['handed_cpu_us']:.1f} = {r:.2f}{X} a local one (need ≤ {MAX_HANDED:g}{X};"
                f" per rep {_range(h['handed_to_local_per_rep'])})",
            )
        )
    from bench.report_workers_paced import paced_targets  # it builds on this module

    return out + paced_targets(res)


def _f(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def _range(v: list[float]) -> str:
    return f"{min(v):.2f}{EN}{max(v):.2f}{X}" if v else "—"


def _handed_cell(cell: WCell, workload: dict[str, Any]) -> str:
    """Handed-over visitors per run: of the requests (each one a connection) under
    Connection: close, of wrk's connections under keep-alive (each handed over once)."""
    f, handed = cell.handed_fraction(), cell.handed_per_run()
    if f is None or handed is None:
        return "—"
    if workload.get("close", True):
        return f"{handed:,.0f} ({f:.1%})"
    return f"{handed:,.0f} of {workload.get('connections')} connections"


def _row(w: str, e: str, cell: WCell, base: WCell | None, workload: dict[str, Any]) -> list[str]:
    v = cell.rates
    is_base = e == "w1"
    edge_label = (LINKS_EDGE_LABELS if w in LINKS_WORKLOADS else EDGE_LABELS)[e]
    rps_r = quotient(cell.median, base.median if base else None)
    cpu_r = quotient(cell.cpu_us(), base.cpu_us() if base else None)
    split = cell.cpu_us_by_process()
    by_proc = " / ".join(f"{role} {us:.1f}" for role, us in split.items()) if len(split) > 1 else ""
    failed = f" ({cell.failed_runs} runs failed)" if cell.failed_runs else ""
    return [
        ROW_LABELS[w] if is_base else "",
        edge_label,
        f"{statistics.median(v):,.0f} ({min(v):,.0f}{EN}{max(v):,.0f})" if v else "failed",
        f"1.00{X}" if is_base and v else _f(rps_r, ".2f", X),
        _f(cell.cpu_us(), ".1f"),
        f"1.00{X}" if is_base and v else _f(cpu_r, ".2f", X),
        by_proc or "—",
        _f(cell.cores(lambda r: r.get("edge_cpu_s"))),
        _f(cell.cores(lambda r: r.get("wrk_cpu_s"))),
        _f(cell.cores(_others)),
        _f(cell.cores(lambda r: r.get("machine_cpu_s"))),
        _f(cell.cores(_rest)),
        "—" if is_base else _handed_cell(cell, workload),
        "—" if is_base else f"{cell.handoffs_failed()}",
        f"{cell.errors()}{failed}",
    ]


def markdown(res: dict[str, Any], cores: int) -> list[str]:
    L, goes_on = section_opening(res, "Edge workers: `relay edge --workers 2` beside one process")
    add = L.append
    if not goes_on:
        return L
    cfg = res.get("config", {})
    conns = {k: v["connections"] for k, v in cfg.get("workloads", {}).items()}
    add(
        "Two edges side by side for the whole phase, each started as the sessions phase starts"
        " one (its own data directory and token): `--workers 1` (one process) and `--workers 2`"
        " (a supervisor and two workers, every listener bound in both with SO_REUSEPORT). Each"
        " has three agents in front of the http phase's nginx origin: `relay http ORIGIN"
        " --no-https --subdomain a`, `… b`, and `… l --links N` with N = the edge's workers"
        " (one agent id, N sessions); with 2 workers a and b are on different workers and l"
        " has a link on each (each session looked up in every worker's admin `/status`"
        " `sessions_list`, b or l restarted until so, at most"
        f" {cfg.get('max_placement_tries')} starts each). Load: wrk"
        f" closed loop, one process (1 thread) per hostname, all at once: keep-alive with"
        f" {conns.get('ka')} connections in all and `Connection: close` with {conns.get('close')},"
        f" split evenly between a and b; then `Connection: close` with {conns.get('close-one')}"
        " to a alone — with 2 workers the kernel gives about half of those connections to the"
        " worker that does not hold a, which hands each over (its socket by SCM_RIGHTS, with the"
        " request head it read); the workers' `handed_off` counters say exactly how many;"
        " then keep-alive and `Connection: close` to l alone, whose links each serve the"
        " visitors their own worker accepted, against the same agent with one link on one"
        " worker. (The agents not loaded stay connected, idle.)"
        f" {_f(cfg.get('duration_s'), 'g')} s per run,"
        f" {cfg.get('reps')} reps, the two edges alternated within each rep (order rotated per"
        " rep and workload), one warm-up run each not counted. Edge CPU: user + system of all the"
        " edge's processes (supervisor and workers) from `/proc/PID/stat` over the run; wrk's"
        " from the harness's reaped children; machine: busy time from `/proc/stat`."
        " CPU-µs per request: total edge CPU ÷ total requests over the counted runs."
    )
    add("")
    c = cells(res)
    hdr = [
        "workload",
        "edge",
        f"req/s median (min{EN}max)",
        f"{X} 1 worker",
        "edge CPU-µs per request",
        f"{X} 1 worker's",
        "CPU-µs by process",
        "edge cores",
        "wrk cores",
        "agents + origin cores",
        "machine busy cores",
        "other processes' cores",
        "handed over per run",
        "refused handoffs",
        "wrk errors",
    ]
    add("| " + " | ".join(hdr) + " |")
    add("|" + "|".join([" --- "] * 2 + [" ---: "] * 4 + [" --- "] + [" ---: "] * 8) + "|")
    for w in WORKLOADS:
        for e in CONFIGS:
            if (e, w) in c:
                row = _row(w, e, c[(e, w)], c.get(("w1", w)), cfg.get("workloads", {}).get(w, {}))
                add("| " + " | ".join(row) + " |")
    add("")
    h = handed_over(res)
    if h is not None and h["handed_to_local"] is not None:
        add(
            "Handed-over visitor: with 2 workers and agent a alone loaded,"
            f" f = {h['handed_fraction']:.1%} of the connections were handed over; the edge paid"
            f" {h['two_workers_cpu_us']:.1f} CPU-µs per connection against"
            f" {h['local_cpu_us']:.1f} with one worker (all local). From"
            " cost₂ = (1 - f) · local + f · handed: a handed-over connection costs"
            f" {h['handed_cpu_us']:.1f} CPU-µs, {h['handed_to_local']:.2f}{X} a local one"
            f" (per rep: {', '.join(f'{x:.2f}' for x in h['handed_to_local_per_rep'])}). It"
            " includes both workers' share — accept, head read and sendmsg in the first;"
            " receive and adopt in the second — and the second worker's and supervisor's idle"
            " cost; the 1/f lever doubles any noise in the two figures."
            + (
                f" The sending half alone: {h['sender']} (a's visitors are not its own; it"
                " holds only b's idle session) spent"
                f" {h['sender_cpu_us_per_handoff']:.1f} CPU-µs per visitor it handed over."
                if h.get("sender_cpu_us_per_handoff") is not None
                else ""
            )
        )
        add("")
    links_md = _links(c)
    if links_md:
        add(links_md)
        add("")
    add(_refused(res, c))
    add("")
    for key, info in res.get("edges", {}).items():
        p = info.get("placement", {})
        where = p.get("workers", {})
        linked = p.get("links", {}).get(LINKED, {})
        if key == "relay-w1":
            continue
        end = info.get("placement_at_end")
        if end == {**where, LINKED: linked.get("workers")}:
            end_md = ", unchanged at the end of the phase"
        elif isinstance(end, dict):
            end_md = (
                f"; at the end a on worker {end.get('a')}, b on worker {end.get('b')},"
                f" {LINKED}'s links on {end.get(LINKED)}"
            )
        else:
            end_md = f"; at the end: {end}" if end else ""
        add(
            f"Placement ({EDGE_LABELS.get(key.removeprefix('relay-'), key)}): agent a on worker"
            f" {where.get('a')}, b on worker {where.get('b')} after {p.get('tries')} start(s) of b;"
            f" agent {LINKED}'s links 0 and 1 on workers {linked.get('workers')} after"
            f" {linked.get('tries')} start(s) of {LINKED}{end_md}."
        )
        add("")
    problem = placement_failed(res)
    if problem:
        add(f"**Placement failed:** {problem}; the scaling targets are not evaluated.")
        add("")
    links_problem = links_placement_failed(res)
    if links_problem:
        add(f"**Placement of agent {LINKED} failed:** {links_problem}; its rows do not show"
            " one agent on both workers.")  # fmt: skip
        add("")
    add(
        f"Not judged: the req/s ratio. The issue's bar, ≥ {SCALE_GOAL:g}{X} one worker's req/s,"
        " needs the load generator in its own network namespace on cores of its own; this"
        f" machine has {cores} cores and wrk, the agents and nginx run on them beside the edge"
        " (the machine-busy column), so a second worker has no free core to scale onto. What"
        f" is judged is the bar's CPU-normalised form: CPU-µs per request must not grow with"
        f" the number of workers (≤ {MAX_CPU_GROWTH:g}{X}). Nothing is pinned: with wrk, the"
        " agents and nginx on CPU 1 and the edge left free the per-rep spread was no narrower"
        " (tried), and pinning the edge would take the second worker's core away."
    )
    add("")
    errors = [(r["config"], r["workload"], r["rep"], r["error"])
              for r in res.get("runs", []) if r.get("error")]  # fmt: skip
    if errors:
        add("Failures: " + "; ".join(f"{e} {w} rep {k}: {msg.splitlines()[0]}"
                                     for e, w, k, msg in errors) + ".")  # fmt: skip
        add("")
    died = {k: v["died"] for k, v in res.get("edges", {}).items() if v.get("died")}
    if died:
        add(f"**Processes died during the phase:** {died}")
        add("")
    from bench.report_workers_paced import paced_markdown

    return L + paced_markdown(res)


def _links(c: dict[tuple[str, str], WCell]) -> str | None:
    """Agent l's rows in a sentence: one agent on both workers against one link."""
    parts = []
    for w, what in (("links-ka", "keep-alive"), ("links-close", "new connections")):
        one, two = c.get(("w1", w)), c.get(("w2", w))
        if one is None or two is None or one.median is None or two.median is None:
            continue
        a, b = two.cpu_us(), one.cpu_us()
        cpu = f", CPU-µs per request {_f(a, '.1f')} vs {_f(b, '.1f')}" if a and b else ""
        parts.append(
            f"{what} {two.median:,.0f} vs {one.median:,.0f} req/s"
            f" ({two.median / one.median:.2f}{X}){cpu}, {two.handed_per_run() or 0:,.0f} visitors"
            " handed over per run"
        )
    if not parts:
        return None
    return (
        f"One agent on both workers: agent {LINKED} with `--links 2` on 2 workers against"
        f" `--links 1` on 1 worker — {'; '.join(parts)}. Each worker serves the visitors the"
        " kernel gave it on its own link, so none should be handed over (a keep-alive"
        " connection would be handed over once, a new one each time)."
    )


def _refused(res: dict[str, Any], c: dict[tuple[str, str], WCell]) -> str:
    """Visitors a worker could not hand over: what the counters and the edge's log say."""
    n = sum(cell.handoffs_failed() for cell in c.values())
    handed = sum(r["handed_off"] for cell in c.values() for r in cell.good)
    qlen = res.get("config", {}).get("unix_max_dgram_qlen")
    logged = [v["handoffs_refused_in_log"] for v in res.get("edges", {}).values()
              if v.get("handoffs_refused_in_log")]  # fmt: skip
    log_line = (
        f" The edge logged {sum(x['lines'] for x in logged)} refused handoffs over the phase"
        f" (warm-ups included), e.g. `{logged[0]['first'].split(': ', 1)[-1]}`."
        if logged
        else " The edge logged none over the phase, warm-ups included."
    )
    inbox = (
        " A worker's inbox is a Unix datagram socket, and Linux queues at most"
        f" `net.unix.max_dgram_qlen` datagrams in it ({qlen} on this machine), whatever its"
        " SO_RCVBUF, so a burst of new connections while the receiving worker is busy fills it"
        " (EAGAIN). The sending worker then keeps those visitors itself, in order, each with a"
        " duplicate of its descriptor, until the inbox polls writable, up to 1,024 per"
        " receiving worker (relay/cluster/handoff.py, `Outbox`)."
    )
    if not n:
        return (
            f"Refused handoffs: 0 of the {handed:,} visitors handed over in the counted runs"
            f" (the workers' `handoffs_failed`).{log_line}{inbox} Only past that queue, or"
            " with the receiving worker gone, would a visitor get the accepting worker's"
            " 503 RLY_611."
        )
    return (
        f"**Refused handoffs: {n}** visitors over the counted runs were not handed over (the"
        " workers' `handoffs_failed`) and got the accepting worker's 503 RLY_611 instead; wrk"
        f" counts them as non-2xx errors.{log_line}{inbox} A refusal means that queue was full"
        " or the receiving worker was gone."
    )
