"""A demo OIDC issuer over HTTP: discovery document and JWKS with rotating keys.

``POST /rotate`` adds a new signing key (the previous one stays published for
one more rotation), so key rotation can be watched end to end.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from extproc.devstack.keys import KeyStore


def build_issuer_app(issuer: str, store: KeyStore, rotate_every: float | None = None) -> web.Application:
    async def discovery(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": issuer,
                "jwks_uri": f"{issuer}/jwks.json",
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
            },
            headers={"Cache-Control": "public, max-age=300"},
        )

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(
            {"keys": [k.public_jwk() for k in store.published()]},
            headers={"Cache-Control": "public, max-age=60"},
        )

    async def rotate(_: web.Request) -> web.Response:
        key = store.rotate()
        return web.json_response({"kid": key.kid, "published": [k.kid for k in store.published()]})

    async def rotate_periodically(app: web.Application):  # type: ignore[no-untyped-def]
        async def loop() -> None:
            while True:
                await asyncio.sleep(rotate_every or 0)
                store.rotate()

        task = asyncio.create_task(loop()) if rotate_every else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks.json", jwks)
    app.router.add_post("/rotate", rotate)
    app.cleanup_ctx.append(rotate_periodically)
    return app
