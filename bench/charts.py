"""PNG charts of a run (matplotlib; optional: without it the report says charts were skipped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.loopfloor import LoopFloor


def draw(result: dict[str, Any], out: Path, stem: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[str] = []
    labels = {c["key"]: c["label"] for c in result["contestants"]}
    labels.update({k: v["label"] for k, v in result.get("http", {}).get("contestants", {}).items()})
    labels[LoopFloor.key] = LoopFloor.label

    # Bulk: one group per scenario, one bar per contestant (median, min-max error bars).
    bulk = result.get("results", {})
    if any(bulk.values()):  # a run without the bulk phase has its scenarios, empty
        fig, ax = plt.subplots(figsize=(11, 4.5))
        scen = list(bulk)
        keys = [k for k in labels if any(k in bulk[s] for s in scen)]
        w = 0.8 / max(len(keys), 1)
        for i, k in enumerate(keys):
            xs, ys, lo, hi = [], [], [], []
            for j, s in enumerate(scen):
                cell = bulk[s].get(k)
                if not cell or cell.get("median_gbit_per_s") is None:
                    continue
                xs.append(j + i * w)
                ys.append(cell["median_gbit_per_s"])
                lo.append(cell["median_gbit_per_s"] - cell["min_gbit_per_s"])
                hi.append(cell["max_gbit_per_s"] - cell["median_gbit_per_s"])
            ax.bar(xs, ys, w, yerr=[lo, hi], label=labels.get(k, k), capsize=2)
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(scen))], scen)
        ax.set_ylabel("Gbit/s (median, min-max)")
        ax.set_title("Bulk TCP (iperf3) through each contestant")
        ax.legend(fontsize=7, ncol=4)
        p = out / f"{stem}-bulk.png"
        fig.tight_layout()
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(p.name)

    http = result.get("http_summary", {})
    if http.get("ka-max"):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, http_scen, title in (
            (axes[0], "ka-max", "HTTP keep-alive req/s (wrk -c50)"),
            (axes[1], "close-max", "new connections/s (Connection: close, wrk -c20)"),
        ):
            rows = http.get(http_scen, {})
            keys = list(rows)
            ys = [rows[k]["median_rps"] or 0 for k in keys]
            lo = [y - min(rows[k]["values_rps"] or [y]) for k, y in zip(keys, ys, strict=True)]
            hi = [max(rows[k]["values_rps"] or [y]) - y for k, y in zip(keys, ys, strict=True)]
            colors = ["tab:red" if k.startswith("relay") else "tab:blue" for k in keys]
            ax.bar(range(len(keys)), ys, yerr=[lo, hi], color=colors, capsize=3)
            ax.set_xticks(range(len(keys)), [labels.get(k, k) for k in keys], rotation=35,
                          ha="right", fontsize=8)  # fmt: skip
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        p = out / f"{stem}-http.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(p.name)
    if http.get("ka-lat"):
        rows = http["ka-lat"]
        keys = list(rows)
        fig, ax = plt.subplots(figsize=(11, 4.5))
        pcts = ["p50", "p90", "p99", "p99.9"]
        w = 0.8 / len(pcts)
        for i, pc in enumerate(pcts):
            ys = [rows[k]["latency_ms_median"].get(pc) or 0 for k in keys]
            ax.bar([j + i * w for j in range(len(keys))], ys, w, label=pc)
        ax.set_yscale("log")
        ax.set_xticks([j + 0.3 for j in range(len(keys))], [labels.get(k, k) for k in keys],
                      rotation=35, ha="right", fontsize=8)  # fmt: skip
        rate = result.get("http", {}).get("rates", {}).get("common_ka_rate")
        ax.set_title(f"Latency at a fixed {rate:,.0f} req/s (oha, CO-corrected), ms, log scale")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / f"{stem}-latency.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(p.name)
    return written
