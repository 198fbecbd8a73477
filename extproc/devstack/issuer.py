"""A demo OIDC issuer over HTTP: discovery document and JWKS (the real protocol, a demo key)."""

from __future__ import annotations

from aiohttp import web

from extproc.devstack.keys import SigningKey


def build_issuer_app(issuer: str, keys: list[SigningKey]) -> web.Application:
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
            {"keys": [k.public_jwk() for k in keys]},
            headers={"Cache-Control": "public, max-age=300"},
        )

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks.json", jwks)
    return app
