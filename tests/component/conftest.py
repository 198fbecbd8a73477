from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from extproc.app import Worker
from extproc.settings import Settings
from tests.support import free_port, open_policy_text


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[tuple[Worker, grpc.aio.Channel]]:
    """A real worker (gRPC server + admin HTTP) in this event loop, and a channel to it."""
    config = tmp_path / "policy.yaml"
    config.write_text(open_policy_text())
    port, admin = free_port(), free_port()
    settings = Settings(config_path=config, listen=(f"127.0.0.1:{port}",), admin=f"127.0.0.1:{admin}",
                        drain_seconds=1.0, reload_interval=0.1)
    w = Worker(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    await asyncio.wait_for(channel.channel_ready(), 10)
    for _ in range(100):
        if w.serving:
            break
        await asyncio.sleep(0.02)
    try:
        yield w, channel
    finally:
        await channel.close()
        stop.set()
        await asyncio.wait_for(task, 10)
