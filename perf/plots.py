"""PNG plots of a bench_gateway report: latency percentiles per configuration and load.

    .venv/bin/python perf/plots.py perf/results/DATE/gateway.json   # writes next to it
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

_STYLE = {"A": ("tab:green", "plain Envoy"), "B": ("tab:blue", "do-nothing sidecar, ext_proc"),
          "C": ("tab:red", "full sidecar, ext_proc"), "C-norec": ("tab:pink", "full, records off"),
          "B-authz": ("tab:cyan", "do-nothing sidecar, ext_authz"),
          "C-authz": ("tab:orange", "full sidecar, ext_authz")}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def latency_plots(report: dict, out_dir: Path) -> list[Path]:
    """One figure per workload: p50 and p99 (log scale) against the offered rate."""
    written = []
    for workload, by_cfg in report.get("open_loop", {}).items():
        fig, ax = plt.subplots(figsize=(8, 4.8))
        for cfg, by_rate in by_cfg.items():
            color, label = _STYLE.get(cfg, ("black", cfg))
            points = sorted((r["rate"], r["p50_ms"], r["p99_ms"]) for r in by_rate.values())
            rates = [p[0] for p in points]
            ax.plot(rates, [p[2] for p in points], "o-", color=color, label=f"{label} p99")
            ax.plot(rates, [p[1] for p in points], "x--", color=color, alpha=0.6, label=f"{label} p50")
        ax.set_yscale("log")
        ax.set_xlabel("offered load, requests/s (open loop)")
        ax.set_ylabel("latency, ms (from when each request was due)")
        ax.set_title(f"{workload}: latency at fixed rates ({report['date'][:10]})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        path = out_dir / f"latency-{_slug(workload)}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main() -> int:
    report_path = Path(sys.argv[1])
    for path in latency_plots(json.loads(report_path.read_text()), report_path.parent):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
