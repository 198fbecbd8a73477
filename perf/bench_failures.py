"""Failure scenarios under load, each with its invariants checked and printed.

The whole gateway (real Envoy, the full sidecar with two workers, real redis-server, the demo
issuer and demo model pools) takes open-loop load (`openloop.py`: fixed rate, latency from
when each request was due) while one fault is injected, then removed:

- ``redis-killed``: Redis is killed and restarted on the same port. Plan ``pro`` falls back
  to the local limiter: every request is still answered 200, marked degraded, and marking stops
  soon after Redis is back; no concurrency lease is left behind.
- ``redis-paused``: the same with SIGSTOP / SIGCONT (a Redis that hangs instead of refusing).
- ``sidecar-killed``: one of the two sidecar workers is SIGKILLed. Envoy fails closed (503)
  for what was on it; the supervisor restarts it; every request after recovery is answered.
- ``token-flood``: distinct forged tokens at 1,450 req/s from another address (127.0.0.2, a
  process of its own) beside the valid traffic: every forged one is a 401 from the sidecar or a
  429 from Envoy's auth guard, under 5% reach the sidecar, every valid one is a 200, and valid
  traffic's p50 during the flood stays within 2x of before. ``token-flood-unguarded``: the
  same with the guard's threshold out of reach, for comparison.
- ``tenant-exhaustion``: one tenant (plan ``free``) runs through its limits (429s) while
  another keeps its admissions and its latency.
- ``routes-updates``: a new routing table version is published every second: zero errors.
- ``client-aborts``: ten streamed requests a second whose clients leave after the first token:
  no lease stays taken, and that tenant's usage records add up to its budget counter.

For each: requests sent, outcomes by status per phase (before, during, after), latency p50 /
p99 per phase, recovery time where it applies, what was lost (leases left, unanswered
requests), and a PNG timeline (latency and status codes per 250 ms). Results go to
``perf/results/DATE/failures/``.

    .venv/bin/python perf/bench_failures.py [--rate 40] [--only redis-killed,...]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import openloop  # noqa: E402
from bench_gateway import process_cpu_seconds  # noqa: E402
from redis import Redis  # noqa: E402

from extproc.devstack.envoy_config import AuthGuard  # noqa: E402
from extproc.ledger.records import UsageRecord  # noqa: E402
from extproc.ledger.spec import USAGE_STREAM  # noqa: E402
from extproc.quota.plan import tenant_tag  # noqa: E402
from tests.e2e.stack import Stack, start_stack  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

BEFORE_S, FAULT_S, AFTER_S = 3.0, 4.0, 5.0
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi."}],
                   "max_tokens": 16}).encode()


def phases(samples: list[tuple[float, float, int]], fault_at: float, fault_end: float) -> dict[str, Any]:
    """Outcomes and latency before, during and after the fault (times: seconds after load start)."""
    out: dict[str, Any] = {}
    for name, lo, hi in (("before", 0.0, fault_at), ("during", fault_at, fault_end),
                         ("after", fault_end, float("inf"))):
        part = [s for s in samples if lo <= s[0] < hi]
        statuses: dict[str, int] = {}
        for _, _, status in part:
            key = "error" if status < 0 else str(status)
            statuses[key] = statuses.get(key, 0) + 1
        lat = [s[1] for s in part if s[2] >= 0]
        out[name] = {"requests": len(part), "statuses": statuses, "p50_ms": openloop.percentile(lat, 0.5, 2),
                     "p99_ms": openloop.percentile(lat, 0.99, 2)}
    return out


def timeline(path: Path, title: str, series: dict[str, openloop.Result], marks: dict[str, float]) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for label, result in series.items():
        buckets: dict[int, list[tuple[float, int]]] = {}
        for due, latency, status in result.samples:
            buckets.setdefault(int(due * 4), []).append((latency, status))
        xs = sorted(buckets)
        top.plot([x / 4 for x in xs], [openloop.percentile([lat for lat, st in buckets[x] if st >= 0], 0.99)
                                      for x in xs], label=f"{label} p99")
        for cls, style in (("2xx", "-"), ("4xx", "--"), ("5xx/error", ":")):
            counts = [sum(1 for _, st in buckets[x] if _status_class(st) == cls) * 4 for x in xs]
            if any(counts):
                bottom.plot([x / 4 for x in xs], counts, style, label=f"{label} {cls}")
    for name, at in marks.items():
        for ax in (top, bottom):
            ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
        top.annotate(name, (at, 1), xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                     va="top", ha="right")
    top.set_yscale("log")
    top.set_ylabel("latency p99, ms")
    bottom.set_ylabel("answers/s")
    bottom.set_xlabel("seconds since load started")
    top.set_title(title)
    top.legend(fontsize=7)
    bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _status_class(status: int) -> str:
    if status < 0 or status >= 500:
        return "5xx/error"
    return "4xx" if status >= 400 else "2xx"


class Run:
    def __init__(self, stack: Stack, rate: float, guarded: bool = True) -> None:
        self.stack, self.rate, self.guarded = stack, rate, guarded
        self.url = f"http://127.0.0.1:{stack.ports.ext_proc}/v1/chat/completions"

    def headers(self, tenant: str = "acme", plan: str = "pro", token: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {token or self.stack.token(tenant=tenant, plan=plan)}"}

    async def load(self, headers: dict[str, str], rate: float | None = None,
                   flag: str = "") -> openloop.Result:
        return await openloop.run(self.url, rate or self.rate, BEFORE_S + FAULT_S + AFTER_S, headers, CHAT,
                                  flag_header=flag)

    async def with_fault(self, loads: list[Awaitable[openloop.Result]], inject: Callable[[], Any],
                         remove: Callable[[], Any]) -> tuple[list[openloop.Result], float, float]:
        """Start the loads, inject the fault after BEFORE_S, remove it FAULT_S later. ``inject``
        and ``remove`` run on the event loop; blocking ones wrap themselves in ``_blocking``."""
        tasks = [asyncio.ensure_future(load) for load in loads]
        started = time.monotonic()
        await asyncio.sleep(BEFORE_S)
        fault_at = time.monotonic()
        if asyncio.iscoroutine(step := inject()):
            await step
        await asyncio.sleep(max(0.0, FAULT_S - (time.monotonic() - fault_at)))
        fault_end = time.monotonic()
        if asyncio.iscoroutine(step := remove()):
            await step
        results = list(await asyncio.gather(*tasks))
        base = results[0].started_at or started
        return results, fault_at - base, fault_end - base

    def leases(self, tenant: str, policy: str) -> int:
        r = Redis.from_url(self.stack.redis.url)  # type: ignore[union-attr]
        try:
            return int(r.zcard(f"xq:{{{tenant_tag(tenant)}}}:c:{policy}"))
        finally:
            r.close()


def _blocking(fn: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    return lambda: asyncio.to_thread(fn)


def _check(invariants: dict[str, bool]) -> bool:
    return all(invariants.values())


async def redis_down(run: Run, kind: str) -> dict[str, Any]:
    stack = run.stack
    redis = stack.redis
    assert redis is not None

    def inject() -> None:
        if kind == "killed":
            redis.kill()
        else:
            redis.pause()

    def remove() -> None:
        if kind == "killed":
            stack.redis = RedisServer(redis.workdir, redis.port).start()
        else:
            redis.resume()

    (result,), fault_at, fault_end = await run.with_fault(
        [run.load(run.headers("acme-" + kind), flag="x-extproc-degraded")], _blocking(inject), _blocking(remove))
    await asyncio.sleep(1.5)  # settlements of the last requests
    by_phase = phases(result.samples, fault_at, fault_end)
    late_degraded = [t for t in result.flagged if t >= fault_end]
    recovery = round(max(late_degraded) - fault_end, 2) if late_degraded else 0.0
    non_2xx = sum(n for ph in by_phase.values() for s, n in ph["statuses"].items() if not s.startswith("2"))
    leases = run.leases("acme-" + kind, "pro")
    invariants = {
        "every request answered 200 (plan pro fails over to the local limiter)": non_2xx == 0,
        "answers during the outage are marked degraded": any(fault_at <= t < fault_end for t in result.flagged),
        "degraded marking stops within 5 s of Redis being back": recovery < 5.0,
        "no concurrency lease left behind": leases == 0,
        "nothing unanswered": result.unfinished == 0,
    }
    return {"phases": by_phase, "recovery_s": recovery, "leases_left": leases, "degraded_answers":
            len(result.flagged), "invariants": invariants, "_series": {"acme (pro)": result},
            "_marks": {f"redis {kind}": fault_at, "redis back": fault_end}}


async def sidecar_killed(run: Run) -> dict[str, Any]:
    worker = _worker_pids(run.stack)[0]
    (result,), fault_at, fault_end = await run.with_fault(
        [run.load(run.headers("acme-kill"))], lambda: os.kill(worker, signal.SIGKILL), lambda: None)
    by_phase = phases(result.samples, fault_at, fault_end)
    failures = [t for t, _, st in result.samples if (st < 0 or st >= 500) and t >= fault_at]
    recovery = round(max(failures) - fault_at, 2) if failures else 0.0
    after_bad = sum(n for s, n in by_phase["after"]["statuses"].items() if not s.startswith("2"))
    invariants = {
        "failures only as 503 (fail closed), never an unchecked request": all(
            s in ("200", "503") for ph in by_phase.values() for s in ph["statuses"]),
        "every request after recovery answered 200": after_bad == 0,
        "the worker was restarted": len(_worker_pids(run.stack)) == 2 and worker not in _worker_pids(run.stack),
        "nothing unanswered": result.unfinished == 0,
    }
    return {"phases": by_phase, "recovery_s": recovery, "failed_requests": len(failures),
            "invariants": invariants, "_series": {"acme (pro)": result}, "_marks": {"worker killed": fault_at}}


def _stack_cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by Envoy and by the sidecar (its supervisor and workers)."""
    supervisor = stack.children[0].proc.pid
    return {"envoy": process_cpu_seconds(stack.children[1].proc.pid),
            "sidecar": sum(process_cpu_seconds(pid) for pid in (supervisor, *_worker_pids(stack)))}


def _worker_pids(stack: Stack) -> list[int]:
    supervisor = stack.children[0].proc.pid
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(supervisor)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


#: The outside test pass: 3,000 distinct forged tokens at 64 concurrency, about 1,450 req/s.
FLOOD_RATE = 1450
FLOOD_SOURCE = "127.0.0.2"


async def token_flood(run: Run) -> dict[str, Any]:
    """Distinct forged tokens (valid header and claims, a signature that never verifies) at
    FLOOD_RATE from another address, from a process of their own, beside valid traffic."""
    head, payload, _ = run.stack.token(tenant="mallory").split(".")
    valid = run.load(run.headers("acme-flood"))

    async def flood() -> dict[str, Any]:
        await asyncio.sleep(BEFORE_S)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "perf" / "openloop.py"), run.url, "--rate", str(FLOOD_RATE),
            "--seconds", str(FAULT_S), "--body", CHAT.decode(), "--connections", "64",
            "--source", FLOOD_SOURCE, "--forge-token", f"{head}.{payload}", stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        summary: dict[str, Any] = json.loads(out)
        return summary

    cpu_before = _stack_cpu_seconds(run.stack)
    (good, flood_summary), fault_at, fault_end = await run.with_fault([valid, flood()], lambda: None,
                                                                      lambda: None)
    cpu = {name: round(after - cpu_before[name], 2) for name, after in _stack_cpu_seconds(run.stack).items()}
    by_phase = phases(good.samples, fault_at, fault_end)
    statuses = dict(flood_summary["statuses"])
    if flood_summary["errors"]:
        statuses["error"] = flood_summary["errors"]
    guarded = run.guarded
    before, during = by_phase["before"]["p50_ms"], by_phase["during"]["p50_ms"]
    invariants = {
        "every forged token answered 401 (sidecar) or 429 (auth guard)": set(statuses) <= {"401", "429"},
        "every valid request answered 200": all(set(ph["statuses"]) <= {"200"} for ph in by_phase.values()),
        "nothing unanswered": good.unfinished == 0 and flood_summary["unfinished"] == 0,
    }
    if guarded:
        invariants["the guard answers the flood in Envoy (under 5% reaches the sidecar)"] = (
            statuses.get("401", 0) < 0.05 * flood_summary["sent"])
        invariants["valid traffic keeps its latency (p50 during the flood within 2x of before)"] = (
            during <= 2 * before)
    return {"phases": by_phase, "auth_guard": "on" if guarded else "off (thresholds out of reach)",
            "flood_rate": FLOOD_RATE, "flood_sent": flood_summary["sent"], "flood_statuses": statuses,
            "flood_p50_ms": flood_summary["p50_ms"], "valid_p50_ratio_during_vs_before": round(during / before, 2),
            # CPU seconds over the whole run (12 s): where the two cores went.
            "cpu_s": {**cpu, "flood generator": flood_summary["generator_cpu_s"]},
            "invariants": invariants, "_series": {"valid": good},
            "_marks": {"flood": fault_at, "flood ends": fault_end}}


async def tenant_exhaustion(run: Run) -> dict[str, Any]:
    calm = run.load(run.headers("acme-calm"))

    async def hog() -> openloop.Result:
        await asyncio.sleep(BEFORE_S)
        return await openloop.run(run.url, run.rate, FAULT_S, run.headers("globex-hog", plan="free"), CHAT)

    (quiet, greedy), fault_at, fault_end = await run.with_fault([calm, hog()], lambda: None, lambda: None)
    by_phase = phases(quiet.samples, fault_at, fault_end)
    invariants = {
        "the other tenant keeps every admission": all(set(ph["statuses"]) <= {"200"} for ph in by_phase.values()),
        "the greedy tenant is refused with 429 once over its limits": greedy.statuses.get(429, 0) > 0
        and set(greedy.statuses) <= {200, 429},
        "nothing unanswered": quiet.unfinished == 0 and greedy.unfinished == 0,
    }
    return {"phases": by_phase, "greedy": {str(k): v for k, v in sorted(greedy.statuses.items())},
            "invariants": invariants, "_series": {"acme (pro)": quiet, "globex (free)": greedy},
            "_marks": {"greedy tenant starts": fault_at, "stops": fault_end}}


async def routes_updates(run: Run) -> dict[str, Any]:
    stack = run.stack
    tables = []
    for i, pool in enumerate(("pool-a", "pool-b")):
        path = stack.dir / f"table-{i}.yaml"
        path.write_text(f"routes:\n  - {{id: all-{i}, class: inference, pool: {pool}}}\n"
                        "  - {id: other, pool: pool-a}\n")
        tables.append(path)
    published: list[int] = []
    stop = asyncio.Event()

    async def publish() -> None:
        i = 0
        while not stop.is_set():
            code = await asyncio.to_thread(subprocess.call, [
                sys.executable, "-m", "extproc", "routes", "apply", str(tables[i % 2]), "--reason",
                f"bench {i}", "--config", str(stack.config_path), "--redis-url", stack.redis.url],  # type: ignore[union-attr]
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            published.append(code)
            i += 1
            await asyncio.sleep(1.0)

    publisher: list[asyncio.Task[None]] = []

    def start_publishing() -> None:
        publisher.append(asyncio.ensure_future(publish()))

    async def stop_publishing() -> None:
        stop.set()
        await asyncio.gather(*publisher)

    (result,), fault_at, fault_end = await run.with_fault([run.load(run.headers("acme-routes"))],
                                                          start_publishing, stop_publishing)
    await asyncio.sleep(1.2)
    by_phase = phases(result.samples, fault_at, fault_end)
    invariants = {
        "zero failed requests while the table changes": all(
            set(ph["statuses"]) <= {"200"} for ph in by_phase.values()),
        "every published version was accepted": bool(published) and all(code == 0 for code in published),
        "nothing unanswered": result.unfinished == 0,
    }
    return {"phases": by_phase, "versions_published": len(published), "invariants": invariants,
            "_series": {"acme (pro)": result}, "_marks": {"updates start": fault_at, "stop": fault_end}}


async def _abort_after_first_chunk(port: int, token: str, hold: str) -> str:
    """A streamed chat request whose client leaves after the first event."""
    body = json.dumps({"model": "gpt-4o", "stream": True, "max_tokens": 400,
                       "messages": [{"role": "user", "content": "Tell me a long story."}]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
                     + f"authorization: Bearer {token}\r\nx-demo-hold: {hold}\r\n".encode()
                     + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        status = (await reader.readline()).split()[1].decode()
        while not (line := await reader.readline()).startswith(b"data:"):
            if not line:
                break
        return status
    finally:
        writer.close()


async def client_aborts(run: Run) -> dict[str, Any]:
    """Streamed requests whose clients leave after the first token, beside normal traffic: no
    lease may stay taken, and the aborting tenant's usage records must add up to its counter."""
    tenant = "acme-aborts"
    token = run.stack.token(tenant=tenant, plan="pro")
    statuses: dict[str, int] = {}

    async def aborts() -> openloop.Result:
        await asyncio.sleep(BEFORE_S)
        tasks = []
        for i in range(int(FAULT_S * 10)):  # 10 aborted streams per second
            tasks.append(asyncio.ensure_future(_abort_after_first_chunk(run.stack.ports.ext_proc, token,
                                                                        f"abort-{i}")))
            await asyncio.sleep(0.1)
        for status in await asyncio.gather(*tasks, return_exceptions=True):
            key = status if isinstance(status, str) else "error"
            statuses[key] = statuses.get(key, 0) + 1
        return openloop.Result(10, FAULT_S)

    (result, _), fault_at, fault_end = await run.with_fault([run.load(run.headers("acme-steady")), aborts()],
                                                            lambda: None, lambda: None)
    await asyncio.sleep(7.0)  # the deciding streams' 5 s grace, then the records' flush
    by_phase = phases(result.samples, fault_at, fault_end)
    r = Redis.from_url(run.stack.redis.url)  # type: ignore[union-attr]
    try:
        counter = int(r.hget(f"xq:{{{tenant_tag(tenant)}}}:b:pro", "u") or 0)
        records = [UsageRecord.FromString(f[b"r"]) for _, f in r.xrange(USAGE_STREAM) if f[b"t"] == tenant.encode()]
    finally:
        r.close()
    charged = sum(rec.charged_tokens for rec in records)
    invariants = {
        "every aborted stream had started (200)": set(statuses) == {"200"},
        "no concurrency lease left behind": run.leases(tenant, "pro") == 0,
        "one usage record per aborted stream": len({rec.decision_id for rec in records}) == sum(statuses.values()),
        "the records add up to what the budget counter charged": charged == counter and counter > 0,
        "steady traffic answered 200": all(set(ph["statuses"]) <= {"200"} for ph in by_phase.values()),
    }
    return {"phases": by_phase, "aborted": statuses, "budget_counter": counter, "records_charged": charged,
            "records": len(records), "invariants": invariants, "_series": {"steady (pro)": result},
            "_marks": {"aborts start": fault_at, "stop": fault_end}}


SCENARIOS: dict[str, Callable[[Run], Awaitable[dict[str, Any]]]] = {
    "redis-killed": lambda run: redis_down(run, "killed"),
    "redis-paused": lambda run: redis_down(run, "paused"),
    "sidecar-killed": sidecar_killed,
    "token-flood": token_flood,
    "token-flood-unguarded": token_flood,
    "tenant-exhaustion": tenant_exhaustion,
    "routes-updates": routes_updates,
    "client-aborts": client_aborts,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=40,
                        help="valid requests per second (plan pro allows 600 at once + 10/s: 480 in 12 s fit)")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "perf" / "results" / dt.date.today().isoformat() / "failures")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              "rate": args.rate, "seconds": {"before": BEFORE_S, "fault": FAULT_S,
                                                             "after": AFTER_S}, "scenarios": {}}
    ok = True
    for name in names:
        tmp = Path(tempfile.mkdtemp(prefix=f"extproc-failure-{name}-"))
        # Production's Redis timeout (50 ms), two workers (one can be killed). The unguarded
        # flood is the same scenario with the auth guard's threshold out of reach (the A/B).
        guarded = name != "token-flood-unguarded"
        envoy = {} if guarded else {"auth_guard": AuthGuard(failures=10**9)}
        stack = start_stack(tmp, workers=2, sidecar_args=("--redis-timeout-ms", "50"), envoy_settings=envoy)
        try:
            outcome = asyncio.run(SCENARIOS[name](Run(stack, args.rate, guarded)))
        finally:
            stack.stop()
        series, marks = outcome.pop("_series"), outcome.pop("_marks")
        png = args.out / f"{name}.png"
        timeline(png, f"{name} at {args.rate:g} req/s", series, marks)
        outcome["sent"] = {label: r.sent for label, r in series.items()}
        outcome["invariants_hold"] = _check(outcome["invariants"])
        ok &= outcome["invariants_hold"]
        report["scenarios"][name] = outcome
        print(f"\n== {name}: {'OK' if outcome['invariants_hold'] else 'INVARIANT BROKEN'}")
        for text, held in outcome["invariants"].items():
            print(f"   [{'x' if held else ' '}] {text}")
        for phase, data in outcome["phases"].items():
            print(f"   {phase:<7} {data['requests']:>5} requests  {data['statuses']}  "
                  f"p50 {data['p50_ms']} ms  p99 {data['p99_ms']} ms")
        extra = {k: v for k, v in outcome.items() if k not in ("phases", "invariants", "invariants_hold")}
        print(f"   {json.dumps(extra)}", flush=True)
    (args.out / "failures.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "failures.md").write_text(markdown(report))
    return 0 if ok else 1


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Failure scenarios under load, {report['date']}", "",
             f"Open-loop load at {report['rate']:g} valid requests/s (chat POST, ext_proc, two sidecar "
             f"workers); {report['seconds']['before']:g} s before the fault, {report['seconds']['fault']:g} s "
             f"of fault, {report['seconds']['after']:g} s after. `perf/bench_failures.py`.", ""]
    for name, outcome in report["scenarios"].items():
        lines += [f"## {name}: {'invariants hold' if outcome['invariants_hold'] else 'INVARIANT BROKEN'}", "",
                  f"![{name}]({name}.png)", ""]
        lines += [f"- [{'x' if held else ' '}] {text}" for text, held in outcome["invariants"].items()]
        lines += ["", "| phase | requests | statuses | p50 ms | p99 ms |", "|---|---|---|---|---|"]
        for phase, data in outcome["phases"].items():
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(data["statuses"].items()))
            lines.append(f"| {phase} | {data['requests']} | {statuses} | {data['p50_ms']} | {data['p99_ms']} |")
        extra = {k: v for k, v in outcome.items() if k not in ("phases", "invariants", "invariants_hold")}
        lines += ["", f"Other facts: `{json.dumps(extra)}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
