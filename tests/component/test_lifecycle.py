"""The `extproc serve` process: graceful SIGTERM drain, --workers N, Unix sockets, bad config."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.component.test_grpc_services import body, headers
from tests.support import Child, free_port, free_port_block, open_policy_text, sidecar_command, wait_http


async def wait_serving(address: str, timeout: float = 20.0) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(address)
            await asyncio.sleep(0.1)


async def test_sigterm_reports_not_serving_and_drains_inflight_streams(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(open_policy_text())
    port = free_port()
    address = f"127.0.0.1:{port}"
    child = Child("sidecar", sidecar_command(policy, [address], None, "--drain-seconds", "5",
                                             "--shutdown-delay", "1"), tmp_path)
    try:
        await wait_serving(address)
        async with grpc.aio.insecure_channel(address) as channel:
            call = external_processor_pb2_grpc.ExternalProcessorStub(channel).Process()
            await call.write(headers("POST", "/v1/chat/completions"))
            await call.read()  # the stream is now in flight, waiting for the body
            child.signal(signal.SIGTERM)
            health = health_pb2_grpc.HealthStub(channel)
            statuses = []
            for _ in range(20):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                statuses.append(resp.status)
                if resp.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.05)
            assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
            await asyncio.sleep(1.2)  # past the shutdown delay: draining, stream still served
            await call.write(body(b'{"model": "gpt-4o"}'))
            resp = await call.read()
            assert resp.request_body.response.clear_route_cache
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
        assert child.proc.wait(timeout=10) == 0
        log = child.log()
        assert '"draining"' in log and '"stopped"' in log
        assert "Traceback" not in log
    finally:
        child.stop()


async def test_workers_each_serve_their_own_port_and_socket(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(open_policy_text())
    port, admin = free_port_block(2), free_port_block(2)
    sock = tmp_path / "ext.sock"
    child = Child("sidecar", sidecar_command(policy, [f"127.0.0.1:{port}", f"unix:{sock}"],
                                             f"127.0.0.1:{admin}", "--workers", "2"), tmp_path)
    try:
        for i in range(2):
            for address in (f"127.0.0.1:{port + i}", f"unix:{tmp_path / f'ext-{i}.sock'}"):
                await wait_serving(address)
                async with grpc.aio.insecure_channel(address) as channel:
                    call = external_processor_pb2_grpc.ExternalProcessorStub(channel).Process()
                    await call.write(headers("GET", "/v1/models", eos=True))
                    assert (await call.read()).request_headers.response.clear_route_cache
                    await call.done_writing()
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{admin + i}/readyz")
        pids = set()
        for i in range(2):
            with urllib.request.urlopen(f"http://127.0.0.1:{admin + i}/status") as r:
                pids.add(json.loads(r.read())["pid"])
        assert len(pids) == 2
        # Metrics are multi-process: each worker's /metrics counts every worker's decisions.
        for i in range(2):
            with urllib.request.urlopen(f"http://127.0.0.1:{admin + i}/metrics") as r:
                text = r.read().decode()
            total = sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                        if line.startswith("extproc_decisions_total{"))
            assert total == 4, text[:2000]  # 2 workers x (TCP + socket)
    finally:
        assert child.stop() == 0
    assert "Traceback" not in child.log()


def test_bad_config_refuses_to_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routing: {pools: []}\n")
    out = subprocess.run([sys.executable, "-m", "extproc", "serve", "--config", str(bad), "--no-admin"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert f"{bad}: routing.pools" in out.stderr
