"""A real Envoy running ``envoy/usage.lua`` in front of a scripted upstream, for
``tests/e2e/test_usage_lua.py``, and the measurements of what the filter costs: Envoy CPU per
chunk with and without it (``python -m tests.e2e.lua_harness measure [--baselines]``), and
per-call costs inside Envoy's LuaJIT (``python -m tests.e2e.lua_harness microbench``).

The upstream (``python -m tests.e2e.lua_harness upstream --port N``, a child process) is told
what to answer by the request itself: its JSON body is a ``Case`` (status, headers, the body in
chunks, each its own chunked-encoding write with a pause after it, an optional connection reset
or gate). ``GET /release/<gate>`` opens a gate, so a test can hold a stream between two chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import socket
import struct
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LUA_PATH = ROOT / "envoy" / "usage.lua"
NS = "extproc.usage"
#: The metadata keys envoy/usage.lua sets, as the access log prints them.
FIELDS = ("status", "read", "prompt", "completion", "cached", "cache_write", "reasoning", "reported",
          "completed", "text_ascii", "text_other", "events", "end")

#: A test-only second Lua filter: how many body chunks Envoy passed (proves a split was a split).
CHUNK_COUNTER = """
function envoy_on_response(handle)
  local n = 0
  for chunk in handle:bodyChunks() do
    if chunk:length() > 0 then n = n + 1 end
  end
  handle:streamInfo():dynamicMetadata():set("test", "chunks", n)
end
"""


@dataclass
class Case:
    """What the upstream answers: ``chunks`` are written one by one (latin-1 text in the
    request's JSON), each followed by ``pause`` seconds. ``reset_after``: the connection is reset
    (RST) after that many chunks instead of ending the body. ``gate_after``: the upstream waits
    (at most ``gate_timeout``) for ``GET /release/<gate>`` before writing that chunk."""

    chunks: Sequence[bytes]
    content_type: str | None = "text/event-stream"
    status: int = 200
    pause: float = 0.002
    reset_after: int | None = None
    gate_after: int | None = None
    gate: str = ""
    gate_timeout: float = 10.0
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return b"".join(self.chunks[: self.reset_after] if self.reset_after is not None else self.chunks)

    def wire(self) -> bytes:
        doc = asdict(self)
        doc["chunks"] = [bytes(c).decode("latin-1") for c in self.chunks]
        if self.content_type is not None:
            doc["headers"] = {"content-type": self.content_type, **self.headers}
        return json.dumps(doc).encode()


# --- the upstream ------------------------------------------------------------------------------


async def _respond(writer: asyncio.StreamWriter, case: dict[str, Any], gates: dict[str, asyncio.Event]) -> bool:
    """Writes the scripted response; False when the connection was reset."""
    status = int(case["status"])
    head = f"HTTP/1.1 {status} Scripted\r\n"
    for name, value in case["headers"].items():
        head += f"{name}: {value}\r\n"
    if status in (204, 304):  # no body
        writer.write((head + "\r\n").encode("latin-1"))
        await writer.drain()
        return True
    head += "transfer-encoding: chunked\r\n\r\n"
    writer.write(head.encode("latin-1"))
    await writer.drain()
    chunks = [c.encode("latin-1") for c in case["chunks"]]
    for i, data in enumerate([*chunks, None]):
        if i == case["gate_after"]:
            gate = gates.setdefault(case["gate"], asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gate.wait(), case["gate_timeout"])
        if i == case["reset_after"]:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if data is None:
            break
        if data:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
        if case["pause"]:
            await asyncio.sleep(case["pause"])
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      gates: dict[str, asyncio.Event]) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            target = lines[0].split(" ")[1]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if target.startswith("/release/"):
                gates.setdefault(target.removeprefix("/release/"), asyncio.Event()).set()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                continue
            if not await _respond(writer, json.loads(body), gates):
                return
    except ConnectionError:
        return
    finally:
        writer.close()


async def _serve_upstream(port: int) -> None:
    gates: dict[str, asyncio.Event] = {}
    server = await asyncio.start_server(lambda r, w: _connection(r, w, gates), "127.0.0.1", port)
    print(f"upstream listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


# --- Envoy -------------------------------------------------------------------------------------


def _lua_filter(name: str, source: str) -> dict[str, Any]:
    return {"name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "stat_prefix": name.replace(".", "_"),
        "default_source_code": {"inline_string": source}}}


def bootstrap(listen: int, admin: int, upstream: int, access_log: Path | None, lua: bool | str = True,
              count_chunks: bool = False) -> dict[str, Any]:
    """One listener, [the chunk counter,] the usage filter (envoy/usage.lua inline, or the
    source ``lua`` gives), the router, one cluster to the upstream, and a JSON access log with
    the usage metadata."""
    filters = []
    if count_chunks:
        filters.append(_lua_filter("test.chunk_counter", CHUNK_COUNTER))
    if lua:
        filters.append(_lua_filter("extproc.usage", lua if isinstance(lua, str) else LUA_PATH.read_text()))
    filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    hcm: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": "usage_lua",
        "delayed_close_timeout": "0.05s",  # a cut-off response's connection closes at once
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "60s"}}]}]},
        "http_filters": filters,
    }
    if access_log is not None:
        fmt = {"id": "%REQ(X-TEST-ID)%", "code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%",
               "chunks": "%DYNAMIC_METADATA(test:chunks)%"}
        fmt.update({name: f"%DYNAMIC_METADATA({NS}:{name})%" for name in FIELDS})
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(access_log), "log_format": {"json_format": fmt}}}]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "usage_lua", "address": {"socket_address": {
                "address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}],
            "clusters": [{"name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                          "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
                              {"endpoint": {"address": {"socket_address": {
                                  "address": "127.0.0.1", "port_value": upstream}}}}]}]}}],
        },
    }


class AccessLog:
    """The JSON access log, read as it grows: records by test id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.records: dict[str, dict[str, Any]] = {}

    def _read(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                record = json.loads(line)
                self.records[str(record.get("id"))] = record

    def wait(self, ids: Sequence[str], timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            missing = [i for i in ids if i not in self.records]
            if not missing:
                return [self.records[i] for i in ids]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no access log line for {missing[:5]} (of {len(missing)})")
            time.sleep(0.02)


@dataclass
class Result:
    id: str
    status: int | None
    body: bytes
    error: str | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def usage(self) -> dict[str, Any]:
        """The metadata fields of the access log line (None where the filter set nothing)."""
        return {name: self.record.get(name) for name in FIELDS}


class Gateway:
    """The upstream and an Envoy in front of it (``lua``: with the usage filter)."""

    def __init__(self, work: Path, lua: bool | str = True, count_chunks: bool = True, concurrency: int = 1) -> None:
        from tests.support import Child, envoy_binary, free_port, wait_http

        self.work = work
        self.children: list[Any] = []
        self.upstream_port, self.port, self.admin = free_port(), free_port(), free_port()
        self.log = AccessLog(work / "access.log")
        try:
            up = Child("upstream", [sys.executable, "-m", "tests.e2e.lua_harness", "upstream",
                                    "--port", str(self.upstream_port)], work, env={"PYTHONPATH": str(ROOT)})
            self.children.append(up)
            config = work / "envoy.json"
            config.write_text(json.dumps(bootstrap(self.port, self.admin, self.upstream_port, self.log.path,
                                                   lua=lua, count_chunks=count_chunks), indent=1))
            envoy = Child("envoy", [envoy_binary(), "-c", str(config), "--log-level", "warn",
                                    "--concurrency", str(concurrency), "--base-id", str(self.admin),
                                    "--file-flush-interval-msec", "20", "--drain-time-s", "1"], work)
            self.children.append(envoy)
            self.envoy = envoy
            wait_http(f"http://127.0.0.1:{self.admin}/ready", proc=envoy.proc)
            deadline = time.monotonic() + 10
            while True:  # the upstream answers through Envoy
                with contextlib.suppress(OSError):
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                    result = self._send(conn, Case([b"{}"], "application/json"), "warmup")
                    conn.close()
                    if result.status == 200:
                        break
                if time.monotonic() > deadline or up.proc.poll() is not None:
                    raise RuntimeError("the upstream does not answer through Envoy:\n" + up.log())
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    @staticmethod
    def _send(conn: http.client.HTTPConnection, case: Case, test_id: str) -> Result:
        try:
            conn.request("POST", "/v1/scripted", body=case.wire(),
                         headers={"content-type": "application/json", "x-test-id": test_id})
            resp = conn.getresponse()
            try:
                body = resp.read()
            except http.client.IncompleteRead as exc:
                return Result(test_id, resp.status, exc.partial, error=repr(exc))
            return Result(test_id, resp.status, body)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            return Result(test_id, None, b"", error=repr(exc))

    def run_many(self, cases: Sequence[Case], timeout: float = 30.0) -> list[Result]:
        """Each case through Envoy in turn (one keep-alive connection), then their log lines."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        results = []
        for case in cases:
            result = self._send(conn, case, uuid.uuid4().hex)
            if result.error is not None or case.reset_after is not None:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            results.append(result)
        conn.close()
        for result, record in zip(results, self.log.wait([r.id for r in results], timeout), strict=True):
            result.record = record
        return results

    def run(self, case: Case) -> Result:
        return self.run_many([case])[0]

    def release(self, gate: str) -> None:
        """Opens a gate of the upstream (directly, not through Envoy)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=5)
        conn.request("GET", f"/release/{gate}")
        conn.getresponse().read()
        conn.close()

    def cpu_seconds(self) -> float:
        """CPU (user + system) Envoy has used so far, from /proc."""
        fields = Path(f"/proc/{self.envoy.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- measurement -------------------------------------------------------------------------------


def chat_stream(chunks: int = 300) -> list[bytes]:
    """A realistic OpenAI chat stream: ``chunks`` content chunks, a finish chunk, usage, [DONE]."""
    head = {"id": "chatcmpl-9x7Yb2kQ4r8TnE1wPzLmA3sD6fGh", "object": "chat.completion.chunk",
            "created": 1718000000, "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_0ba0d124f1"}

    def event(doc: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps({**head, **doc}, separators=(",", ":")).encode() + b"\n\n"

    out = [event({"choices": [{"index": 0, "delta": {"content": "word "}, "logprobs": None,
                               "finish_reason": None}]}) for _ in range(chunks)]
    out.append(event({"choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}))
    out.append(event({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": chunks,
                                               "total_tokens": 20 + chunks}}))
    out.append(b"data: [DONE]\n\n")
    return out


def _stream_load(port: int, case: Case, streams: int, parallel: int) -> None:
    import concurrent.futures

    def one(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(n):
            Gateway._send(conn, case, uuid.uuid4().hex)
        conn.close()

    share = [streams // parallel + (1 if i < streams % parallel else 0) for i in range(parallel)]
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, share))


#: Baselines for ``measure``: what a Lua filter costs Envoy per chunk before it does anything.
LUA_BASELINES = {
    "lua_iterate_only": "function envoy_on_response(h) for c in h:bodyChunks() do end end",
    "lua_get_bytes": "function envoy_on_response(h) for c in h:bodyChunks() do c:getBytes(0, c:length()) end end",
}


def measure(work: Path, streams: int, parallel: int, pause: float, rounds: int,
            baselines: bool = False) -> dict[str, Any]:
    """Envoy CPU per chunk with and without the usage filter (same config minus the filter),
    streaming ``streams`` 300-chunk chat responses through each, ``rounds`` times alternately
    (``baselines``: also through filters that only iterate the chunks, or copy them too)."""
    chunks = chat_stream()
    case = Case(chunks, pause=pause)
    out: dict[str, Any] = {"chunks_per_stream": len(chunks), "streams": streams, "rounds": rounds}
    gateways = {}
    variants: list[tuple[str, bool | str]] = [("without", False), ("with", True)]
    if baselines:
        variants += list(LUA_BASELINES.items())
    try:
        for name, lua in variants:
            (work / name).mkdir(parents=True, exist_ok=True)
            gateways[name] = Gateway(work / name, lua=lua, count_chunks=False)
        # How many chunks Envoy really passed: a third Envoy that only counts them.
        (work / "counted").mkdir(parents=True, exist_ok=True)
        counted = Gateway(work / "counted", lua=False, count_chunks=True)
        try:
            results = counted.run_many([case] * 5)
            out["chunks_seen_by_envoy"] = [r.record.get("chunks") for r in results]
        finally:
            counted.stop()
        samples: dict[str, list[float]] = {name: [] for name in gateways}
        for gw in gateways.values():  # warm-up (JIT, connections)
            _stream_load(gw.port, case, max(parallel, streams // 10), parallel)
        for _ in range(rounds):
            for name, gw in gateways.items():
                before = gw.cpu_seconds()
                _stream_load(gw.port, case, streams, parallel)
                samples[name].append((gw.cpu_seconds() - before) / (streams * len(chunks)) * 1e6)
        out["us_per_chunk"] = samples
        best = {name: sorted(v)[len(v) // 2] for name, v in samples.items()}
        out["median_us_per_chunk"] = best
        out["added_us_per_chunk"] = {name: v - best["without"] for name, v in best.items() if name != "without"}
    finally:
        for gw in gateways.values():
            gw.stop()
    return out


# Appended to envoy/usage.lua (the same Lua chunk, so its local functions are in scope): times,
# in Envoy's own LuaJIT, what the filter does with one typical chat chunk, and a metadata set.
_MICROBENCH = """
local CHUNK = %s
local N = %d
local clock = os.clock
local function timeit(n, f)
  collectgarbage()
  local t = clock()
  for i = 1, n do f(i) end
  return (clock() - t) / n * 1e6
end
local function state()
  return {pub = {}, events = 0, ascii = 0, other = 0, completed = false, dirty = false,
          parts = {}, nparts = 0, plen = 0, edge = "", skipping = false}
end
function envoy_on_request(handle)
  if handle:headers():get(":path") ~= "/bench" then return end
  local payload = sub(CHUNK, 7, -3)
  local out, st = {}, state()
  out.decode_selective_us = timeit(N, function() return decode(payload, SSE_SPEC) end)
  out.decode_full_us = timeit(N, function() return decode(payload, true) end)
  out.feed_chunk_us = timeit(N, function() sse_feed(st, CHUNK) end)
  local a, b = sub(CHUNK, 1, 100), sub(CHUNK, 101)
  out.feed_chunk_in_two_pieces_us = timeit(N, function() sse_feed(st, a); sse_feed(st, b) end)
  local meta = handle:streamInfo():dynamicMetadata()
  out.metadata_set_us = timeit(N, function(i) meta:set(NS, "events", i) end)
  out.metadata_fetch_us = timeit(N, function() return handle:streamInfo():dynamicMetadata() end)
  out.publish_per_chunk_us = timeit(N, function()
    st.events = st.events + 1
    st.ascii = st.ascii + 5
    publish(st, handle)
  end)
  out.events_counted = st.events
  local parts = {}
  for k, v in pairs(out) do parts[#parts + 1] = string.format("%%q:%%.4f", k, v) end
  handle:respond({[":status"] = "200", ["content-type"] = "application/json"},
                 "{" .. table.concat(parts, ",") .. "}")
end
"""


def _lua_literal(data: bytes) -> str:
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b}" for b in data) + '"'


def microbench(work: Path, iterations: int = 200000) -> dict[str, Any]:
    """Per-call costs inside Envoy's LuaJIT: decoding a typical chat chunk (only what is needed,
    and whole), reading the chunk as the filter does, a metadata set, a per-chunk publish."""
    source = LUA_PATH.read_text() + _MICROBENCH % (_lua_literal(chat_stream(1)[0]), iterations)
    work.mkdir(parents=True, exist_ok=True)
    gw = Gateway(work, lua=source, count_chunks=False)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=300)
        conn.request("GET", "/bench")
        out: dict[str, Any] = json.loads(conn.getresponse().read())
        conn.close()
        out["chunk_bytes"] = len(chat_stream(1)[0])
        return out
    finally:
        gw.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.lua_harness")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upstream", help="run the scripted upstream")
    up.add_argument("--port", type=int, required=True)
    ms = sub.add_parser("measure", help="Envoy CPU per chunk with and without envoy/usage.lua")
    ms.add_argument("--work", type=Path, default=Path("/tmp/usage-lua-measure"))
    ms.add_argument("--streams", type=int, default=100)
    ms.add_argument("--parallel", type=int, default=4)
    ms.add_argument("--pause", type=float, default=0.001)
    ms.add_argument("--rounds", type=int, default=3)
    ms.add_argument("--baselines", action="store_true", help="also Lua filters that only iterate/copy chunks")
    mb = sub.add_parser("microbench", help="per-call costs of envoy/usage.lua inside Envoy's LuaJIT")
    mb.add_argument("--work", type=Path, default=Path("/tmp/usage-lua-microbench"))
    mb.add_argument("--iterations", type=int, default=200000)
    args = parser.parse_args(argv)
    if args.command == "upstream":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_upstream(args.port))
    elif args.command == "microbench":
        sys.path.insert(0, str(ROOT))
        print(json.dumps(microbench(args.work, args.iterations), indent=1))
    else:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(measure(args.work, args.streams, args.parallel, args.pause, args.rounds,
                                 args.baselines), indent=1))


if __name__ == "__main__":
    main()


__all__ = ["Case", "Gateway", "Result", "bootstrap", "chat_stream", "measure"]
