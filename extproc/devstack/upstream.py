"""A demo OpenAI-compatible model pool: JSON and SSE streaming answers, each carrying ``usage``.

Every response names the pool in ``x-demo-pool`` and echoes the ``x-extproc-*``
headers that reached it in ``x-demo-extproc-headers`` (JSON), so a person or a
test can see what the gateway sent upstream. ``x-demo-reset: after-first`` on a streaming
request drops the connection after the first chunk. ``x-demo-hold: TOKEN`` on a streaming
request pauses the stream after its first event until ``POST /__demo/release/TOKEN``;
``x-demo-status: 503`` (any 4xx/5xx, or 204 for no body) makes the pool answer that status instead; with
``x-demo-status-pools: pool-a,pool-c`` only the pools named there do (fallback tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

_HOLD_SECONDS = 30.0


def _estimate_tokens(payload: Any) -> int:
    return max(1, len(json.dumps(payload)) // 4)


class DemoPool:
    def __init__(self, name: str) -> None:
        self.name = name
        self._holds: dict[str, asyncio.Event] = {}

    def app(self) -> web.Application:
        @web.middleware
        async def fail_on_request(request: web.Request, handler):  # type: ignore[no-untyped-def]
            # ``x-demo-status: 500`` makes the pool fail that request (for failure tests).
            status = request.headers.get("x-demo-status", "")
            only = request.headers.get("x-demo-status-pools")
            if only is not None and self.name not in only.split(","):
                status = ""
            if status == "204":  # a response without a body (nothing for the usage reader to read)
                await request.read()
                return web.Response(status=204, headers=self._headers(request))
            if status.isdigit() and 400 <= int(status) <= 599:
                await request.read()
                return web.json_response({"error": {"message": f"demo failure {status}"}},
                                         status=int(status), headers=self._headers(request))
            return await handler(request)

        app = web.Application(client_max_size=64 << 20, middlewares=[fail_on_request])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/messages", self.anthropic)
        app.router.add_post("/v1/audio/transcriptions", self.transcription)
        app.router.add_post("/__demo/release/{token}", self.release)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    def _headers(self, request: web.Request, body: dict[str, Any] | None = None) -> dict[str, str]:
        seen = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-extproc-")}
        out = {"x-demo-pool": self.name, "x-demo-extproc-headers": json.dumps(seen, sort_keys=True)}
        if "traceparent" in request.headers:
            out["x-demo-traceparent"] = request.headers["traceparent"]  # what Envoy propagated
        if body is not None and "max_tokens" in body:
            out["x-demo-max-tokens"] = str(body["max_tokens"])  # what the gateway let through
        return out

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return {}
        return body if isinstance(body, dict) else {}

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        model = str(body.get("model", "unknown"))
        text = f"Hello from {self.name}, answering as {model}."
        words = text.split(" ")
        prompt_tokens = _estimate_tokens(body.get("messages", body.get("prompt", "")))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        rid = f"chatcmpl-{self.name}-{time.monotonic_ns()}"
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": rid, "object": "chat.completion", "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": usage,
                },
                headers=self._headers(request, body),
            )
        resp = web.StreamResponse(headers={**self._headers(request, body),
                                           "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        hold = request.headers.get("x-demo-hold")
        for i, word in enumerate(words):
            chunk = {"id": rid, "object": "chat.completion.chunk", "model": model,
                     "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if i == 0 and request.headers.get("x-demo-reset") == "after-first":
                # The upstream dies mid-stream (after the client has its first chunk): the
                # connection goes without a final chunk.
                await asyncio.sleep(0.2)
                assert request.transport is not None
                request.transport.abort()
                return resp
            if i == 0 and hold:
                event = self._holds.setdefault(hold, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), _HOLD_SECONDS)
                self._holds.pop(hold, None)
        final = {"id": rid, "object": "chat.completion.chunk", "model": model,
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await resp.write(f"data: {json.dumps(final)}\n\n".encode())
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:  # as OpenAI: if asked
            usage_chunk = {"id": rid, "object": "chat.completion.chunk", "model": model, "choices": [],
                           "usage": usage}
            await resp.write(f"data: {json.dumps(usage_chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        inputs = body.get("input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        tokens = _estimate_tokens(inputs)
        return web.json_response(
            {
                "object": "list", "model": body.get("model", "unknown"),
                "data": [{"object": "embedding", "index": i, "embedding": [0.0, 0.1, 0.2]}
                         for i in range(len(items))],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            headers=self._headers(request),
        )

    async def anthropic(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        text = f"Hello from {self.name}."
        return web.json_response(
            {
                "id": f"msg-{time.monotonic_ns()}", "type": "message", "role": "assistant",
                "model": body.get("model", "unknown"),
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                "usage": {"input_tokens": _estimate_tokens(body.get("messages", "")),
                          "output_tokens": len(text.split())},
            },
            headers=self._headers(request),
        )

    async def transcription(self, request: web.Request) -> web.Response:
        """A form, as OpenAI's transcription API takes it: the model is a form field."""
        form = await request.post()
        model = form.get("model")
        audio = form.get("file")
        size = len(audio.file.read()) if isinstance(audio, web.FileField) else 0
        return web.json_response({"text": f"{size} bytes of audio, transcribed by {self.name}",
                                  "model": model if isinstance(model, str) else "unknown"},
                                 headers=self._headers(request))

    async def release(self, request: web.Request) -> web.Response:
        self._holds.setdefault(request.match_info["token"], asyncio.Event()).set()
        return web.json_response({"released": True})

    async def echo(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"pool": self.name, "method": request.method, "path": request.path},
            headers=self._headers(request),
        )
