"""Streamed chat as model servers stream it: what a 300-chunk SSE response costs the sidecar and
Envoy, against the same request answered as one JSON body.

The upstream (a process of its own, ``--upstream PORT``) answers ``POST /v1/chat/completions``
like an OpenAI-compatible server: unstreamed, one JSON body with ``usage``; streamed, one
``chat.completion.chunk`` event per token, each written on its own, ``--gap-ms`` apart, then
the usage chunk (when asked for: ``stream_options.include_usage``) and ``[DONE]``. Both
report the same usage: 24 prompt tokens and one completion token per chunk.

Side by side in one run, each against its own Envoy (``--concurrency 1``):

- (A) plain Envoy, streamed: Envoy's own floor;
- (C) Envoy + the full sidecar, unstreamed and streamed;
- (C0) Envoy + the full sidecar with the streamed-usage filter off on every route, streamed
  (accounting off: the usage is not read, the reservation is kept).

For each: CPU per request of the sidecar and of the gateway Envoy (``/proc``, over the run and
the 6 s after it, so that deferred work is charged to the run that caused it; the sidecar's
idle CPU over the run and those 6 s, its rate measured first, is taken off), streamed ÷ unstreamed ratios, and whether every streamed request's usage record equals what
the upstream reported (the records the sidecar writes to Redis). Rounds are interleaved A, C,
C0, C; the report takes medians.

    .venv/bin/python perf/bench_stream.py [--chunks 300] [--gap-ms 2] [--requests 40] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from bench_gateway import Bench, thread_cpu_seconds  # noqa: E402
from redis import Redis  # noqa: E402

from extproc.ledger.records import SOURCE_NAMES, UsageRecord  # noqa: E402
from extproc.ledger.spec import USAGE_STREAM  # noqa: E402
from tests.support import wait_http  # noqa: E402

PROMPT_TOKENS = 24
#: After each run: its settlements and records (access-log batches, the record writer) land.
AFTER_S = 6.0
IDLE_S = 5.0
MESSAGES = [{"role": "user", "content": "Tell me a story about a lighthouse keeper, please."}]


# --- the upstream ---------------------------------------------------------------------------


def serve_upstream(port: int, chunks: int, gap_ms: float) -> None:
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": chunks,
                 "total_tokens": PROMPT_TOKENS + chunks}
        model = body.get("model", "m")
        if not body.get("stream"):
            return web.json_response({"id": "c", "object": "chat.completion", "model": model,
                                      "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                          "role": "assistant", "content": "word " * chunks}}],
                                      "usage": usage})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(chunks):
            event = {"id": "c", "object": "chat.completion.chunk", "model": model,
                     "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
            if gap_ms and i + 1 < chunks:
                await asyncio.sleep(gap_ms / 1000)
        end = {"id": "c", "object": "chat.completion.chunk", "model": model,
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await resp.write(f"data: {json.dumps(end)}\n\n".encode())
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            last = {"id": "c", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage}
            await resp.write(f"data: {json.dumps(last)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/ready", ready)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the client -----------------------------------------------------------------------------


async def one(port: int, token: str, stream: bool) -> tuple[int, str]:
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                     + f"authorization: Bearer {token}\r\ncontent-length: {len(body)}\r\n".encode()
                     + b"connection: close\r\n\r\n" + body)
        status = int((await reader.readline()).split()[1])
        decision = ""
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "x-extproc-decision-id":
                decision = value.strip()
        await reader.read()  # to the end of the response (the connection closes)
        return status, decision
    finally:
        writer.close()


async def load(port: int, token: str, stream: bool, requests: int, concurrency: int) -> list[tuple[int, str]]:
    gate = asyncio.Semaphore(concurrency)

    async def bounded() -> tuple[int, str]:
        async with gate:
            return await one(port, token, stream)

    return list(await asyncio.gather(*(bounded() for _ in range(requests))))


def records_match(redis_url: str, decisions: list[str], chunks: int) -> tuple[int, int]:
    """How many of these decisions have a usage record, and how many of those carry exactly what
    the upstream reported (source reported, the prompt and completion tokens)."""
    wanted = set(decisions)
    with Redis.from_url(redis_url) as r:
        records = [UsageRecord.FromString(f[b"r"]) for _, f in r.xrange(USAGE_STREAM)]
    mine = {rec.decision_id: rec for rec in records if rec.decision_id in wanted}
    exact = sum(1 for rec in mine.values() if SOURCE_NAMES[rec.source] == "reported"
                and (rec.tokens.prompt, rec.tokens.completion) == (PROMPT_TOKENS, chunks))
    return len(mine), exact


# --- the run --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--requests", type=int, default=40, help="requests per configuration and round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results" / dt.date.today().isoformat())
    parser.add_argument("--upstream", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream(args.upstream, args.chunks, args.gap_ms)
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="extproc-stream-"))
    bench = Bench(workdir)
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(bench.pool_a), "--chunks",
                                 str(args.chunks), "--gap-ms", str(args.gap_ms)], stdin=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{bench.pool_a}/ready", proc=upstream)
        plain = bench.plain()
        sidecars, sidecar_pid = bench.full_sidecar()
        with_usage = bench.gateway("C", sidecars)
        without_usage = bench.gateway("C0", sidecars, usage_filter=False)
        envoy_pid = {name: child.proc.pid for child in bench.children
                     for name in ("plain", "gateway-C", "gateway-C0") if child.name == name}
        runs: list[tuple[str, int, bool, str]] = [
            ("A plain Envoy, streamed", plain, True, "plain"),
            ("C full sidecar, unstreamed", with_usage.ext_proc, False, "gateway-C"),
            ("C full sidecar, streamed", with_usage.ext_proc, True, "gateway-C"),
            ("C0 full sidecar, streamed, usage filter off", without_usage.ext_proc, True, "gateway-C0"),
        ]
        for _, port, stream, _ in runs:  # warm-up: connections, caches, JWKS
            asyncio.run(load(port, bench.token, stream, 4, 4))
        time.sleep(AFTER_S)
        # What the sidecar burns idle (timers, the records writer): taken off each run's
        # window, which each run extends by an after-period so that its own deferred work
        # (settlements, records) is charged to it, not to the next.
        idle0 = thread_cpu_seconds(sidecar_pid)
        time.sleep(IDLE_S)
        idle_rate = (thread_cpu_seconds(sidecar_pid) - idle0) / IDLE_S
        samples: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in runs}
        checked: dict[str, tuple[int, int]] = {}
        for _ in range(args.rounds):
            for name, port, stream, envoy in runs:
                sidecar_cpu, envoy_cpu = thread_cpu_seconds(sidecar_pid), thread_cpu_seconds(envoy_pid[envoy])
                started = time.monotonic()
                answers = asyncio.run(load(port, bench.token, stream, args.requests, args.concurrency))
                wall = time.monotonic() - started
                time.sleep(AFTER_S)
                assert {status for status, _ in answers} == {200}, answers[:3]
                n = len(answers)
                # Idle work (timers, pollers) is taken off the whole window, run and after-period:
                # a streamed run lasts longer, and would otherwise be charged more of it.
                sidecar_s = thread_cpu_seconds(sidecar_pid) - sidecar_cpu - idle_rate * (wall + AFTER_S)
                samples[name].append({
                    "sidecar_us": max(0.0, sidecar_s) / n * 1e6 if envoy != "plain" else 0.0,
                    "envoy_us": (thread_cpu_seconds(envoy_pid[envoy]) - envoy_cpu) / n * 1e6,
                    "wall_s": wall})
                if name.startswith("C full sidecar, streamed"):
                    found, exact = records_match(bench.redis.url, [d for _, d in answers], args.chunks)
                    before = checked.get(name, (0, 0))
                    checked[name] = (before[0] + found, before[1] + exact)
    finally:
        upstream.terminate()
        upstream.wait(10)
        bench.stop()

    report: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              "chunks": args.chunks, "gap_ms": args.gap_ms, "requests": args.requests,
                              "concurrency": args.concurrency, "rounds": args.rounds, "configs": {}}
    for name, values in samples.items():
        report["configs"][name] = {key: round(statistics.median(v[key] for v in values), 1)
                                   for key in ("sidecar_us", "envoy_us")}
    report["sidecar_idle_cpu_per_s_ms"] = round(idle_rate * 1000, 2)
    unstreamed = report["configs"]["C full sidecar, unstreamed"]
    streamed = report["configs"]["C full sidecar, streamed"]
    off = report["configs"]["C0 full sidecar, streamed, usage filter off"]
    report["ratios"] = {
        "sidecar CPU, streamed / unstreamed (accounting on)": round(streamed["sidecar_us"] / unstreamed["sidecar_us"], 2),
        "sidecar CPU, streamed / unstreamed (usage filter off)": round(off["sidecar_us"] / unstreamed["sidecar_us"], 2),
        "sidecar CPU per chunk, accounting on (µs)": round(
            (streamed["sidecar_us"] - unstreamed["sidecar_us"]) / args.chunks, 1),
    }
    found, exact = checked.get("C full sidecar, streamed", (0, 0))
    report["usage_records"] = {"streamed requests": args.requests * args.rounds, "with a record": found,
                               "equal to what the upstream reported": exact}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stream.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Streamed chat, {args.chunks} chunks {args.gap_ms:g} ms apart ({report['date']})", "",
             f"`perf/bench_stream.py --chunks {args.chunks} --gap-ms {args.gap_ms:g} --requests {args.requests} "
             f"--concurrency {args.concurrency} --rounds {args.rounds}`; medians of the rounds.", "",
             "| configuration | sidecar CPU µs/request | Envoy CPU µs/request |", "|---|---|---|"]
    lines += [f"| {name} | {v['sidecar_us']} | {v['envoy_us']} |" for name, v in report["configs"].items()]
    lines += ["", *(f"- {k}: **{v}**" for k, v in report["ratios"].items()),
              f"- usage records of the streamed requests (accounting on): {found} of "
              f"{args.requests * args.rounds} written, {exact} equal to what the upstream reported", ""]
    (args.out / "stream.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
