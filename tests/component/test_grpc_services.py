"""The servicers over a real gRPC channel: ext_proc streams, ext_authz checks, health, admin HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as authz_pb
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.envoy_api import ext_authz as ext_authz_codec
from extproc.envoy_api import ext_proc as ext_proc_codec
from extproc.identity.authenticator import JwtAuthenticator
from extproc.pipeline import Pipeline
from extproc.services.ext_authz import AuthorizationService
from extproc.services.ext_proc import ExternalProcessorService
from tests.support import free_port, route_pool


def headers(method: str, path: str, eos: bool = False, **extra: str) -> pb.ProcessingRequest:
    pairs = [(":method", method), (":path", path), (":authority", "gw.local"), *extra.items()]
    hv = [base_pb2.HeaderValue(key=k.replace("_", "-"), raw_value=v.encode()) for k, v in pairs]
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=hv),
                                                               end_of_stream=eos))


def body(data: bytes, eos: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=eos))


def set_headers(common: pb.CommonResponse) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


async def test_ext_proc_stream_reads_body_then_routes(worker) -> None:
    _, channel = worker
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
    call = stub.Process()
    await call.write(headers("POST", "/v1/chat/completions", x_extproc_upstream="pool-b"))
    first = await call.read()
    assert first.WhichOneof("response") == "request_headers"
    assert first.mode_override.request_body_mode == first.mode_override.BUFFERED_PARTIAL
    await call.write(body(json.dumps({"model": "gpt-4o-mini", "messages": []}).encode()))
    second = await call.read()
    common = second.request_body.response
    routed = set_headers(common)
    assert routed["x-extproc-upstream"] == "pool-a"
    assert common.clear_route_cache
    # The client's headers go as metadata, for Envoy's formatters: no response phase.
    assert not second.HasField("mode_override")
    meta = second.dynamic_metadata.fields["extproc"].struct_value.fields
    assert meta["decision_id"].string_value == routed["x-extproc-decision-id"]
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_ext_proc_denial_is_immediate(worker) -> None:
    _, channel = worker
    call = external_processor_pb2_grpc.ExternalProcessorStub(channel).Process()
    await call.write(headers("DELETE", "/internal/everything", eos=True))
    resp = await call.read()
    assert resp.immediate_response.status.code == 404
    assert json.loads(resp.immediate_response.body)["error"]["code"] == "unknown_workload"
    await call.done_writing()


async def test_many_concurrent_streams(worker) -> None:
    _, channel = worker
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)

    async def one(i: int) -> str:
        call = stub.Process()
        await call.write(headers("POST", "/v1/chat/completions"))
        await call.read()
        model = "gpt-4o" if i % 2 else "gpt-4o-mini"
        await call.write(body(json.dumps({"model": model}).encode()))
        resp = await call.read()
        await call.done_writing()
        return set_headers(resp.request_body.response)["x-extproc-upstream"]

    pools = await asyncio.gather(*(one(i) for i in range(200)))
    assert pools.count("pool-a") == 100 and pools.count("pool-b") == 100


async def test_cancelled_stream_is_a_normal_end(worker, caplog: pytest.LogCaptureFixture) -> None:
    _, channel = worker
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        call = stub.Process()
        await call.write(headers("POST", "/v1/chat/completions"))
        await call.read()  # now the server waits for the body: cancel under it
        call.cancel()
    await asyncio.sleep(0.3)
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert problems == []
    # and the server still serves
    call = stub.Process()
    await call.write(headers("GET", "/v1/models", eos=True))
    assert (await call.read()).request_headers.response.clear_route_cache


async def test_pipeline_failure_answers_503_fail_closed(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenRouting:
        @property
        def current(self) -> Snapshot:
            raise RuntimeError("config holder exploded")

    from extproc.config.model import Snapshot

    server = grpc.aio.server()
    ext_proc_codec.add_to_server(
        ExternalProcessorService(Pipeline(BrokenRouting(), JwtAuthenticator())), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = external_processor_pb2_grpc.ExternalProcessorStub(channel).Process()
            await call.write(headers("GET", "/v1/models", eos=True))
            resp = await call.read()
            assert resp.immediate_response.status.code == 503
            assert json.loads(resp.immediate_response.body)["error"]["code"] == "internal_error"
    finally:
        await server.stop(None)
    assert any("pipeline error" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_ext_authz_check(worker) -> None:
    _, channel = worker
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    req = authz_pb.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host, http.size = "POST", "/v1/chat/completions", "gw", 20
    http.headers.update({"content-type": "application/json", "x-extproc-upstream": "evil"})
    http.raw_body = b'{"model": "gpt-4o"}'
    ok = await stub.Check(req)
    assert ok.status.code == 0
    assert {h.header.key: h.header.value for h in ok.ok_response.headers}["x-extproc-upstream"] == "pool-b"
    http.path = "/nope"
    denied = await stub.Check(req)
    assert denied.denied_response.status.code == 404


async def test_health_and_admin_http(worker) -> None:
    w, channel = worker
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor", "envoy.service.auth.v3.Authorization"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    admin = w.settings.admin

    def get(path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=5) as r:
            return r.status, r.read()

    status, data = await asyncio.to_thread(get, "/readyz")
    assert status == 200 and json.loads(data)["config"]["version"] == w.config.current.version
    status, data = await asyncio.to_thread(get, "/metrics")
    assert status == 200 and b"extproc_decisions_total" in data


async def test_config_reload_is_live_and_bad_file_is_reported(worker) -> None:
    w, channel = worker
    path = w.settings.config_path
    path.write_text(route_pool(path.read_text(), "gpt-4o-mini", "pool-b"))
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)

    async def pool_for_mini() -> str:
        call = stub.Process()
        await call.write(headers("POST", "/v1/chat/completions"))
        await call.read()
        await call.write(body(b'{"model": "gpt-4o-mini"}'))
        resp = await call.read()
        await call.done_writing()
        return set_headers(resp.request_body.response)["x-extproc-upstream"]

    for _ in range(50):
        if await pool_for_mini() == "pool-b":
            break
        await asyncio.sleep(0.1)
    assert await pool_for_mini() == "pool-b"
    good_version = w.config.current.version
    path.write_text("routing: [this is not valid\n")
    for _ in range(50):
        if not w.config.status.healthy:
            break
        await asyncio.sleep(0.1)
    assert not w.status()["config"]["healthy"]
    assert "not valid YAML" in w.status()["config"]["last_error"]
    assert w.config.current.version == good_version
    assert await pool_for_mini() == "pool-b"


async def test_listener_policy_comes_from_grpc_metadata() -> None:
    from extproc.config.loader import parse
    from extproc.config.model import Snapshot

    class Holder:
        current = Snapshot(parse(b"""
listeners:
  internal: {unknown_requests: allow}
routing: {pools: [p], routes: [{id: all, pool: p}]}
""", "listeners.yaml"))

    server = grpc.aio.server()
    pipeline = Pipeline(Holder(), JwtAuthenticator())
    ext_proc_codec.add_to_server(ExternalProcessorService(pipeline), server)
    ext_authz_codec.add_to_server(AuthorizationService(pipeline), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
            for metadata, allowed in ((None, False), ((("x-extproc-listener", "internal"),), True),
                                      ((("x-extproc-listener", "nope"),), False)):
                call = stub.Process(metadata=metadata)
                await call.write(headers("GET", "/internal/thing", eos=True))
                resp = await call.read()
                assert resp.HasField("immediate_response") is not allowed, metadata
                await call.done_writing()
            req = authz_pb.CheckRequest()
            req.attributes.request.http.method, req.attributes.request.http.path = "GET", "/internal/x"
            authz = external_auth_pb2_grpc.AuthorizationStub(channel)
            assert (await authz.Check(req, metadata=(("x-extproc-listener", "internal"),))).status.code == 0
            assert (await authz.Check(req)).denied_response.status.code == 404
    finally:
        await server.stop(None)
