"""The workers phase's handoff control (bench/workers_paced.py): a handed-over visitor
priced against a local one on the same edge at the same offered rate."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report_workers_paced as rp
from bench.workers_paced import HANDOFF, HANDOFF_OF

R = 2000.0


def run(
    workload: str,
    rep: int,
    us_per_request: float,
    *,
    handed: float = 0.0,
    sender_s: float = 0.0,
    requests: int = 4000,
    error: str | None = None,
) -> dict[str, Any]:
    cpu = requests * us_per_request / 1e6
    return {
        "config": "w2",
        "workload": workload,
        "rep": rep,
        "seconds": 2.0,
        "rate": R,
        "requests": requests,
        "rps": R,
        "errors": {},
        "edge_cpu_s": cpu,
        "edge_cpu_by_process": {
            "supervisor": 0.0,
            "worker 0": cpu - sender_s,
            "worker 1": sender_s,
        },
        "handed_off": round(requests * handed),
        "handed_in": round(requests * handed),
        "handoffs_failed": 0,
        "error": error,
        "latency_ms": {"p50": 0.5, "p99": 2.0},
    }


def phase(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "config": {
            "paced": {
                "rate_fraction": 0.5,
                "plan": [],
                "oha": "oha 1",
                "rates": {HANDOFF_OF: R, HANDOFF: R},
            }
        },
        "edges": {"relay-w2": {"placement": {"workers": {"a": 0, "b": 1}}}},
        "runs": runs,
    }


def test_a_handed_over_visitor_is_priced_from_the_fraction_handed_over() -> None:
    # Local 100 µs; half handed over at 160 µs each ⇒ the mixed runs cost 130 per visitor.
    runs = [run(HANDOFF_OF, 0, 900.0), run(HANDOFF, 0, 900.0, handed=0.5)]  # warm-ups
    for rep in (1, 2, 3):
        runs += [run(HANDOFF_OF, rep, 100.0), run(HANDOFF, rep, 130.0, handed=0.5, sender_s=0.1)]
    h = rp.handoff_control(phase(runs))
    assert h is not None
    assert h["handed_fraction"] == pytest.approx(0.5)
    assert h["handed_to_local"] == pytest.approx(1.6)
    assert h["handed_cpu_us"] == pytest.approx(160.0)
    assert h["handed_to_local_per_rep"] == pytest.approx([1.6, 1.6, 1.6])
    # worker 1 (not a's) spent 0.1 s per run for 2,000 visitors it handed over.
    assert h["sender_cpu_us_per_handoff"] == pytest.approx(50.0)
    target = rp.paced_targets(phase(runs))[-1]
    assert target.name == rp.HANDOFF_TARGET
    assert target.met is False
    assert "= 1.60" in target.detail


def test_a_handoff_that_costs_as_much_as_a_local_visitor_meets_the_target() -> None:
    runs = []
    for rep in (1, 2):
        runs += [run(HANDOFF_OF, rep, 100.0), run(HANDOFF, rep, 104.0, handed=0.5)]
    target = rp.paced_targets(phase(runs))[-1]
    assert target.met is True
    assert "= 1.08" in target.detail


def test_no_handoff_runs_leave_the_control_unevaluated() -> None:
    runs = [run(HANDOFF_OF, 1, 100.0), run(HANDOFF, 1, 130.0, error="oha exited 1")]
    h = rp.handoff_control(phase(runs))
    assert h is not None and h["handed_to_local"] is None
    target = rp.paced_targets(phase(runs))[-1]
    assert target.name == rp.HANDOFF_TARGET
    assert target.met is None
    assert target.detail.startswith("not evaluated")


def test_the_markdown_shows_the_handoff_row_and_what_it_prices() -> None:
    runs = []
    for rep in (1, 2):
        runs += [run(HANDOFF_OF, rep, 100.0), run(HANDOFF, rep, 130.0, handed=0.5)]
    text = "\n".join(rp.paced_markdown(phase(runs)))
    assert "2 workers at R, 50% handed over" in text
    assert "costs 160.0 CPU-µs against 100.0 for a local one (1.60" in text
