"""Summaries, targets and markdown for the HTTP, head-of-line and memory phases."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bench.httpbench import HttpMeasurement
from bench.loopfloor import LoopFloor
from bench.report import EN, LABELS, PEERS, Target, X, best_of

PCTS = ("p50", "p90", "p99", "p99.9", "max")
FLOOR_KEY = LoopFloor.key
FLOOR_LABEL = f"{LoopFloor.label} (not a tunnel)"


@dataclass
class HCell:
    ms: list[HttpMeasurement]

    @property
    def good(self) -> list[HttpMeasurement]:
        return [m for m in self.ms if m.ok]

    @property
    def rps(self) -> list[float]:
        return [m.rps for m in self.good if m.rps is not None]

    @property
    def median(self) -> float | None:
        return statistics.median(self.rps) if self.rps else None

    def rng(self) -> str:
        v = self.rps
        return f"{statistics.median(v):,.0f} ({min(v):,.0f}{EN}{max(v):,.0f})" if v else "failed"

    @property
    def errors(self) -> int:
        return sum(m.errors for m in self.ms)

    @property
    def failures(self) -> int:
        return sum(1 for m in self.ms if not m.ok)

    def lat(self, p: str) -> float | None:
        v = [m.latency_ms[p] for m in self.good if p in m.latency_ms]
        return statistics.median(v) if v else None

    def lat_rng(self, p: str) -> str:
        v = [m.latency_ms[p] for m in self.good if p in m.latency_ms]
        if not v:
            return "—"
        return f"{statistics.median(v):.2f} ({min(v):.2f}{EN}{max(v):.2f})"

    def cpu_per_1k(self) -> tuple[float | None, dict[str, float]]:
        req = sum(m.requests for m in self.good if m.cpu_s)
        if not req:
            return None, {}
        roles: dict[str, float] = {}
        for m in self.good:
            for r, s in m.cpu_s.items():
                roles[r] = roles.get(r, 0.0) + s
        per = {r: s / (req / 1000) for r, s in roles.items()}
        return sum(per.values()), per

    def connect_ms(self) -> float | None:
        v = [m.connect_ms["average"] for m in self.good if "average" in m.connect_ms]
        return statistics.median(v) if v else None

    def to_json(self) -> dict[str, Any]:
        cpu, per = self.cpu_per_1k()
        return {
            "median_rps": self.median,
            "values_rps": self.rps,
            "errors": self.errors,
            "failed_runs": self.failures,
            "latency_ms_median": {p: self.lat(p) for p in PCTS},
            "cpu_seconds_per_1k_requests": cpu,
            "cpu_seconds_per_1k_requests_by_process": per,
            "connect_ms_median_avg": self.connect_ms(),
        }


def cells(ms: Iterable[HttpMeasurement]) -> dict[tuple[str, str, float | None], HCell]:
    out: dict[tuple[str, str, float | None], HCell] = {}
    for m in ms:
        if m.rep == 0:
            continue
        out.setdefault((m.scenario, m.contestant, m.rate), HCell([])).ms.append(m)
    return out


def _get(c: dict[tuple[str, str, float | None], HCell], scen: str, key: str) -> HCell | None:
    for (s, k, _), cell in c.items():
        if s == scen and k == key:
            return cell
    return None


def _edge_cpu_cost(plain: HCell, logged: HCell) -> str:
    """The edge's own CPU per request with and without the log: what logging costs relay
    itself, apart from what the kernel spends writing the file (which a saturated
    2-core machine also pays for in req/s)."""
    without, with_log = plain.cpu_per_1k()[1].get("edge"), logged.cpu_per_1k()[1].get("edge")
    if not without or not with_log:
        return ""
    # seconds per 1,000 requests = milliseconds per request; x1000 for microseconds
    return (
        f"; edge CPU per request {with_log * 1000:.2f} vs {without * 1000:.2f} µs"
        f" = {with_log / without:.2f}{X}"
    )


def _ratio(a: HCell | None, b: HCell | None) -> float | None:
    if not a or not b or not a.median or not b.median:
        return None
    return a.median / b.median


def _vs(
    c: dict[tuple[str, str, float | None], HCell],
    scen: str,
    relay_key: str,
    peers: tuple[str, ...],
    value: Callable[[HCell], float | None],
    higher_is_better: bool,
    unit: str,
) -> tuple[bool, str] | None:
    """relay_key against the best of `peers` in one scenario: (met, detail), or None."""
    rc = _get(c, scen, relay_key)
    rv = value(rc) if rc else None
    vals: dict[str, float | None] = {}
    for k in peers:
        pc = _get(c, scen, k)
        vals[k] = value(pc) if pc else None
    best = best_of(vals, higher_is_better)
    if rv is None or best is None:
        return None
    key, bv = best
    met = rv >= bv if higher_is_better else rv <= bv
    fmt = ",.0f" if higher_is_better else ".2f"
    return met, (
        f"{LABELS[relay_key]} {rv:{fmt}}{unit} vs {LABELS[key]} {bv:{fmt}}{unit} = {rv / bv:.2f}{X}"
    )


def peer_targets(c: dict[tuple[str, str, float | None], HCell]) -> list[Target]:
    """Issue 4's HTTP targets: relay against the best peer, each relay endpoint against
    what it competes with (the TCP endpoint against the peers' TCP forwarding, the HTTP
    endpoint against frp's HTTP vhost, which also parses every request)."""
    out: list[Target] = []

    def p99(cell: HCell) -> float | None:
        return cell.lat("p99")

    def rps(cell: HCell) -> float | None:
        return cell.median

    for scen, what, value, higher, unit in (
        ("ka-max", "keep-alive req/s ≥ the best peer", rps, True, ""),
        ("close-max", "new connections/s ≥ the best peer", rps, True, ""),
        ("ka-lat", "fixed-rate p99 ≤ the best peer's", p99, False, " ms"),
    ):
        parts = [
            _vs(c, scen, "relay", PEERS, value, higher, unit),
            _vs(c, scen, "relay-http", ("frp-http",), value, higher, unit),
        ]
        known = [p for p in parts if p is not None]
        name = f"{what} (relay TCP endpoint vs TCP forwarding; relay http vs frp http)"
        if not known:
            out.append(Target(name, None, "not evaluated: relay or peer medians missing"))
            continue
        out.append(Target(name, all(m for m, _ in known), "; ".join(d for _, d in known)))
    return out


def targets(c: dict[tuple[str, str, float | None], HCell], mem: dict[str, Any]) -> list[Target]:
    out: list[Target] = peer_targets(c)
    for scen, factor, what in (("ka-max", 1.5, "keep-alive req/s"),
                               ("close-max", 2.0, "new connections/s")):  # fmt: skip
        name = f"relay {what} ≥ {factor}{X} ssh -R (relay TCP endpoint / relay http endpoint)"
        ssh = _get(c, scen, "ssh")
        details, mets = [], []
        for key in ("relay", "relay-http"):
            r = _ratio(_get(c, scen, key), ssh)
            if r is None:
                continue
            rc = _get(c, scen, key)
            assert rc is not None and ssh is not None
            mets.append(r >= factor)
            details.append(f"{key} {rc.median:,.0f} vs ssh -R {ssh.median:,.0f} = {r:.2f}{X}")
        if not mets:
            out.append(Target(name, None, "not evaluated: relay or ssh -R median missing"))
        else:
            out.append(Target(name, all(mets), "; ".join(details) + f" (need ≥ {factor}{X})"))
    plain, logged = _get(c, "ka-max", "relay-http"), _get(c, "ka-max", "relay-http-log")
    name = "the access log costs ≤ 5% of relay http's keep-alive req/s (issue 12)"
    r = _ratio(logged, plain)
    if r is None or plain is None or logged is None:
        out.append(Target(name, None, "not evaluated: relay http or its logged twin missing"))
    else:
        out.append(
            Target(
                name,
                r >= 0.95,
                f"with the log {logged.median:,.0f} vs without {plain.median:,.0f} req/s"
                f" = {r:.2f}{X} (need ≥ 0.95{X})" + _edge_cpu_cost(plain, logged),
            )
        )
    base, bulk = _get(c, "hol-base", "relay"), _get(c, "hol-bulk", "relay")
    name = f"head-of-line: relay small-request p99 beside a 100 MiB transfer ≤ 3{X} without"
    if base and bulk and base.lat("p99") and bulk.lat("p99"):
        r = (bulk.lat("p99") or 0) / (base.lat("p99") or 1)
        out.append(
            Target(
                name,
                r <= 3.0,
                f"p99 {base.lat('p99'):.2f} ms alone, {bulk.lat('p99'):.2f} ms beside the"
                f" transfer = {r:.2f}{X}",
            )
        )
    else:
        out.append(Target(name, None, "not evaluated (no head-of-line runs for relay)"))
    s = mem.get("sessions", {})
    name = "edge memory ≤ 64 KiB per idle agent session"
    if s.get("ok"):
        v = s["edge_bytes_per_session"]
        out.append(Target(name, v <= 64 * 1024, f"{v / 1024:.1f} KiB per session (RSS slope)"))
    else:
        out.append(Target(name, None, f"not evaluated: {s.get('error', 'not run')}"))
    t = mem.get("streams", {})
    name = "edge memory ≤ 4 KiB per idle open stream"
    if t.get("ok"):
        v = t["edge_bytes_per_stream"]
        out.append(Target(name, v <= 4096, f"{v:.0f} B per stream (RSS slope)"))
    else:
        out.append(Target(name, None, f"not evaluated: {t.get('error', 'not run')}"))
    return out


def markdown(
    res: dict[str, Any],
    c: dict[tuple[str, str, float | None], HCell],
    labels: dict[str, str],
    order: list[str],
) -> list[str]:
    L: list[str] = []
    add = L.append
    http = res.get("http", {})
    rates = http.get("rates", {})
    add("## HTTP: closed-loop maximum (wrk) and new connections per second")
    add("")
    add(
        f"wrk -t1, keep-alive -c{res['config'].get('ka_conns')} and `Connection: close`"
        f" -c{res['config'].get('close_conns')}, {res['config'].get('http_duration_s')} s per run,"
        f' {res["config"].get("reps")} reps alternated; origin nginx `return 200 "ok"`.'
        " CPU-s/1k: CPU seconds of the contestant's processes per 1,000 requests."
        " Errors: wrk socket errors + non-2xx over all reps."
    )
    add("")
    hdr = ["contestant", "keep-alive req/s", f"{X} direct", f"{X} ssh -R", f"{X} haproxy",
           "CPU-s/1k", "errors", "new conns/s (close)", f"{X} direct", f"{X} ssh -R",
           "CPU-s/1k", "errors"]  # fmt: skip
    add("| " + " | ".join(hdr) + " |")
    add("|" + "|".join([" --- "] + [" ---: "] * (len(hdr) - 1)) + "|")
    for k in order:
        ka, cl = _get(c, "ka-max", k), _get(c, "close-max", k)
        if not ka and not cl:
            continue
        row = [labels.get(k, k)]
        for cell, bases in ((ka, ("direct", "ssh", "haproxy")), (cl, ("direct", "ssh"))):
            if cell is None:
                row += ["—"] * (len(bases) + 3)
                continue
            row.append(cell.rng())
            for b in bases:
                r = _ratio(cell, _get(c, cell.ms[0].scenario, b))
                row.append("—" if r is None else f"{r:.2f}{X}")
            cpu, per = cell.cpu_per_1k()
            if cpu is None or k == "direct":
                row.append("—")
            elif len(per) > 1:
                row.append(
                    f"{cpu:.3f} (" + " + ".join(f"{r} {v:.3f}" for r, v in per.items()) + ")"
                )
            else:
                row.append(f"{cpu:.3f}")
            row.append(str(cell.errors))
        add("| " + " | ".join(row) + " |")
    add("")
    for scen, rkey, title in (
        ("ka-lat", "common_ka_rate", "keep-alive, -c50"),
        ("close-lat", "common_close_rate", "`Connection: close` (oha --disable-keepalive), -c20"),
    ):
        rate = rates.get(rkey)
        if not rate or not any(s == scen for s, _, _ in c):
            continue
        add(f"## HTTP latency at a fixed {rate:,.0f} req/s — {title}")
        add("")
        add(
            f"oha `-q {rate:.0f} --latency-correction` (open loop, measured from the intended send"
            " time: coordinated-omission corrected); the rate is ≈ 50% of the slowest"
            " contestant's measured maximum, so below every contestant's knee. Median over reps"
            f" (p99: median (min{EN}max)), ms. Errors over all reps."
        )
        add("")
        hdr = ["contestant", "p50", "p90", "p99", "p99.9", "max", "achieved req/s",
               "CPU-µs/request", "errors"]  # fmt: skip
        if scen == "close-lat":
            hdr.insert(-2, "connect ms (avg)")
        add("| " + " | ".join(hdr) + " |")
        add("|" + "|".join([" --- "] + [" ---: "] * (len(hdr) - 1)) + "|")
        lat_rows = [(k, labels.get(k, k)) for k in order]
        if scen == "ka-lat":
            lat_rows.append((FLOOR_KEY, f"*{FLOOR_LABEL}*"))
        for k, label in lat_rows:
            cell = _get(c, scen, k)
            if not cell:
                continue
            row = [label]
            for p in PCTS:
                row.append(cell.lat_rng(p) if p == "p99" else _f(cell.lat(p)))
            row.append(_f(cell.median, ",.0f"))
            if scen == "close-lat":
                row.append(_f(cell.connect_ms()))
            row.append(cpu_us_per_request(cell))
            row.append(
                str(cell.errors) + (f" ({cell.failures} runs failed)" if cell.failures else "")
            )
            add("| " + " | ".join(row) + " |")
        add("")
        if scen == "ka-lat":
            L.extend(floor_paragraph(c))
    sweep = [(k, r, cell) for (s, k, r), cell in c.items() if s == "ka-sweep"]
    if sweep:
        add("## Knee sweep (keep-alive, fractions of each contestant's own maximum)")
        add("")
        add(
            "Below the knee = achieved ≥ 95% of the target rate, no errors, and p99 ≤ 4"
            + X
            + " the p99 at the lowest swept rate."
        )
        add("")
        add("| contestant | target req/s | achieved | p50 | p99 | p99.9 | errors | below knee |")
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for k in order:
            rows = sorted([(r, cell) for kk, r, cell in sweep if kk == k], key=lambda x: x[0] or 0)
            if not rows:
                continue
            p99_0 = rows[0][1].lat("p99") or 0
            for r, cell in rows:
                ok = (
                    cell.median is not None
                    and r is not None
                    and cell.median >= 0.95 * r
                    and cell.errors == 0
                    and (cell.lat("p99") or 1e9) <= 4 * max(p99_0, 0.01)
                )
                add(
                    f"| {labels.get(k, k)} | {r:,.0f} | {_f(cell.median, ',.0f')} |"
                    f" {_f(cell.lat('p50'))} | {_f(cell.lat('p99'))} | {_f(cell.lat('p99.9'))} |"
                    f" {cell.errors} | {'yes' if ok else '**no**'} |"
                )
        add("")
    hol = [k for k in order if _get(c, "hol-base", k)]
    if hol:
        add("## Head-of-line: small requests beside a 100 MiB transfer on the same tunnel")
        add("")
        rate = next(m.rate for m in _get(c, "hol-base", hol[0]).ms)  # type: ignore[union-attr]
        secs = res["config"].get("hol_duration_s")
        add(
            f"oha `-q {rate:.0f} -c10 --latency-correction`, {secs} s per run,"
            " on `/` alone, then while a background"
            " client downloads the 100 MiB file in a loop through the same visitor port (relay"
            " TCP endpoint: same agent session), each download SHA-256 checked. ms, medians."
        )
        add("")
        add("| contestant | p50 alone | p99 alone | p50 beside bulk | p99 beside bulk |"
            f" p99 {X} | p99.9 beside bulk | 100 MiB downloads (bad hash) | errors |")  # fmt: skip
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for k in hol:
            alone, beside = _get(c, "hol-base", k), _get(c, "hol-bulk", k)
            assert alone is not None
            runs = beside.ms if beside else []
            done = sum(m.extra.get("bulk", {}).get("downloads_completed", 0) for m in runs)
            bad = sum(m.extra.get("bulk", {}).get("sha256_mismatches", 0) for m in runs)
            p99_alone = alone.lat("p99")
            p99_beside = beside.lat("p99") if beside else None
            r = p99_beside / p99_alone if p99_beside is not None and p99_alone else None
            add(
                f"| {labels.get(k, k)} | {_f(alone.lat('p50'))} | {_f(p99_alone)} |"
                f" {_f(beside.lat('p50') if beside else None)} | {_f(p99_beside)} |"
                f" {_f(r, '.2f', X)} | {_f(beside.lat('p99.9') if beside else None)} |"
                f" {done} ({bad}) | {alone.errors + (beside.errors if beside else 0)} |"
            )
        add("")
    dl = [m for m in res.get("http_measurements_raw", []) if m.scenario == "download"]
    if dl:
        add("## Downloads through each contestant (SHA-256 checked)")
        add("")
        add("| contestant | 1 MiB | 100 MiB | 100 MiB MB/s (one GET) |")
        add("| --- | --- | --- | ---: |")
        by = {m.contestant: m for m in dl}
        for k in order:
            m = by.get(k)
            if not m:
                continue
            files = m.extra.get("files", {})

            def st(name: str, files: dict[str, Any] = files, err: str | None = m.error) -> str:
                f = files.get(name)
                if not f:
                    return f"failed: {err}"
                return "sha256 ok" if f["match"] else "**SHA-256 MISMATCH**"

            add(
                f"| {labels.get(k, k)} | {st('1m.bin')} | {st('100m.bin')} |"
                f" {files.get('100m.bin', {}).get('mbyte_per_s', '—')} |"
            )
        add("")
    mem = res.get("memory", {})
    if mem:
        add("## Memory (relay edge RSS slopes)")
        add("")
        s, t = mem.get("sessions", {}), mem.get("streams", {})
        add("| what | steps | edge | agent side | kernel TCP mem (sockstat) |")
        add("| --- | --- | ---: | ---: | ---: |")
        if s:
            add(
                f"| idle agent session | 0, {', '.join(map(str, s.get('steps', [])))} |"
                + (
                    f" {s['edge_bytes_per_session'] / 1024:.1f} KiB/session |"
                    f" {_f((s.get('agent_bytes_per_session') or 0) / 1024, '.1f')} KiB/session"
                    " (all Agents in one process) |"
                    f" {_f(s.get('kernel_tcp_mem_bytes_per_session'), '.0f')} B/session |"
                    if s.get("ok")
                    else f" failed: {s.get('error')} | | |"
                )
            )
        if t:
            add(
                f"| idle open stream | 0, {', '.join(map(str, t.get('steps', [])))} |"
                + (
                    f" {t['edge_bytes_per_stream']:.0f} B/stream |"
                    f" {_f(t.get('agent_bytes_per_stream'), '.0f')} B/stream (`relay tcp`) |"
                    f" {_f(t.get('kernel_tcp_mem_bytes_per_stream_4_sockets'), '.0f')} B/stream"
                    " (4 sockets) |"
                    if t.get("ok")
                    else f" failed: {t.get('error')} | | |"
                )
            )
        add("")
        pts = [
            (f"{p.get('sessions', p.get('streams'))}", p["rss"], p.get("sockstat", {}))
            for part in (s, t)
            for p in part.get("points", [])
        ]
        if pts:
            add(
                "Points (RSS MiB edge / agent / load generator; sockstat TCP inuse, mem pages): "
                + "; ".join(
                    f"{n}: {_mib(r.get('edge'))} / {_mib(r.get('agent'))}"
                    f" / {_mib(r.get('memload'))}"
                    f" (tcp {k.get('tcp_inuse', '?')}, mem {k.get('tcp_mem', '?')})"
                    for n, r, k in pts
                )
            )
            add("")
    return L


def cpu_us_per_request(cell: HCell) -> str:
    """CPU-µs of the contestant's processes per request, naming the process(es) charged."""
    cpu, per = cell.cpu_per_1k()
    if cpu is None:
        return "—"
    # CPU-seconds per 1,000 requests x 1,000 = CPU-µs per request.
    if len(per) > 1:
        charged = " + ".join(f"{r} {v * 1e3:.0f}" for r, v in per.items())
    else:
        charged = next(iter(per))
    return f"{cpu * 1e3:.0f} ({charged})"


def floor_paragraph(c: dict[tuple[str, str, float | None], HCell]) -> list[str]:
    """What the CPU column says about the event loop, from the floor and relay's own rows."""
    floor, relay = _get(c, "ka-lat", FLOOR_KEY), _get(c, "ka-lat", "relay")
    floor_cpu = floor.cpu_per_1k()[0] if floor else None
    if floor_cpu is None:
        return []
    text = (
        "CPU-µs/request: CPU time (user + system, from `/proc`) of the contestant's processes"
        " per request at this rate; direct's is the origin nginx's own. The *uvloop floor* row"
        " is a do-nothing HTTP responder on uvloop (`bench/loopfloor.py`): one Python process,"
        " one wake-up per request, no relaying, no TLS. It costs"
        f" {floor_cpu * 1e3:.0f} µs per request: what a uvloop process pays to wake, read and"
        " write once at this rate."
    )
    _, per = relay.cpu_per_1k() if relay else (None, {})
    if per:
        each = " and ".join(
            f"{r} {v * 1e3:.0f} µs ({v / floor_cpu:.1f}{X} the floor)" for r, v in per.items()
        )
        text += (
            f" relay's processes cost {each} per request; each of them reads and writes on both"
            " sides of every request (visitor and link, or link and upstream) where the floor"
            " reads and writes once, and the link's side is framed and encrypted."
        )
    return [text, ""]


def _mib(b: int | None) -> str:
    return "—" if not b else f"{b / 2**20:.1f}"


def _f(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"
