"""``envoy.service.accesslog.v3.AccessLogService``: Envoy's batched "these requests ended" →
settlement. Thin: decode a batch, hand it over, never make Envoy wait."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from extproc.envoy_api import access_log as codec
from extproc.settlement.events import RequestEnded
from extproc.settlement.settler import Settler

log = logging.getLogger("extproc.access_log")


class AccessLogService(codec.Servicer):  # type: ignore[misc]
    def __init__(self, settler: Settler) -> None:
        self._settler = settler
        self._settling: set[asyncio.Task[None]] = set()

    async def StreamAccessLogs(self, request_iterator: AsyncIterator[codec.StreamAccessLogsMessage],
                               context: grpc.aio.ServicerContext) -> codec.StreamAccessLogsResponse:
        """One stream per Envoy worker, open for as long as Envoy runs: each message a batch."""
        try:
            async for message in request_iterator:
                try:
                    events = codec.request_ends(message)
                except Exception:
                    log.exception("an access-log batch could not be read; its requests are settled by "
                                  "their deciding streams")
                    continue
                if events:
                    self._settle(events)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            pass  # Envoy closed the stream (it reconnects on its next batch)
        return codec.EMPTY_RESPONSE

    def _settle(self, events: list[RequestEnded]) -> None:
        """A task of its own: the stream goes on reading the next batch meanwhile."""
        task = asyncio.get_running_loop().create_task(self._settler.ended(events))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def drain(self) -> None:
        """Wait for settlements still in flight (shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
