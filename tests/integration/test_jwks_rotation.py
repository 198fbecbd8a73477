"""Key rotation against the real demo issuer over HTTP: discovery, refresh, unknown kids, outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from extproc.devstack.issuer import build_issuer_app
from extproc.devstack.keys import DEMO_AUDIENCE, KeyStore, SigningKey, mint_token
from extproc.domain.reasons import Reason
from extproc.identity.authenticator import IdentityUnavailable, JwtAuthenticator
from extproc.identity.spec import IssuerSpec
from extproc.identity.tokens import TokenError
from tests.jwt_factory import encode
from tests.support import free_port


class Issuer:
    def __init__(self, store: KeyStore, port: int) -> None:
        self.store = store
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.runner: web.AppRunner | None = None
        self.jwks_hits = 0

    async def start(self) -> None:
        app = build_issuer_app(self.url, self.store)

        @web.middleware
        async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
            if request.path == "/jwks.json":
                self.jwks_hits += 1
            return await handler(request)

        app.middlewares.append(count)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()
            self.runner = None

    async def rotate(self) -> str:
        async with aiohttp.ClientSession() as s, s.post(f"{self.url}/rotate") as r:
            return str((await r.json())["kid"])

    def token(self, key: SigningKey | None = None, **kw) -> str:  # type: ignore[no-untyped-def]
        return mint_token(key or self.store.current(), "acme", "pro", issuer=self.url, **kw)


@pytest.fixture
async def issuer(tmp_path: Path) -> AsyncIterator[Issuer]:
    i = Issuer(KeyStore(tmp_path / "keys"), free_port())
    await i.start()
    yield i
    await i.stop()


def spec(url: str, cooldown: float = 0.5) -> IssuerSpec:
    return IssuerSpec(name="demo", issuer=url, audiences=(DEMO_AUDIENCE,), refresh_seconds=300,
                      min_refresh_seconds=1, unknown_kid_cooldown_seconds=cooldown, fetch_timeout_seconds=1)


async def reason(auth: JwtAuthenticator, tok: str) -> Reason:
    with pytest.raises(TokenError) as info:
        await auth.authenticate(f"Bearer {tok}")
    return info.value.reason


async def test_rotation_new_key_accepted_removed_key_refused(issuer: Issuer) -> None:
    auth = JwtAuthenticator()
    auth.configure([spec(issuer.url)])
    try:
        assert await auth.wait_ready(10)
        key1 = issuer.store.current()
        tok1 = issuer.token(key1)
        assert (await auth.authenticate(f"Bearer {tok1}")).tenant == "acme"

        await issuer.rotate()  # key2 signs from now on; key1 still published
        tok2 = issuer.token()
        hits = issuer.jwks_hits
        assert (await auth.authenticate(f"Bearer {tok2}")).tenant == "acme"  # unknown kid → one refetch
        assert issuer.jwks_hits == hits + 1
        assert (await auth.authenticate(f"Bearer {tok1}")).tenant == "acme"  # still published

        await asyncio.sleep(0.6)  # past the unknown-kid cooldown
        await issuer.rotate()  # key3 signs; key1 is retired from the JWKS
        tok3 = issuer.token()
        assert (await auth.authenticate(f"Bearer {tok3}")).tenant == "acme"
        # tok1 was verified and cached before; its key left the JWKS, so it is refused now.
        assert await reason(auth, tok1) is Reason.UNKNOWN_SIGNING_KEY
        assert (await auth.authenticate(f"Bearer {tok2}")).tenant == "acme"
    finally:
        await auth.close()


async def test_a_flood_of_unknown_kids_is_not_a_flood_of_fetches(issuer: Issuer) -> None:
    auth = JwtAuthenticator()
    auth.configure([spec(issuer.url, cooldown=30)])
    try:
        assert await auth.wait_ready(10)
        hits = issuer.jwks_hits
        payload = {"iss": issuer.url, "aud": DEMO_AUDIENCE, "tenant_id": "acme", "exp": 4_000_000_000}
        forged = [f"{encode({'alg': 'RS256', 'kid': f'random-{i}'}, payload)}.c2ln" for i in range(200)]
        results = await asyncio.gather(*(reason(auth, t) for t in forged))
        assert set(results) == {Reason.UNKNOWN_SIGNING_KEY}
        assert issuer.jwks_hits - hits <= 1
    finally:
        await auth.close()


async def test_issuer_down_keeps_last_good_keys_and_says_so(issuer: Issuer) -> None:
    auth = JwtAuthenticator()
    auth.configure([spec(issuer.url, cooldown=0.1)])
    try:
        assert await auth.wait_ready(10)
        tok = issuer.token()
        await issuer.stop()
        keys = next(iter(auth._issuers.values()))
        assert await keys.refresh() is False
        status = auth.status()["demo"]
        assert status["healthy"] is False and "GET" in status["last_error"]
        assert status["keys"]  # still the last good ones
        assert (await auth.authenticate(f"Bearer {tok}")).tenant == "acme"
        # An unknown kid while the issuer is down: a bounded wait, then 401, not a hang.
        stranger = issuer.token(SigningKey("new-kid", issuer.store.current().private_pem))
        assert await asyncio.wait_for(reason(auth, stranger), 5) is Reason.UNKNOWN_SIGNING_KEY
    finally:
        await auth.close()


async def test_never_fetched_issuer_is_503_not_401() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    auth = JwtAuthenticator()
    auth.configure([spec(url)])
    try:
        tok = mint_token(_throwaway_key(), "acme", issuer=url)
        with pytest.raises(IdentityUnavailable):
            await auth.authenticate(f"Bearer {tok}")
    finally:
        await auth.close()


def _throwaway_key() -> SigningKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return SigningKey("k", pem)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_hanging_issuer_does_not_make_unknown_kids_wait(issuer: Issuer) -> None:
    """Regression (hardening #13): while the issuer hung, every unknown-kid request waited for
    the fetch. Now concurrent requests share one fetch, wait only while it is young, and a kid
    found missing is answered at once until the cooldown ends."""
    hung = asyncio.Event()
    hits = 0

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hits
        hits += 1
        await hung.wait()  # accepts, never answers
        writer.close()

    port = free_port()
    server = await asyncio.start_server(hang, "127.0.0.1", port)
    clock = FakeClock()
    from extproc.identity.jwks import IssuerKeys

    hanging = IssuerSpec(name="slow", issuer=issuer.url, audiences=(DEMO_AUDIENCE,),
                         jwks_uri=f"http://127.0.0.1:{port}/jwks.json", unknown_kid_cooldown_seconds=60,
                         fetch_timeout_seconds=120)
    async with aiohttp.ClientSession() as session:
        keys = IssuerKeys(hanging, session, lambda *_: None, clock=clock)
        try:
            # Ten requests for one unknown kid at once: one fetch, each waits only the short wait.
            first = await asyncio.wait_for(asyncio.gather(
                *(keys.refetch_for_unknown_kid("k-new", 0.2) for _ in range(10))), 10)
            assert first == [False] * 10 and hits == 1
            # The same kid again, with a long wait allowed: known missing, answered at once
            # (it used to wait for the hanging fetch: this wait_for would time out).
            assert await asyncio.wait_for(keys.refetch_for_unknown_kid("k-new", 60), 5) is False
            # Another kid, once the fetch is older than the wait: no waiting either (the fetch
            # started 100 s ago on the fake clock; a request may wait for it until it is 60 s old).
            clock.now += 100
            assert await asyncio.wait_for(keys.refetch_for_unknown_kid("k-other", 60), 5) is False
            assert hits == 1  # still the one fetch, shared
        finally:
            hung.set()
            server.close()
            await server.wait_closed()
