"""`--workers N` scaling and balance: the full sidecar with 1 and with N worker processes
behind the same Envoy, side by side in one run; per-worker share from Envoy's per-endpoint
stats (each worker is its own endpoint of the `extproc` cluster).

    .venv/bin/python perf/bench_workers.py [--workers 2] [--seconds 8] [--rounds 2] [--out DIR]

Writes ``workers.json`` and ``workers.md`` to ``perf/results/DATE/``. The balance target: every
worker within ±20% of the mean of requests served, in every round.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from bench_gateway import Bench, run_wrk  # noqa: E402


def per_endpoint_requests(admin: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=5) as r:
        text = r.read().decode()
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^extproc::([\d.:]+)::rq_total::(\d+)$", text, re.M)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results" / dt.date.today().isoformat())
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="extproc-workers-"))
    bench = Bench(workdir)
    results: dict[str, list[float]] = {}
    shares: list[dict[str, int]] = []
    try:
        bench.upstream()
        gateways = {n: bench.gateway(str(n), bench.full_sidecar(f"sidecar-{n}", n)[0])
                    for n in (1, args.workers)}
        for ports in gateways.values():  # warm-up
            run_wrk(f"http://127.0.0.1:{ports.ext_proc}/v1/models", bench.token, None, 1, 4, workdir)
        for _ in range(args.rounds):
            for n, ports in gateways.items():
                before = per_endpoint_requests(ports.admin)
                r = run_wrk(f"http://127.0.0.1:{ports.ext_proc}/v1/models", bench.token, None, args.seconds,
                            args.connections, workdir)
                results.setdefault(f"{n} worker(s)", []).append(r["rps"])
                if n > 1:
                    after = per_endpoint_requests(ports.admin)
                    shares.append({k: after[k] - before.get(k, 0) for k in after})
                print(f"{n} worker(s): {r['rps']:.0f} req/s, p99 {r.get('p99_ms', 0):.1f} ms, non-2xx {r['non_2xx']}",
                      flush=True)
    finally:
        bench.stop()
    summary = {k: round(statistics.median(v)) for k, v in results.items()}
    # Each worker's requests against the mean of the round: the target is within ±20%.
    spread = [round(max(abs(n / (sum(s.values()) / len(s)) - 1) for n in s.values()), 3) for s in shares]
    report = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "workers": args.workers,
              "workload": "GET /v1/models, ext_proc, wrk closed loop", "seconds": args.seconds,
              "connections": args.connections, "rps_median": summary, "per_worker_requests": shares,
              "max_deviation_from_mean": spread, "within_20_percent": all(x <= 0.2 for x in spread)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workers.json").write_text(json.dumps(report, indent=2))
    lines = [f"# `--workers {args.workers}` scaling and balance, {report['date']}", "",
             f"`perf/bench_workers.py --workers {args.workers} --seconds {args.seconds} --rounds {args.rounds}`: "
             f"the full sidecar with 1 and with {args.workers} worker processes behind one Envoy, "
             f"{report['workload']}, {args.connections} connections; medians of {args.rounds} interleaved rounds.",
             "", "| sidecar | req/s |", "|---|---|", *(f"| {k} | {v} |" for k, v in summary.items()), "",
             "Requests each worker served (Envoy's per-endpoint `rq_total`), per round:", "",
             "| round | per worker | largest deviation from the mean |", "|---|---|---|",
             *(f"| {i + 1} | {', '.join(str(n) for n in s.values())} | {d:.1%} |"
               for i, (s, d) in enumerate(zip(shares, spread, strict=True))), "",
             f"Balance target (each worker within ±20% of the mean): "
             f"{'met' if report['within_20_percent'] else 'MISSED'}.", ""]
    (args.out / "workers.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
