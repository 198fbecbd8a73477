"""Time to first token for SSE responses: how much the full sidecar adds before the first
event reaches the client. (A) plain Envoy, (B) Envoy + the do-nothing sidecar (same
processing modes: asks for the body, answers response headers) and (C) Envoy + the full
sidecar, all in front of the same demo pool streaming chat completions; sequential
requests, interleaved. (C0) is (C) with the streamed-usage filter off on every route: C - C0
is what reading the stream's usage adds to the first token.

    .venv/bin/python perf/bench_ttft.py [--requests 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from bench_gateway import Bench  # noqa: E402
from openloop import percentile  # noqa: E402

from tests.e2e.stack import PoolsThread  # noqa: E402
from tests.support import free_port  # noqa: E402

BODY = json.dumps({"model": "gpt-4o-mini", "stream": True,
                   "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 16})


def first_event_ms(port: int, token: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=BODY,
                 headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    line = resp.readline()
    elapsed = (time.perf_counter() - started) * 1000
    assert resp.status == 200 and line.startswith(b"data: "), (resp.status, line)
    resp.read()
    conn.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="extproc-ttft-"))
    bench = Bench(workdir)
    pools = PoolsThread({"pool-a": bench.pool_a, "pool-b": bench.pool_b}, free_port(), bench.keys)
    try:
        plain_port = bench.plain()
        sidecars, _ = bench.full_sidecar()
        noop = bench.noop_sidecar()
        gateways = {name: bench.gateway(name, addresses, usage).ext_proc
                    for name, addresses, usage in (("B", [noop], True), ("C", sidecars, True),
                                                   ("C0", sidecars, False))}
        targets = {"A plain Envoy": plain_port, "B do-nothing sidecar": gateways["B"],
                   "C full sidecar": gateways["C"],
                   "C0 full sidecar, streamed-usage filter off": gateways["C0"]}
        for port in targets.values():  # warm-up
            for _ in range(20):
                first_event_ms(port, bench.token)
        samples: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(args.requests):
            for name, port in targets.items():
                samples[name].append(first_event_ms(port, bench.token))
    finally:
        pools.stop()
        bench.stop()
    report = {name: {"median_ms": round(statistics.median(v), 3), "p90_ms": percentile(v, 0.9), "p99_ms": percentile(v, 0.99)}
              for name, v in samples.items()}
    a, b, c = report["A plain Envoy"], report["B do-nothing sidecar"], report["C full sidecar"]
    keys = ("median_ms", "p90_ms", "p99_ms")
    report["added_by_grpc_sidecar_floor_ms"] = {k: round(b[k] - a[k], 3) for k in keys}
    report["added_by_policy_ms"] = {k: round(c[k] - b[k], 3) for k in keys}
    c0 = report["C0 full sidecar, streamed-usage filter off"]
    report["added_by_streamed_usage_filter_ms"] = {k: round(c[k] - c0[k], 3) for k in keys}
    print(json.dumps({"requests_each": args.requests, **report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
