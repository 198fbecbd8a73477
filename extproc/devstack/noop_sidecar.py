"""The do-nothing sidecar for perf/: the same grpc.aio stack and Envoy processing modes as the
real one, without any policy. It continues every ext_proc message (asking for the body of
requests that have one, as the real sidecar does for body-reading rules; the response is never
sent, as for the real one) and allows every ext_authz check.
The gap between it and the real sidecar is the cost of our policy code.
"""

from __future__ import annotations

import asyncio
import signal

import grpc

from extproc.domain.classify import WorkloadClass
from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.domain.reasons import Reason
from extproc.envoy_api import ext_authz, ext_proc
from extproc.runtime import settle_heap

# The one thing it must do for Envoy's route to work at all: name a pool, always the same.
_FIXED = Decision("noop", Reason.ALLOWED, workload=WorkloadClass.UNKNOWN, upstream="pool-a")
_NO_FACTS = RequestFacts(method="", path="", host="", headers={})
_ROUTE_HEADERS = ext_proc.decided(_FIXED, _NO_FACTS, "headers")
_ROUTE_BODY = ext_proc.decided(_FIXED, _NO_FACTS, "body")
_READ_BODY = ext_proc.read_body(_NO_FACTS)


class NoopProcessor(ext_proc.Servicer):  # type: ignore[misc]
    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                kind = request.WhichOneof("request")
                if kind == "request_headers":
                    if request.request_headers.end_of_stream:
                        await context.write(_ROUTE_HEADERS)
                    else:
                        await context.write(_READ_BODY)
                elif kind == "request_body":
                    await context.write(_ROUTE_BODY)
                else:
                    await context.write(ext_proc.passthrough(kind))
        except (asyncio.CancelledError, grpc.aio.AbortError, grpc.aio.UsageError):
            return


class NoopAuthorization(ext_authz.Servicer):  # type: ignore[misc]
    async def Check(self, request: ext_authz.CheckRequest, context: grpc.aio.ServicerContext) -> bytes:
        return _AUTHZ_OK


_AUTHZ_OK = ext_authz.response(_FIXED, _NO_FACTS)


async def serve(listen: list[str]) -> None:
    server = grpc.aio.server(options=[("grpc.keepalive_permit_without_calls", 1),
                                      ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
                                      ("grpc.http2.max_ping_strikes", 0)])
    ext_proc.add_to_server(NoopProcessor(), server)
    ext_authz.add_to_server(NoopAuthorization(), server)
    for address in listen:
        server.add_insecure_port(address)
    settle_heap()  # as the real sidecar does (runtime.py)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
