"""Side-by-side load benchmark of the real stack, in one run on this machine.

(A) plain Envoy, no sidecar; (B) Envoy + the do-nothing sidecar (same grpc.aio stack and
processing modes, no policy); (C) Envoy + the full sidecar (cached token verification,
classification, one Redis quota admission, routing, settlement), over ext_proc and ext_authz.
The upstream pools are an Envoy answering with direct_response, so the gateway is what is
measured. Runs are interleaved (A B C, A B C, ...) and medians reported, with ratios.

    .venv/bin/python perf/bench_gateway.py [--quick] [--out perf/results/DATE]

Load: wrk, closed loop, for the maximum throughput (its latency percentiles suffer from
coordinated omission: a slow answer delays the requests behind it, which then are not sent);
then ``openloop.py`` at fixed rates (25/50/75% of B's maximum) for latency measured from when
each request was due. Sidecar CPU per request comes from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

import openloop  # noqa: E402
import plots as plots_module  # noqa: E402
import yaml  # noqa: E402

from extproc.devstack.demo import DEMO_CONFIG  # noqa: E402
from extproc.devstack.envoy_config import EnvoyPorts, render  # noqa: E402
from extproc.devstack.keys import DEFAULT_ISSUER, KeyStore, mint_token  # noqa: E402
from tests.e2e.stack import PoolsThread  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.support import Child, envoy_binary, free_port, free_port_block, wait_http  # noqa: E402

BENCH_QUOTA = """
quotas:
  policies:
    - name: bench
      match: {plan: bench}
      requests: {limit: 100000000, per: second}
      budget: {limit: 1000000000000, period: day}
      concurrency: {limit: 100000}
"""
CHAT_BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi."}],
                        "max_tokens": 16})


def _template(name: str, **values: object) -> str:
    return string.Template((ROOT / "envoy" / name).read_text()).substitute(values)


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> float:
    """CPU time of every thread of the process, in ns precision (``/proc/PID/task/*/schedstat``;
    the 10 ms clock ticks ``process_cpu_seconds`` reads are too coarse for a few hundred requests)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def cpu_us_per_request(pid: int, cpu_before: float, requests: int) -> float:
    """The process's CPU time since ``cpu_before`` (``process_cpu_seconds``), per request, in µs."""
    return (process_cpu_seconds(pid) - cpu_before) / max(requests, 1) * 1e6


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


def run_wrk(url: str, token: str | None, body: str | None, seconds: int, connections: int,
            workdir: Path) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if token:
        cmd += ["-H", f"authorization: Bearer {token}"]
    if body is not None:
        script = workdir / "post.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                          'wrk.headers["content-type"] = "application/json"\n')
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    return {"rps": rps, "requests": total, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            **{f"p{k}_ms": _ms(v) for k, v in pct.items()}}


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.children: list[Child] = []
        self.redis = RedisServer(workdir / "redis").start()
        self.pool_a, self.pool_b = free_port(), free_port()
        self.issuer_port = free_port()
        self.keys = KeyStore(workdir / "keys")
        self.keys.published()
        self.issuer = f"http://127.0.0.1:{self.issuer_port}"
        self.issuer_thread = PoolsThread({}, self.issuer_port, self.keys)
        self.token = mint_token(self.keys.current(), "bench-co", "bench", ("inference",), 3600 * 4,
                                issuer=self.issuer)
        self.urls: dict[str, str] = {}
        self.sidecar_pid: dict[str, int] = {}
        #: The Envoy that serves each configuration (the -authz ones share their gateway's).
        self.envoy_pid: dict[str, int] = {}

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, cmd, self.dir, env)
        self.children.append(child)
        return child

    def _envoy(self, name: str, text: str, admin: int) -> int:
        """Start an Envoy; its pid."""
        path = self.dir / f"{name}.yaml"
        path.write_text(text)
        child = self._spawn(name, [envoy_binary(), "-c", str(path), "--log-level", "error",
                                   "--base-id", str(admin), "--concurrency", "1"])
        wait_http(f"http://127.0.0.1:{admin}/ready", proc=child.proc)
        return child.proc.pid

    def start(self, records_ab: bool = False, client_ab: bool = False, guard_ab: bool = False) -> None:
        """``records_ab``: also (C-norec), the full sidecar with usage and decision records off.
        ``client_ab``: also (C-redispy), the full sidecar on redis-py instead of the lean client.
        ``guard_ab``: also (C-noguard), the same full sidecar behind an Envoy without the auth
        guard's two filters (envoy/README.md "Auth guard")."""
        self.upstream()
        self.urls["A"] = f"http://127.0.0.1:{self.plain()}"
        self._gateway("B", self.noop_sidecar())
        # (C) the full sidecar
        full, self.sidecar_pid["C"] = self.full_sidecar()
        self._gateway("C", full[0])
        if guard_ab:
            self.sidecar_pid["C-noguard"] = self.sidecar_pid["C"]
            self._gateway("C-noguard", full[0], auth_guard=False)
        if records_ab:
            full, self.sidecar_pid["C-norec"] = self.full_sidecar("sidecar-norec", records=False)
            self._gateway("C-norec", full[0])
        if client_ab:
            full, self.sidecar_pid["C-redispy"] = self.full_sidecar(
                "sidecar-redispy", env={"EXTPROC_QUOTA_CLIENT": "redis-py"})
            self._gateway("C-redispy", full[0])

    def upstream(self) -> None:
        """The model pools: an Envoy answering with direct_response on pool_a and pool_b."""
        admin = free_port()
        self._envoy("fake-upstream", _template("fake-upstream.yaml", ADMIN_PORT=admin,
                                                POOL_A_PORT=self.pool_a, POOL_B_PORT=self.pool_b), admin)

    def plain(self) -> int:
        """(A) plain Envoy in front of pool_a; its port."""
        port, admin = free_port(), free_port()
        self.envoy_pid["A"] = self._envoy("plain", _template("plain.yaml", ADMIN_PORT=admin, LISTEN_PORT=port,
                                                             POOL_A_PORT=self.pool_a), admin)
        return port

    def noop_sidecar(self) -> str:
        """(B) the do-nothing sidecar; its address."""
        address = f"127.0.0.1:{free_port()}"
        child = self._spawn("noop-sidecar", [sys.executable, "-m", "extproc", "noop-sidecar", "--listen", address])
        self.sidecar_pid["B"] = child.proc.pid
        return address

    def policy(self, records: bool = True) -> Path:
        """The bench policy: the demo's, with this run's issuer and a quota no load exhausts."""
        policy = self.dir / ("policy.yaml" if records else "policy-norec.yaml")
        if not policy.exists():
            policy.write_text(DEMO_CONFIG.read_text().replace(DEFAULT_ISSUER, self.issuer)
                              .split("\nquotas:")[0] + BENCH_QUOTA
                              + ("" if records else "records: {enabled: false}\n"))
        return policy

    def full_sidecar(self, name: str = "sidecar", workers: int = 1, records: bool = True,
                     env: dict[str, str] | None = None) -> tuple[list[str], int]:
        """Start the full sidecar with the bench policy (records at their production defaults,
        or off); its worker addresses and its pid."""
        policy = self.policy(records)
        base, admin = free_port_block(workers), free_port_block(workers)
        child = self._spawn(name, env=env, cmd=[sys.executable, "-m", "extproc", "serve", "--config", str(policy),
                                   "--listen", f"127.0.0.1:{base}", "--admin", f"127.0.0.1:{admin}",
                                   "--workers", str(workers), "--redis-url", self.redis.url,
                                   "--log-level", "warning"])
        for i in range(workers):
            wait_http(f"http://127.0.0.1:{admin + i}/readyz", proc=child.proc)
        return [f"127.0.0.1:{base + i}" for i in range(workers)], child.proc.pid

    def gateway(self, name: str, sidecars: list[str], usage_filter: bool = True,
                auth_guard: bool = True) -> EnvoyPorts:
        """An Envoy gateway in front of these sidecar endpoints and the bench pools.
        ``usage_filter=False``: the streamed-usage filter stays off on every route;
        ``auth_guard=False``: the auth guard's filters are left out (A/B runs)."""
        ports = EnvoyPorts(ext_proc=free_port(), ext_authz=free_port(), admin=free_port(),
                           pool_a=self.pool_a, pool_b=self.pool_b, ops=free_port())
        config = render(sidecars, ports, access_log_path="/dev/null", trace_sampling_percent=0)
        if not usage_filter:
            config = config.replace("{name: x-extproc-usage, present_match: true}",
                                    "{name: x-bench-usage-filter-off, present_match: true}")
        if not auth_guard:
            config = _without_auth_guard(config)
        self.envoy_pid[name] = self._envoy(f"gateway-{name}", config, ports.admin)
        return ports

    def _gateway(self, name: str, sidecar: str, auth_guard: bool = True) -> None:
        ports = self.gateway(name, [sidecar], auth_guard=auth_guard)
        self.envoy_pid[f"{name}-authz"] = self.envoy_pid[name]
        self.urls[name] = f"http://127.0.0.1:{ports.ext_proc}"
        self.urls[f"{name}-authz"] = f"http://127.0.0.1:{ports.ext_authz}"

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.issuer_thread.stop()
        self.redis.stop()


def _without_auth_guard(config: str) -> str:
    """The rendered gateway config without the auth guard's filters on any listener."""
    doc = yaml.safe_load(config)
    for listener in doc["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                hcm = network_filter["typed_config"]
                if "http_filters" in hcm:
                    hcm["http_filters"] = [f for f in hcm["http_filters"]
                                           if not f["name"].startswith("extproc.auth_guard")]
    return yaml.safe_dump(doc, sort_keys=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s runs, 2 rounds")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results" / dt.date.today().isoformat())
    parser.add_argument("--rates", default="0.25,0.5,0.75",
                        help="open-loop latency at these fractions of B's maximum throughput ('' to skip)")
    parser.add_argument("--latency-seconds", type=float, default=10, help="length of each open-loop run")
    parser.add_argument("--client-ab", action="store_true",
                        help="also run C-redispy (the quota store on redis-py), ext_proc only")
    parser.add_argument("--records-ab", action="store_true",
                        help="also run C-norec (records off), ext_proc only: what records cost")
    parser.add_argument("--guard-ab", action="store_true",
                        help="also run C-noguard (no auth guard in Envoy), ext_proc only: what the guard costs")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.latency_seconds = 3, 2, 3
    if not shutil.which("wrk"):
        print("wrk is not installed: `make bench` installs it (Debian package wrk)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="extproc-bench-"))
    bench = Bench(workdir)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        bench.start(records_ab=args.records_ab, client_ab=args.client_ab, guard_ab=args.guard_ab)
        workloads = {"GET /v1/models": ("/v1/models", None), "POST /v1/chat/completions": (
            "/v1/chat/completions", CHAT_BODY)}
        configs = ["A", "B", "C", *(["C-noguard"] if args.guard_ab else []),
                   *(["C-norec"] if args.records_ab else []),
                   *(["C-redispy"] if args.client_ab else []), "B-authz", "C-authz"]
        for path, body in workloads.values():  # warm-up: caches, connections, JWKS
            for cfg in configs:
                run_wrk(bench.urls[cfg] + path, bench.token, body, 1, 4, workdir)
        for rnd in range(args.rounds):
            for name, (path, body) in workloads.items():
                for cfg in configs:
                    pid = bench.sidecar_pid.get(cfg.removesuffix("-authz"))
                    cpu0 = process_cpu_seconds(pid) if pid else 0.0
                    envoy = bench.envoy_pid[cfg]
                    envoy0 = process_cpu_seconds(envoy)
                    r = run_wrk(bench.urls[cfg] + path, bench.token, body, args.seconds, args.connections,
                                workdir)
                    r["envoy_cpu_us_per_request"] = cpu_us_per_request(envoy, envoy0, r["requests"])
                    if pid:
                        r["sidecar_cpu_us_per_request"] = cpu_us_per_request(pid, cpu0, r["requests"])
                        r["sidecar_rss_mb"] = _rss_mb(pid)
                    results.setdefault(name, {}).setdefault(cfg, []).append(r)
                    print(f"round {rnd + 1} {name:<28} {cfg:<8} {r['rps']:>9.0f} req/s  "
                          f"p50 {r.get('p50_ms', 0):.2f} ms  p99 {r.get('p99_ms', 0):.2f} ms  "
                          f"non-2xx {r['non_2xx']}", flush=True)
        latency = open_loop(bench, workloads, results, args) if args.rates else {}
    finally:
        bench.stop()
    report = summarize(results, args)
    report["open_loop"] = latency
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway.json").write_text(json.dumps(report, indent=2))
    plots = [p.name for p in plots_module.latency_plots(report, args.out)]
    (args.out / "gateway.md").write_text(markdown(report) + "".join(f"\n![{p}]({p})\n" for p in plots))
    print(markdown(report))
    return 0


def open_loop(bench: Bench, workloads: dict[str, tuple[str, str | None]],
              results: dict[str, dict[str, list[dict[str, float]]]],
              args: argparse.Namespace) -> dict[str, dict[str, dict[str, dict]]]:
    """Latency at fixed rates, 25/50/75% of the do-nothing sidecar's measured maximum (B for
    ext_proc, B-authz for ext_authz) by default, for A and each adapter's B and C, interleaved."""
    fractions = [float(f) for f in args.rates.split(",") if f.strip()]
    out: dict[str, dict[str, dict[str, dict]]] = {}
    headers = {"authorization": f"Bearer {bench.token}"}
    for name, (path, body) in workloads.items():
        for floor, configs in (("B", ["A", "B", "C"]), ("B-authz", ["A", "B-authz", "C-authz"])):
            b_max = statistics.median(r["rps"] for r in results[name][floor])
            for fraction in fractions:
                rate = round(b_max * fraction)
                for cfg in configs:
                    if cfg == "A" and floor == "B-authz":
                        continue  # A was measured at the ext_proc rates; the same rates here
                    pid = bench.sidecar_pid.get(cfg.removesuffix("-authz"))
                    cpu0 = process_cpu_seconds(pid) if pid else 0.0
                    r = asyncio.run(openloop.run(bench.urls[cfg] + path, rate, args.latency_seconds, headers,
                                                 body.encode() if body else None)).summary()
                    if pid:  # at the same offered load, so B and C batch alike
                        r["sidecar_cpu_us_per_request"] = round(cpu_us_per_request(pid, cpu0, r["completed"]), 1)
                    r["fraction_of_b_max"] = fraction
                    out.setdefault(name, {}).setdefault(cfg, {})[f"{fraction:g}"] = r
                    print(f"open loop {name:<28} {cfg:<8} {rate:>6} req/s ({fraction:.0%} of {floor}): "
                          f"p50 {r['p50_ms']} p99 {r['p99_ms']} p99.9 {r['p99.9_ms']} ms, "
                          f"CPU {r.get('sidecar_cpu_us_per_request', '-')} µs/req, "
                          f"unfinished {r['unfinished']}, errors {r['errors']}, lag p99 {r['lag_ms_p99']} ms",
                          flush=True)
    return out


def _envoy_version() -> str:
    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return m.group(1) if m else "unknown"


def summarize(results: dict[str, dict[str, list[dict[str, float]]]], args: argparse.Namespace) -> dict:
    def med(runs: list[dict[str, float]], key: str) -> float:
        values = [r[key] for r in runs if key in r]
        return round(statistics.median(values), 3) if values else float("nan")

    table = {}
    for workload, by_cfg in results.items():
        rows = {cfg: {k: med(runs, k) for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "non_2xx",
                                                "sidecar_cpu_us_per_request", "sidecar_rss_mb",
                                                "envoy_cpu_us_per_request")}
                for cfg, runs in by_cfg.items()}
        ratios = {}
        for adapter, b, c in (("ext_proc", "B", "C"), ("ext_authz", "B-authz", "C-authz")):
            ratios[adapter] = {
                "throughput_C_over_B": round(rows[c]["rps"] / rows[b]["rps"], 3),
                "throughput_C_over_A": round(rows[c]["rps"] / rows["A"]["rps"], 3),
                "p99_C_over_B": round(rows[c]["p99_ms"] / rows[b]["p99_ms"], 3),
                "cpu_per_request_C_over_B": round(rows[c]["sidecar_cpu_us_per_request"]
                                                  / rows[b]["sidecar_cpu_us_per_request"], 3),
            }
        if "C-redispy" in rows:
            ratios["quota_client"] = {
                "throughput_C_over_C_redispy": round(rows["C"]["rps"] / rows["C-redispy"]["rps"], 3),
                "cpu_per_request_C_over_C_redispy": round(rows["C"]["sidecar_cpu_us_per_request"]
                                                          / rows["C-redispy"]["sidecar_cpu_us_per_request"], 3),
            }
        if "C-noguard" in rows:
            ratios["auth_guard"] = {
                "throughput_C_over_C_noguard": round(rows["C"]["rps"] / rows["C-noguard"]["rps"], 3),
                "envoy_cpu_per_request_C_over_C_noguard": round(rows["C"]["envoy_cpu_us_per_request"]
                                                                / rows["C-noguard"]["envoy_cpu_us_per_request"], 3),
                "p50_ms_C_minus_C_noguard": round(rows["C"]["p50_ms"] - rows["C-noguard"]["p50_ms"], 3),
            }
        if "C-norec" in rows:
            ratios["records"] = {
                "throughput_C_over_C_norec": round(rows["C"]["rps"] / rows["C-norec"]["rps"], 3),
                "cpu_per_request_C_over_C_norec": round(rows["C"]["sidecar_cpu_us_per_request"]
                                                        / rows["C-norec"]["sidecar_cpu_us_per_request"], 3),
            }
        table[workload] = {"configs": rows, "ratios": ratios}
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "envoy": _envoy_version()},
        "method": {"tool": "wrk -t1 (closed loop)", "connections": args.connections,
                   "seconds_per_run": args.seconds, "rounds": args.rounds,
                   "upstream": "Envoy direct_response", "envoy_concurrency": 1, "sidecar_workers": 1},
        "workloads": table,
    }


def markdown(report: dict) -> str:
    m = report["method"]
    lines = [f"# Gateway benchmark, {report['date']}", "",
             f"Machine: {report['machine']['cpus']} CPUs, {report['machine']['platform']}, Python "
             f"{report['machine']['python']}, Envoy {report['machine']['envoy']}. Load: {m['tool']}, "
             f"{m['connections']} connections, {m['seconds_per_run']} s per run, {m['rounds']} interleaved "
             f"rounds (medians). Upstream: {m['upstream']}; Envoy --concurrency 1; one sidecar worker.", "",
             "A = plain Envoy; B = Envoy + do-nothing sidecar; C = Envoy + full sidecar "
             "(cached JWT, classification, Redis quota, routing).", ""]
    for workload, data in report["workloads"].items():
        lines += [f"## {workload}", "", "| config | req/s | p50 ms | p90 ms | p99 ms | non-2xx | sidecar CPU µs/req "
                  "| sidecar RSS MB | Envoy CPU µs/req |", "|---|---|---|---|---|---|---|---|---|"]
        for cfg, r in data["configs"].items():
            lines.append(f"| {cfg} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['non_2xx']:.0f} | {r['sidecar_cpu_us_per_request']:.0f} | {r['sidecar_rss_mb']:.0f} "
                         f"| {r['envoy_cpu_us_per_request']:.0f} |")
        lines += ["", "| adapter | throughput C/B | throughput C/A | p99 C/B | CPU/request C/B |", "|---|---|---|---|---|"]
        for adapter, ra in data["ratios"].items():
            if adapter in ("records", "quota_client", "auth_guard"):
                continue
            lines.append(f"| {adapter} | {ra['throughput_C_over_B']} | {ra['throughput_C_over_A']} | "
                         f"{ra['p99_C_over_B']} | {ra['cpu_per_request_C_over_B']} |")
        latency = report.get("open_loop", {}).get(workload)
        if latency:
            lines += ["", "Open loop (fixed rate, latency from when each request was due; fractions of B's "
                      "maximum, B-authz's for ext_authz):", "",
                      "| config | rate | req/s | p50 ms | p99 ms | p99.9 ms | non-2xx | unfinished | sidecar CPU µs/req |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for cfg, by_rate in latency.items():
                for fraction, r in by_rate.items():
                    non2xx = sum(n for code, n in r["statuses"].items() if not code.startswith("2")) + r["errors"]
                    lines.append(f"| {cfg} | {float(fraction):.0%} | {r['rate']:.0f} | {r['p50_ms']} | "
                                 f"{r['p99_ms']} | {r['p99.9_ms']} | {non2xx} | {r['unfinished']} | "
                                 f"{r.get('sidecar_cpu_us_per_request', '-')} |")
            for b, c in (("B", "C"), ("B-authz", "C-authz")):
                for fraction in latency.get(b, {}):
                    if fraction not in latency.get(c, {}):
                        continue
                    rb, rc = latency[b][fraction], latency[c][fraction]
                    cpu = rc.get("sidecar_cpu_us_per_request", 0) / max(rb.get("sidecar_cpu_us_per_request", 0), 1e-9)
                    line = f"\n{c}/{b} at {float(fraction):.0%} load: CPU per request {cpu:.2f} (target ≤ 1.3)"
                    if fraction == "0.5":
                        line += f", p99 {rc['p99_ms'] / rb['p99_ms']:.2f} (target ≤ 1.3)"
                    lines.append(line)
        if "quota_client" in data["ratios"]:
            ra = data["ratios"]["quota_client"]
            lines += ["", f"Lean quota client (C vs C-redispy, ext_proc): throughput "
                          f"{ra['throughput_C_over_C_redispy']}, CPU/request {ra['cpu_per_request_C_over_C_redispy']}."]
        if "auth_guard" in data["ratios"]:
            ra = data["ratios"]["auth_guard"]
            lines += ["", f"Auth guard (C vs C-noguard, ext_proc, the same sidecar): throughput "
                          f"{ra['throughput_C_over_C_noguard']}, Envoy CPU/request "
                          f"{ra['envoy_cpu_per_request_C_over_C_noguard']}, p50 {ra['p50_ms_C_minus_C_noguard']:+} ms."]
        if "records" in data["ratios"]:
            ra = data["ratios"]["records"]
            lines += ["", f"Records (C vs C-norec, ext_proc): throughput {ra['throughput_C_over_C_norec']}, "
                          f"CPU/request {ra['cpu_per_request_C_over_C_norec']}."]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
