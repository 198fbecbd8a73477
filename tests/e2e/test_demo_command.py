"""`extproc demo` (what `make run` runs): everything starts, a routed 200, Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from jose import jwt

from extproc.devstack.demo import DemoPorts, port_in_use
from tests.support import wait_http

pytestmark = pytest.mark.e2e


def _free(port: int) -> bool:
    return not port_in_use(port)


def _offset() -> int:
    for offset in range(1000, 15000, 737):
        if all(_free(p) for p in DemoPorts().shifted(offset).all()):
            return offset
    pytest.fail("no free block of demo ports")


def test_demo_runs_the_whole_gateway_and_stops_everything(tmp_path: Path) -> None:
    offset = _offset()
    ports = DemoPorts().shifted(offset)
    env = {**os.environ, "EXTPROC_DEMO_DIR": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "demo.out", "wb")  # noqa: SIM115
    demo = subprocess.Popen([sys.executable, "-m", "extproc", "demo", "--port-offset", str(offset),
                             "--run-dir", str(tmp_path / "run")], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while b"extproc demo is running" not in (tmp_path / "demo.out").read_bytes():
            assert demo.poll() is None, (tmp_path / "demo.out").read_text()
            assert time.monotonic() < deadline, "demo did not come up"
            time.sleep(0.2)
        banner = (tmp_path / "demo.out").read_text()
        assert f"http://127.0.0.1:{ports.envoy.ext_proc}" in banner

        issuer = f"http://127.0.0.1:{ports.issuer}"
        token = subprocess.run([sys.executable, "-m", "extproc", "token", "--tenant", "acme", "--plan", "pro",
                                "--issuer", issuer], capture_output=True, text=True, env=env, check=True).stdout
        assert token.count("\n") == 1 and token.count(".") == 2  # only the token
        token = token.strip()
        # The demo issuer serves real OIDC discovery + JWKS that verify the minted token.
        with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration") as r:
            discovery = json.loads(r.read())
        with urllib.request.urlopen(discovery["jwks_uri"]) as r:
            jwks = json.loads(r.read())
        claims = jwt.decode(token, jwks, algorithms=["RS256"], audience="extproc-demo", issuer=issuer)
        assert (claims["tenant_id"], claims["plan"]) == ("acme", "pro")

        req = urllib.request.Request(
            f"http://127.0.0.1:{ports.envoy.ext_proc}/v1/chat/completions",
            data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            assert r.headers["x-demo-pool"] == "pool-a"
            decision_id = r.headers["x-extproc-decision-id"]
            assert json.loads(r.read())["usage"]["total_tokens"] > 0
        wait_http(f"http://127.0.0.1:{ports.sidecar_admin}/readyz")
        # The banner's record commands answer for that request.
        redis_url = f"redis://127.0.0.1:{ports.redis}/0"
        deadline = time.monotonic() + 10
        while (explained := subprocess.run(
                [sys.executable, "-m", "extproc", "explain", decision_id, "--redis-url", redis_url],
                capture_output=True, text=True, env=env)).returncode != 0:
            assert time.monotonic() < deadline, explained.stdout + explained.stderr
            time.sleep(0.2)
        assert "ALLOWED" in explained.stdout and "tenant 'acme'" in explained.stdout
        admin_token = (tmp_path / "run" / "admin-token").read_text()
        req = urllib.request.Request(f"http://127.0.0.1:{ports.sidecar_admin}/v1/usage?tenant=acme",
                                     headers={"authorization": f"Bearer {admin_token}"})
        deadline = time.monotonic() + 10
        while True:  # the usage record is written just after the response
            with urllib.request.urlopen(req, timeout=10) as r:
                if json.loads(r.read())["total"]["requests"] >= 1:
                    break
            assert time.monotonic() < deadline, "no usage record for the demo request"
            time.sleep(0.2)
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "demo.out").read_text()
    # Every process it started is gone: all its ports are free again.
    deadline = time.monotonic() + 10
    while not all(_free(p) for p in ports.all()):
        assert time.monotonic() < deadline, [p for p in ports.all() if not _free(p)]
        time.sleep(0.2)


def test_demo_refuses_busy_ports(tmp_path: Path) -> None:
    offset = _offset()
    ports = DemoPorts().shifted(offset)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port may be in TIME_WAIT
        s.bind(("127.0.0.1", ports.envoy.ext_proc))
        s.listen()
        out = subprocess.run([sys.executable, "-m", "extproc", "demo", "--port-offset", str(offset),
                              "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"ports already in use: {ports.envoy.ext_proc}" in out.stderr
