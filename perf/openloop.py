"""Open-loop load at a fixed rate, with latency measured without coordinated omission.

Request *i* is due at ``start + i / rate`` whatever happened to the requests before it, and its
latency runs from when it was due, not from when a connection was free to send it. So a
stall of the system under test shows in the percentiles as the queue it builds, which a
closed-loop tool (wrk: each connection waits for its answer before it sends again) hides by
sending less. Bounded in count and time: ``rate * seconds`` requests, then at most ``drain``
seconds for the answers; what is still open then counts as ``unfinished``.

HTTP/1.1 keep-alive over up to ``max_connections`` loopback connections, written directly on
asyncio streams so that the generator's own cost stays small (``lag_ms_p99``: how late it
dispatched requests; near zero means the numbers are the system's, not the generator's).

    python perf/openloop.py http://127.0.0.1:8080/v1/models --rate 300 --seconds 10 \\
        [-H "authorization: Bearer …"] [--body '{"model": …}'] [--source 127.0.0.2] \\
        [--forge-token HEADER.PAYLOAD]

``--source``: the loopback address connections come from (an attacker's address, beside
clients on 127.0.0.1). ``--forge-token``: every request carries a token of that header and
payload with a signature of its own, which never verifies (a flood of distinct forged tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Result:
    rate: float
    seconds: float
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0  # connection failures, malformed answers
    unfinished: int = 0  # still open when the drain time ran out
    lags_ms: list[float] = field(default_factory=list)
    #: (seconds after the start the request was due, latency ms, status; -1 for an error),
    #: for timelines.
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    started_at: float = 0.0  # time.monotonic() of the first due request
    #: When (seconds after the start) each answer carrying ``flag_header`` was due.
    flagged: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        lat = sorted(self.latencies_ms)
        lags = sorted(self.lags_ms)
        return {
            "rate": self.rate, "seconds": self.seconds, "sent": self.sent, "completed": len(lat),
            "errors": self.errors, "unfinished": self.unfinished,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            **{f"p{name}_ms": percentile(lat, q) for name, q in
               (("50", 0.50), ("90", 0.90), ("95", 0.95), ("99", 0.99), ("99.9", 0.999))},
            "max_ms": round(lat[-1], 3) if lat else float("nan"),
            "lag_ms_p99": percentile(lags, 0.99),
        }


def percentile(values: list[float], q: float, digits: int = 3) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], digits)


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer


async def _read_response(reader: asyncio.StreamReader, flag: bytes = b"") -> tuple[int, bool, bool]:
    """Status, whether the connection can be used again, whether header ``flag`` was there."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length, chunked, keep, flagged = 0, False, True, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        if flag and line[:len(flag)].lower() == flag:
            flagged = True
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            keep = False
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, keep, flagged


async def run(url: str, rate: float, seconds: float, headers: dict[str, str] | None = None,
              body: bytes | None = None, max_connections: int = 256, drain: float = 15.0,
              flag_header: str = "", source: str | None = None, forge_token: str = "") -> Result:
    """``flag_header``: count answers carrying this header (``flagged``, and per sample).
    ``source``: the local address to connect from. ``forge_token``: ``HEADER.PAYLOAD`` of a JWT;
    each request then carries it with a signature of its own."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    method = "POST" if body is not None else "GET"
    lines = [f"{method} {path} HTTP/1.1", f"host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines += ["content-type: application/json", f"content-length: {len(body)}"]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    flag = f"{flag_header.lower()}:".encode() if flag_header else b""
    local = (source, 0) if source else None
    forged = itertools.count()

    def request() -> bytes:
        if not forge_token:
            return raw
        # A 256-byte (RS256-sized) signature, different for every request.
        signature = f"{next(forged):012d}".encode().rjust(342, b"A")
        return raw.replace(b"\r\n\r\n", b"\r\nauthorization: Bearer " + forge_token.encode() + b"."
                           + signature + b"\r\n\r\n", 1)

    result = Result(rate, seconds)
    idle: list[_Conn] = []
    opened = 0
    freed = asyncio.Condition()

    async def acquire() -> _Conn:
        nonlocal opened
        async with freed:
            while not idle and opened >= max_connections:
                await freed.wait()
            if idle:
                return idle.pop()
            opened += 1
        try:
            return _Conn(*await asyncio.open_connection(host, port, local_addr=local))
        except OSError:
            async with freed:
                opened -= 1
                freed.notify()
            raise

    async def release(conn: _Conn | None) -> None:
        nonlocal opened
        async with freed:
            if conn is None:
                opened -= 1
            else:
                idle.append(conn)
            freed.notify()

    async def one(due: float) -> None:
        try:
            conn = await acquire()
        except OSError:
            result.errors += 1
            result.samples.append((due - result.started_at, (time.monotonic() - due) * 1000, -1))
            return
        try:
            conn.writer.write(request())
            status, keep, flagged = await _read_response(conn.reader, flag)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            result.errors += 1
            result.samples.append((due - result.started_at, (time.monotonic() - due) * 1000, -1))
            conn.writer.close()
            await release(None)
            return
        latency = (time.monotonic() - due) * 1000
        result.latencies_ms.append(latency)
        result.statuses[status] += 1
        result.samples.append((due - result.started_at, latency, status))
        if flagged:
            result.flagged.append(due - result.started_at)
        if keep:
            await release(conn)
        else:
            conn.writer.close()
            await release(None)

    total = int(rate * seconds)
    with _no_garbage_collection():
        return await _drive(one, result, rate, total, drain, idle)


_runs_in_progress = 0
_gc_was_enabled = True


@contextlib.contextmanager
def _no_garbage_collection() -> Iterator[None]:
    """The generator's own garbage collector must not pause it mid-run: a full collection of a
    benchmark process (matplotlib and all loaded) stopped it for ~100 ms, which showed as
    latency of whichever gateway was under test. Runs are bounded, so collect after them; when
    runs overlap (a flood beside steady traffic), only after the last one ends."""
    global _runs_in_progress, _gc_was_enabled
    if _runs_in_progress == 0:
        _gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
    _runs_in_progress += 1
    try:
        yield
    finally:
        _runs_in_progress -= 1
        if _runs_in_progress == 0 and _gc_was_enabled:
            gc.enable()
            gc.collect()


async def _drive(one: Callable[[float], Coroutine[Any, Any, None]], result: Result, rate: float, total: int,
                 drain: float, idle: list[_Conn]) -> Result:
    tasks = []
    start = result.started_at = time.monotonic() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        result.lags_ms.append(max(0.0, (time.monotonic() - due) * 1000))
        tasks.append(asyncio.create_task(one(due)))
        result.sent += 1
    _, pending = await asyncio.wait(tasks, timeout=drain) if tasks else (set(), set())
    result.unfinished = len(pending)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for conn in idle:
        conn.writer.close()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("-H", "--header", action="append", default=[], help="NAME: VALUE")
    p.add_argument("--body", default=None, help="JSON body (POST)")
    p.add_argument("--connections", type=int, default=256, help="at most this many connections")
    p.add_argument("--source", default=None, help="connect from this local address (e.g. 127.0.0.2)")
    p.add_argument("--forge-token", default="", metavar="HEADER.PAYLOAD",
                   help="a distinct forged token per request: this JWT header and payload, a signature each")
    args = p.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    result = asyncio.run(run(args.url, args.rate, args.seconds, headers,
                             args.body.encode() if args.body else None, args.connections,
                             source=args.source, forge_token=args.forge_token))
    # The generator's own CPU: on a shared machine, part of what the system under test competed with.
    print(json.dumps({**result.summary(), "generator_cpu_s": round(time.process_time(), 2)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
