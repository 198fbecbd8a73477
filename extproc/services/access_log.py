"""``envoy.service.accesslog.v3.AccessLogService``: Envoy's batched "these requests ended" →
settlement. Thin: decode a batch, hand it over, never make Envoy wait."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from extproc.envoy_api import access_log as codec
from extproc.settlement.settler import Settler

log = logging.getLogger("extproc.access_log")


class AccessLogService(codec.Servicer):  # type: ignore[misc]
    def __init__(self, settler: Settler) -> None:
        self._settler = settler

    async def StreamAccessLogs(self, request_iterator: AsyncIterator[codec.StreamAccessLogsMessage],
                               context: grpc.aio.ServicerContext) -> codec.StreamAccessLogsResponse:
        """One stream per Envoy worker, open for as long as Envoy runs: each message a batch."""
        try:
            async for message in request_iterator:
                try:
                    events = codec.request_ends(message)
                except Exception:
                    log.exception("an access-log batch could not be read; the sweeper settles its "
                                  "requests")
                    continue
                if events:
                    self._settler.submit(events)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            pass  # Envoy closed the stream (it reconnects on its next batch)
        return codec.EMPTY_RESPONSE
