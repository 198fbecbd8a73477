"""Test helpers: free ports, waiting for servers, child processes that always get stopped."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


_LOW, _HIGH = 20000, 32000  # below the kernel's ephemeral range (32768+)
_handed_out: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free loopback port outside the ephemeral range, so outgoing connections cannot take it
    between now and the moment a server binds it; never the same one twice in a test run."""
    for _ in range(1000):
        port = random.randint(_LOW, _HIGH)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port")


def free_port_block(n: int) -> int:
    """A base port such that base .. base+n-1 are all free (for --workers N)."""
    for _ in range(200):
        base = random.randint(_LOW, _HIGH - n)
        block = range(base, base + n)
        if not _handed_out.intersection(block) and all(_bindable(p) for p in block):
            _handed_out.update(block)
            return base
    raise RuntimeError(f"no block of {n} free ports")


def envoy_binary() -> str:
    candidate = VENV_BIN / "envoy"
    return str(candidate) if candidate.exists() else "envoy"


def wait_http(url: str, timeout: float = 20.0, expect: int = 200, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while waiting for {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == expect:
                    return
                last = resp.status
        except urllib.error.HTTPError as exc:
            last = exc.code
            if exc.code == expect:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last})")


class Child:
    """A child process whose output goes to a log file; stopped (then killed) on exit."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self._log.closed:
            return self.proc.returncode
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def sidecar_command(config: Path, listen: list[str], admin: str | None, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "extproc", "serve", "--config", str(config)]
    for address in listen:
        cmd += ["--listen", address]
    cmd += ["--admin", admin] if admin else ["--no-admin"]
    return cmd + list(extra)


def route_pool(policy_text: str, route_id: str, pool: str) -> str:
    """The policy with routing entry ``route_id`` sent to ``pool``."""
    import yaml

    doc = yaml.safe_load(policy_text)
    for route in doc["routing"]["routes"]:
        if route.get("id") == route_id:
            route["pool"] = pool
    return yaml.safe_dump(doc, sort_keys=False)


def open_policy_text() -> str:
    """The demo policy without identity: for tests of the layers that do not involve tokens."""
    import yaml

    from extproc.devstack.demo import DEMO_CONFIG

    doc = yaml.safe_load(DEMO_CONFIG.read_text())
    doc.pop("identity", None)
    doc.pop("access", None)
    for listener in doc.get("listeners", {}).values():
        listener["authentication"] = "none"
    return yaml.safe_dump(doc, sort_keys=False)
