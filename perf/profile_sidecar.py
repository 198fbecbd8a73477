"""Where the full sidecar's CPU goes under load: py-spy samples it while wrk drives the
gateway, and the stacks are folded into the top costs (inclusive and self) by function.

    .venv/bin/python perf/profile_sidecar.py [--workload chat|models] [--seconds 10] [--out DIR]

Writes ``profile-<workload>.md`` to ``perf/results/DATE/`` (the table the report quotes).
Same stack as bench_gateway's (C): Envoy, the full sidecar with one worker, Redis, an Envoy
answering with direct_response as the upstream.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from bench_gateway import CHAT_BODY, Bench, cpu_us_per_request, process_cpu_seconds, run_wrk  # noqa: E402

WORKLOADS = {"chat": ("/v1/chat/completions", CHAT_BODY), "models": ("/v1/models", None)}


def _frame(raw: str) -> str:
    """``func (/x/site-packages/pkg/mod.py:12)`` → ``pkg/mod.py:func``."""
    func, _, where = raw.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/extproc/", "/lib/python3"):
        if marker in path:
            path = ("extproc/" if marker == "/extproc/" else "") + path.split(marker, 1)[1]
            break
    return f"{path}:{func}"


def fold(raw_text: str) -> tuple[int, Counter[str], Counter[str]]:
    total, inclusive, own = 0, Counter[str](), Counter[str]()
    for line in raw_text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";") if f]
        for name in set(frames):
            inclusive[name] += n
        if frames:
            own[frames[-1]] += n
    return total, inclusive, own


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="chat")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--config", choices=("B", "C"), default="C",
                        help="C: the full sidecar; B: the do-nothing sidecar (the gRPC floor, to compare)")
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results" / dt.date.today().isoformat())
    args = parser.parse_args()
    path, body = WORKLOADS[args.workload]
    workdir = Path(tempfile.mkdtemp(prefix="extproc-profile-"))
    bench = Bench(workdir)
    raw = workdir / "stacks.txt"
    try:
        bench.start()
        url = bench.urls[args.config] + path
        run_wrk(url, bench.token, body, 2, 8, workdir)  # warm-up
        pid = bench.sidecar_pid[args.config]
        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                                "--duration", str(args.seconds), "--rate", "250", "--format", "raw",
                                "--output", str(raw), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        load: dict[str, float] = {}
        cpu0 = process_cpu_seconds(pid)
        worker = threading.Thread(target=lambda: load.update(
            run_wrk(url, bench.token, body, args.seconds, args.connections, workdir)))
        worker.start()
        _, err = spy.communicate(timeout=args.seconds + 60)
        worker.join()
        cpu_per_request = cpu_us_per_request(pid, cpu0, int(load.get("requests", 1)))
    finally:
        bench.stop()
    if not raw.exists():
        print(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        return 1
    total, inclusive, own = fold(raw.read_text())
    ours = [(k, v) for k, v in inclusive.most_common() if k.startswith("extproc/")][: args.top]
    who = "Full" if args.config == "C" else "Do-nothing"
    lines = [f"# {who} sidecar profile, {args.workload} ({dt.datetime.now(dt.UTC).isoformat(timespec='seconds')})",
             "", f"`perf/profile_sidecar.py --config {args.config} --workload {args.workload} --seconds {args.seconds}`: "
             f"wrk {args.connections} connections on ({args.config}) for {args.seconds} s at {load.get('rps', 0):.0f} req/s, "
             f"{cpu_per_request:.0f} µs sidecar CPU per request; py-spy at 250 Hz, {total} samples "
             "(every thread, idle excluded). Percentages are of all samples.", "",
             "## Top inclusive, our code", "", "| % | function |", "|---|---|"]
    lines += [f"| {v / total * 100:.1f} | `{k}` |" for k, v in ours]
    lines += ["", "## Top self (where the CPU is spent)", "", "| % | function |", "|---|---|"]
    lines += [f"| {v / total * 100:.1f} | `{k}` |" for k, v in own.most_common(args.top)]
    lines += ["", "## Top inclusive, everything", "", "| % | function |", "|---|---|"]
    lines += [f"| {v / total * 100:.1f} | `{k}` |" for k, v in inclusive.most_common(args.top)]
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"profile-{args.workload}{'' if args.config == 'C' else '-' + args.config}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
