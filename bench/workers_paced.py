"""The workers phase's control runs: agent ``l`` on the same two edges at a fixed offered
rate (oha, open loop), so that CPU per request is compared at equal load per process.

The closed-loop rows compare one worker and two at the same total load, so each of the
two workers runs at half the load of the one. On this kind of machine a process's CPU per
request grows as its load falls (each wake-up from idle costs more than the work it then
finds), so those rows charge the second worker for more than itself. Here, at a rate R
(a fraction of the slower edge's closed-loop maximum for the same workload):

* ``w1`` at R/2: one process at the load each of the two workers carries at R;
* ``w1`` at R: one process at the two workers' total load;
* ``w2`` at R: two workers, R/2 each.

``w2``@R against ``w1``@R/2 is what a second worker costs beyond its own share; ``w1``@R
against ``w1``@R/2 is the load effect alone. Agent l has a link on each worker, so no
visitor is handed over and no handoff cost enters these rows.

Beside ``w2``@R of the new-connections workload, the same edge at the same rate is offered
visitors of agent ``a`` instead (``HANDOFF``), whose one link is on one worker: the kernel
gives about half of them to the other worker, which hands each over. With the workers'
counters (the fraction f handed over) the two runs price a handed-over visitor against a
local one on one edge at one load, which the closed-loop handoff row (two workers against
one) cannot: cost_a = (1 - f) * local + f * handed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from bench import httpbench
from bench.procs import BenchError, Proc
from bench.workers import LINKED, WorkersEdge, WRun, snapshot_cpu

#: (label, Connection: close, oha connections, the closed-loop workload whose rate it takes).
PACED: dict[str, tuple[str, bool, int, str]] = {
    "paced-ka": ("keep-alive, agent l, fixed rate", False, httpbench.KA_CONNS, "links-ka"),
    "paced-close": (
        "new connections, agent l, fixed rate",
        True,
        httpbench.CLOSE_CONNS,
        "links-close",
    ),
}
#: The handoff control: agent a's new connections on ``w2`` at the R of this workload.
HANDOFF = "paced-handoff"
HANDOFF_OF = "paced-close"
HANDOFF_SUB = "a"
HANDOFF_LABEL = "new connections, agent a (half handed over), fixed rate"
#: R: this fraction of the slower edge's closed-loop median, so that both edges keep up.
RATE_FRACTION = 0.5
#: (edge, share of R) per run.
PLAN = (("w1", 0.5), ("w1", 1.0), ("w2", 1.0))
#: Bound on one oha run beyond its own duration.
OHA_GRACE_S = 30.0


def paced_rate(runs: list[dict[str, Any]], closed: str) -> float | None:
    """R for a paced workload: RATE_FRACTION of the lower of the two edges' medians of the
    counted closed-loop runs of ``closed``; None when either is missing."""
    medians = []
    for config in ("w1", "w2"):
        rates = [
            r["rps"]
            for r in runs
            if r["config"] == config and r["workload"] == closed and r["rep"] > 0
            and not r.get("error") and r.get("rps")
        ]  # fmt: skip
        if not rates:
            return None
        medians.append(statistics.median(rates))
    return float(RATE_FRACTION * min(medians))


def measure_paced(
    edge: WorkersEdge, origin: Proc, workload: str, rate: float, rep: int, secs: float
) -> WRun:
    """One open-loop run at ``rate`` requests/s to agent l (agent a for HANDOFF); CPU and
    the handoff counters read around it."""
    sub = HANDOFF_SUB if workload == HANDOFF else LINKED
    _, close, conns, _ = PACED[HANDOFF_OF if workload == HANDOFF else workload]
    run = WRun(edge.key.removeprefix("relay-"), workload, rep, secs, rate=rate)
    exe = httpbench.oha_binary()
    proc: Proc | None = None
    try:
        if exe is None:
            raise BenchError("oha is not installed")
        pids = edge.process_pids()
        before = edge.handoffs()
        s0 = snapshot_cpu(edge, pids, origin)
        argv = [exe, "-z", f"{secs:g}s", "-q", f"{rate:.0f}", "-c", str(conns),
                "--latency-correction", "--no-tui", "--output-format", "json", "-w",
                "-t", "5s", "-H", f"Host: {edge.host(sub)}"]  # fmt: skip
        if close:
            argv.append("--disable-keepalive")
        argv.append(httpbench.url(edge.http_port))
        proc = Proc(f"oha-{edge.key}-{workload}-{rep}", argv, edge.work)
        if proc.wait(secs + OHA_GRACE_S) is None:
            raise BenchError(f"oha did not finish within {secs + OHA_GRACE_S:g} s")
        s1 = snapshot_cpu(edge, pids, origin)
        after = edge.handoffs()
        if edge.process_pids() != pids:
            raise BenchError(f"the edge's processes changed during the run: {pids}")
        if proc.returncode() != 0:
            raise BenchError(f"oha exited {proc.returncode()}: {proc.tail(3)}")
        res = httpbench.parse_oha(proc.output())
        run.requests, run.rps = res["requests"], res["rps"]
        run.rps_by_host[sub] = res["rps"]
        run.errors = dict(res["error_kinds"])
        run.latency_ms = res["latency_ms"]
        s1.fill(run, s0)
        run.handed_off = after["handed_off"] - before["handed_off"]
        run.handed_in = after["handed_in"] - before["handed_in"]
        run.handoffs_failed = after["failed"] - before["failed"]
        if not run.requests:
            raise BenchError("oha completed 0 requests")
    except BenchError as e:
        run.error = str(e)
    finally:
        if proc is not None:
            proc.stop()
    return run


def run_paced(
    edges: dict[str, WorkersEdge],
    origin: Proc,
    res: dict[str, Any],
    reps: int,
    duration: float,
    one: Callable[[WRun], None],
    log: Callable[[str], None],
) -> None:
    """Every paced workload: R from the closed-loop runs already in ``res``, then ``reps``
    repetitions of PLAN, its order rotated per repetition; for HANDOFF_OF, each repetition
    also runs HANDOFF beside its ``w2``@R run (before or after it, in turn), so the two
    compared runs are neighbours in time."""
    rates: dict[str, float] = {}
    for workload, (_, _, _, closed) in PACED.items():
        rate = paced_rate(res["runs"], closed)
        if rate is None:
            log(f"workers: {workload} skipped: no closed-loop median of {closed} on both edges")
            continue
        rates[workload] = rate
    if HANDOFF_OF in rates:
        rates[HANDOFF] = rates[HANDOFF_OF]
    res["config"]["paced"] = {
        "rate_fraction": RATE_FRACTION,
        "plan": [list(p) for p in PLAN],
        "rates": rates,
        "handoff": {"workload": HANDOFF, "rate_of": HANDOFF_OF, "agent": HANDOFF_SUB},
        "oha": httpbench.oha_version(),
    }
    for workload, rate in rates.items():
        if workload == HANDOFF:
            continue  # run beside HANDOFF_OF's w2 runs
        log(f"workers: {workload}: R = {rate:.0f} req/s; 1 worker at R/2 and R, 2 workers at R")
        one(measure_paced(edges["w2"], origin, workload, rate, 0, 1.0))  # warm-up
        if workload == HANDOFF_OF:
            one(measure_paced(edges["w2"], origin, HANDOFF, rate, 0, 1.0))
        for rep in range(1, reps + 1):
            shift = (rep - 1) % len(PLAN)
            for config, share in PLAN[shift:] + PLAN[:shift]:
                runs = [workload]
                if workload == HANDOFF_OF and (config, share) == ("w2", 1.0):
                    # Which of the two goes first alternates.
                    runs = [workload, HANDOFF] if rep % 2 else [HANDOFF, workload]
                for w in runs:
                    one(measure_paced(edges[config], origin, w, rate * share, rep, duration))
