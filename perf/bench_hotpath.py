"""CPU per request of our own code on the ext_proc path, without gRPC: the full sidecar's
servicer (token cache, classification, Redis quota admission, routing, Envoy messages, lease
release, records, metrics) driven in-process with the messages Envoy sends for one chat request
(headers, then the body), then its end as Envoy's access log brings it (the codec and the
settler: true-up, usage record), in batches of 32, against a real redis-server and the real
demo issuer's keys.

    .venv/bin/python perf/bench_hotpath.py [--requests 20000] [--concurrency 32] [--rounds 3]

What ``bench_gateway.py`` measures end to end includes grpc.aio's cost per message, which
the do-nothing sidecar pays too; this isolates the rest (the gap between C and B), so a change
to the hot path can be measured in seconds with little noise. The same loop drives the
do-nothing servicer as the harness's own floor. CPU is this process's (``time.process_time``:
every thread), divided by requests completed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

import grpc  # noqa: E402
from bench_gateway import CHAT_BODY, Bench  # noqa: E402
from envoy.data.accesslog.v3 import accesslog_pb2  # noqa: E402
from envoy.service.accesslog.v3 import als_pb2  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from extproc.app import Worker  # noqa: E402
from extproc.devstack.noop_sidecar import NoopProcessor  # noqa: E402
from extproc.envoy_api.access_log import request_ends  # noqa: E402
from extproc.runtime import settle_heap  # noqa: E402
from extproc.settings import Settings  # noqa: E402
from extproc.settlement.settler import Settler  # noqa: E402


def chat_messages(token: str) -> list[pb.ProcessingRequest]:
    """What Envoy sends the deciding stream for one chat request, in order (no response phase)."""
    def headers(pairs: list[tuple[str, str]], end: bool) -> pb.HttpHeaders:
        h = pb.HttpHeaders(end_of_stream=end)
        for k, v in pairs:
            h.headers.headers.add(key=k, raw_value=v.encode())
        return h
    body = CHAT_BODY.encode()
    request = headers([(":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "127.0.0.1"),
                       (":scheme", "http"), ("authorization", f"Bearer {token}"),
                       ("content-type", "application/json"), ("content-length", str(len(body))),
                       ("user-agent", "wrk"), ("x-request-id", "5b1c3f2e-0d7e-4c1b-9a51-1f2d3c4b5a69"),
                       ("x-forwarded-proto", "http")], False)
    return [pb.ProcessingRequest(request_headers=request),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))]


#: What envoy/usage.lua puts in metadata for the JSON answer above.
USAGE_SEEN = struct_pb2.Struct(fields={
    "status": struct_pb2.Value(number_value=200), "read": struct_pb2.Value(string_value="json"),
    "reported": struct_pb2.Value(number_value=1), "prompt": struct_pb2.Value(number_value=9),
    "completion": struct_pb2.Value(number_value=3), "completed": struct_pb2.Value(number_value=1),
    "end": struct_pb2.Value(number_value=1)})
#: Envoy flushes its access log in batches; this many entries a batch.
LOG_BATCH = 32


def log_entry(answer: bytes) -> accesslog_pb2.HTTPAccessLogEntry:
    """The access-log entry Envoy writes for a request whose deciding answer was ``answer``."""
    entry = accesslog_pb2.HTTPAccessLogEntry()
    common = entry.common_properties
    metadata = pb.ProcessingResponse.FromString(answer).dynamic_metadata
    common.metadata.filter_metadata["extproc"].CopyFrom(metadata.fields["extproc"].struct_value)
    common.metadata.filter_metadata["extproc.usage"].CopyFrom(USAGE_SEEN)
    entry.response.response_code.value = 200
    common.time_to_last_downstream_tx_byte.FromMilliseconds(3)
    return entry


class _Stream:
    """One ext_proc stream as the servicer sees it: Envoy's messages in, our answers out."""

    def __init__(self, messages: list[pb.ProcessingRequest]) -> None:
        self._messages = iter(messages)
        self.answers = 0
        self.last = b""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-extproc-listener", "gateway"),)

    async def read(self) -> Any:
        return next(self._messages, grpc.aio.EOF)

    async def write(self, response: bytes) -> None:
        assert isinstance(response, bytes)  # sent as it is (envoy_api.ext_proc.add_to_server)
        self.answers += 1
        self.last = response


async def drive(servicer: Any, settler: Settler | None, messages: list[pb.ProcessingRequest], requests: int,
                concurrency: int) -> float:
    """CPU seconds per request for ``requests`` streams, ``concurrency`` at a time, each request's
    end then settled from the access log (``settler``; None: the do-nothing floor, no settlement).
    The harness's own work (building the log entries Envoy would send) is not counted."""
    left = requests
    batch = als_pb2.StreamAccessLogsMessage()
    harness = 0.0

    async def flush() -> None:
        if settler is not None and batch.http_logs.log_entry:
            events = request_ends(batch)
            del batch.http_logs.log_entry[:]
            await settler.ended(events)

    async def client() -> None:
        nonlocal left, harness
        while left > 0:
            left -= 1
            stream = _Stream(messages)
            await servicer.Process(None, stream)
            if stream.answers != len(messages):
                raise RuntimeError(f"{stream.answers} answers to {len(messages)} messages")
            if settler is not None:
                started = time.process_time()
                batch.http_logs.log_entry.append(log_entry(stream.last))
                harness += time.process_time() - started
                if len(batch.http_logs.log_entry) >= LOG_BATCH:
                    await flush()

    cpu = time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    await flush()
    return (time.process_time() - cpu - harness) / requests


async def run(args: argparse.Namespace, bench: Bench) -> dict[str, list[float]]:
    worker = Worker(Settings(config_path=bench.policy(), redis_url=bench.redis.url, admin=None))
    worker.identity.configure(worker.config.current.config.issuers)
    await worker.quota.store.start()  # type: ignore[union-attr]
    assert worker.ledger is not None
    records = asyncio.create_task(worker.ledger.run())
    full, _, _ = worker.servicers()
    messages = chat_messages(bench.token)
    await drive(full, worker.settler, messages, 200, 4)  # warm-up: JWKS fetch, token cache, connections
    await full.drain()
    settle_heap()  # as the worker does before serving
    out: dict[str, list[float]] = {"full": [], "noop": []}
    for _ in range(args.rounds):
        for name, servicer, settler in (("full", full, worker.settler), ("noop", NoopProcessor(), None)):
            out[name].append(await drive(servicer, settler, messages, args.requests, args.concurrency) * 1e6)
            await full.drain()  # lease releases of this round, counted in it
    records.cancel()
    await worker.ledger.close()
    await worker.identity.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench = Bench(Path(tempfile.mkdtemp(prefix="extproc-hotpath-")))
    try:
        out = asyncio.run(run(args, bench))
    finally:
        bench.stop()
    # This machine's CPU time per request varies by ±10% from round to round (a shared VM); the
    # least disturbed round is the closest to the code's own cost, the median is shown beside it.
    full, noop = min(out["full"]), min(out["noop"])
    print(f"chat request, ext_proc path without gRPC, {args.requests} requests x {args.rounds} rounds, "
          f"{args.concurrency} concurrent:")
    print(f"  full servicer  {full:7.1f} µs CPU/request, least of the rounds (median "
          f"{statistics.median(out['full']):.1f}; rounds: {', '.join(f'{v:.1f}' for v in out['full'])})")
    print(f"  noop servicer  {noop:7.1f} µs CPU/request  (the harness floor)")
    print(f"  ours           {full - noop:7.1f} µs CPU/request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
