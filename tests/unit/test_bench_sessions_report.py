"""The bench's sessions phase (issue 13): its table, ratios, limits and target."""

from __future__ import annotations

from typing import Any

from bench import report_sessions as rs
from bench.report import EN, X


def run(
    mode: str,
    rep: int,
    per_s: float,
    *,
    edge_ms: float,
    gen: tuple[float, ...] = (0.3, 0.3),
    seconds: float = 3.0,
    failures: dict[str, int] | None = None,
    error: str | None = None,
    counters: dict[str, float] | None = None,
    others: float = 0.0,
) -> dict[str, Any]:
    ok = round(per_s * seconds)
    return {
        "mode": mode,
        "rep": rep,
        "seconds": seconds,
        "ok": ok,
        "ok_all": ok + 10,
        "per_s": None if error else per_s,
        "failures": failures or {},
        "close_timeouts": 0,
        "edge_cpu_s": ok * edge_ms / 1e3,
        "load_generator_cpu_s": [g * seconds for g in gen],
        "machine_cpu_s": ok * edge_ms / 1e3 + (sum(gen) + others) * seconds,
        "edge_counters": counters or {},
        "late_s": 0.0,
        "error": error,
    }


def phase(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "config": dict(clients=16, processes=2, duration_s=3.0, reps=3, warmup_s=1.0, ramp_s=0.5),
        "runs": runs,
    }


def three_reps(hs: float, auth: float, bind: float, **kw: Any) -> list[dict[str, Any]]:
    """Reps 1-3 at rates x 0.9, 1.0, 1.1, plus a warm-up (rep 0) far off, not counted."""
    out = [run(m, 0, 1.0, edge_ms=50.0) for m in ("handshake", "auth", "bind")]
    for rep, f in ((1, 0.9), (2, 1.0), (3, 1.1)):
        out.append(run("handshake", rep, hs * f, edge_ms=1.0, gen=(0.55, 0.5)))
        out.append(run("auth", rep, auth * f, edge_ms=kw.get("auth_ms", 1.5), gen=(0.4, 0.4)))
        out.append(run("bind", rep, bind * f, edge_ms=kw.get("bind_ms", 1.8), gen=(0.3, 0.3)))
    return out


def test_cells_take_the_median_of_the_counted_reps_and_cpu_per_success() -> None:
    c = rs.cells(phase(three_reps(900, 600, 500)))
    assert c["handshake"].median == 900
    assert [round(r) for r in c["handshake"].rates] == [810, 900, 990]
    # Total edge CPU / total successes, not a mean of ratios: 1.0 ms each by construction.
    assert abs((c["handshake"].edge_ms() or 0) - 1.0) < 1e-9
    assert abs((c["bind"].edge_ms() or 0) - 1.8) < 1e-9


def test_target_is_judged_on_edge_cpu_and_shows_the_rates() -> None:
    t = rs.target(phase(three_reps(900, 600, 500, bind_ms=1.8)), cores=2)
    assert t.met is True
    assert f"edge 1.80 CPU-ms per auth + bind session vs 1.00 per handshake = 1.80{X}" in t.detail
    assert f"sessions/s 500 vs handshakes/s 900 = 0.56{X}" in t.detail
    assert "one edge core admits ≈ 556 auth + bind sessions/s" in t.detail
    # The rate ratio is only shown: 300/900 = 0.33x would fail a rate bar, CPU decides.
    t = rs.target(phase(three_reps(900, 600, 300, bind_ms=1.9)), cores=2)
    assert t.met is True
    t = rs.target(phase(three_reps(900, 600, 500, bind_ms=2.5)), cores=2)
    assert t.met is False
    assert f"2.50{X}" in t.detail and f"need ≤ 2{X}" in t.detail


def test_a_skipped_or_missing_phase_is_not_evaluated() -> None:
    assert rs.target({}, cores=2).met is None
    t = rs.target({"skipped": "relay CLI not found", "runs": []}, cores=2)
    assert t.met is None and "relay CLI not found" in t.detail
    only_hs = [r for r in three_reps(900, 600, 500) if r["mode"] == "handshake"]
    assert rs.target(phase(only_hs), cores=2).met is None
    assert rs.markdown({}, cores=2) == []
    assert "Skipped: relay CLI not found." in rs.markdown({"skipped": "relay CLI not found"}, 2)


def test_limit_names_what_bounded_the_closed_loop_rate() -> None:
    edge_bound = rs.SCell("bind", [run("bind", 1, 300, edge_ms=3.0)])  # 0.9 cores
    assert edge_bound.limit(2).startswith("edge")
    client_bound = rs.SCell("handshake", [run("handshake", 1, 500, edge_ms=1.0, gen=(0.9,))])
    assert client_bound.limit(2).startswith("load generator")
    machine_bound = rs.SCell("handshake", [run("handshake", 1, 700, edge_ms=1.0, gen=(0.6, 0.6))])
    assert machine_bound.limit(2).startswith("machine")
    idle = rs.SCell("auth", [run("auth", 1, 100, edge_ms=1.0, gen=(0.1, 0.1))])
    assert idle.limit(2).startswith("neither")
    # A shared machine: other processes took the cores the run did not use.
    crowded = rs.SCell("auth", [run("auth", 1, 100, edge_ms=4.0, gen=(0.3, 0.3), others=0.9)])
    assert abs((crowded.others_cores() or 0) - 0.9) < 1e-9
    assert crowded.limit(2) == "machine (all 2 cores busy)"


def test_markdown_table_ratios_counters_and_the_peer_note() -> None:
    runs = three_reps(900, 600, 500)
    runs[-1] = run("bind", 3, 550, edge_ms=1.8, failures={"bind_error RLY_205": 2},
                   counters={"relay_agent_sessions_opened_total": 1650.0,
                             'relay_auth_failures_total{reason="invalid_token"}': 0.0})  # fmt: skip
    md = "\n".join(rs.markdown(phase(runs), cores=2))
    assert "## Agent admission: sessions/s a PoP can admit (issue 13)" in md
    table = [ln.split(" | ") for ln in md.splitlines() if ln.startswith("| ")]
    rows = {cols[0][2:]: cols for cols in table}
    hs = rows["TLS handshake, then close (floor)"]
    assert (
        hs[1] == f"900 (810{EN}990)"
        and hs[2] == f"1.00{X}"
        and hs[3] == "1.00"
        and hs[4] == f"1.00{X}"
    )
    bind = rows["sessions/s (auth + bind): + Bind tcp → Bound"]
    assert bind[1] == f"500 (450{EN}550)" and bind[2] == f"0.56{X}" and bind[4] == f"1.80{X}"
    assert bind[-1].startswith("2")  # failures inside the windows
    auth = rows["sessions/s (auth): + yamux, Auth → AuthOk"]
    assert auth[2] == f"0.67{X}" and auth[3] == "1.50"
    assert "handshakes ≈ 1,000/s; auth sessions ≈ 667/s; auth + bind sessions ≈ 556/s" in md
    assert "sessions opened 1,650" in md and "failed authentications 0" in md
    assert "Peers are not compared here" in md
    assert "bind: bind_error RLY_205 (x2)" in md


def test_a_failed_run_is_reported_and_left_out_of_the_medians() -> None:
    runs = three_reps(900, 600, 500)
    runs.append(run("auth", 4, 10, edge_ms=1.0, error="relay-sessions-edge exited with code 1"))
    c = rs.cells(phase(runs))
    assert c["auth"].median == 600 and c["auth"].failed_runs == 1
    md = "\n".join(rs.markdown(phase(runs), cores=2))
    assert "(1 runs failed)" in md
    assert "auth rep 4: relay-sessions-edge exited with code 1" in md
    s = rs.summary(phase(runs), cores=2)
    assert s["bind"]["per_s_ratio_to_handshakes"] == 500 / 900
    assert abs(s["bind"]["edge_cpu_ratio_to_handshake"] - 1.8) < 1e-9
