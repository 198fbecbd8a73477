"""JwtAuthenticator with static JWKS and a fake clock: real keys, real signatures, no network."""

from __future__ import annotations

import base64
import json

import pytest
from aiohttp import web

from extproc.domain.reasons import Reason
from extproc.identity.authenticator import JwtAuthenticator
from extproc.identity.cache import VerifiedTokenCache
from extproc.identity.spec import IssuerSpec
from extproc.identity.tokens import TokenError
from tests.jwt_factory import AUDIENCE, ISSUER, TestKey, b64, claims, encode, hmac_forgery, token
from tests.support import free_port

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


RSA = TestKey.make("rsa", "rsa-1")
EC = TestKey.make("ec256", "ec-1")
ED = TestKey.make("ed25519", "ed-1")
ALL_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "EdDSA"})


async def authenticator(keys: list[dict], algorithms=ALL_ALGS, clock: Clock | None = None,
                        cache: VerifiedTokenCache | None = None) -> JwtAuthenticator:
    auth = JwtAuthenticator(cache=cache, clock=clock or Clock())
    auth.configure([IssuerSpec(name="idp", issuer=ISSUER, audiences=(AUDIENCE,), algorithms=algorithms,
                               static_jwks={"keys": keys})])
    return auth


async def fails(auth: JwtAuthenticator, tok: str) -> Reason:
    with pytest.raises(TokenError) as info:
        await auth.authenticate(f"Bearer {tok}")
    return info.value.reason


@pytest.mark.parametrize(("key", "alg"), [
    (RSA, "RS256"), (RSA, "RS384"), (RSA, "RS512"), (RSA, "PS256"), (RSA, "PS384"), (RSA, "PS512"),
    (EC, "ES256"), (ED, "EdDSA"),
])
async def test_each_supported_algorithm_verifies(key: TestKey, alg: str) -> None:
    auth = await authenticator([RSA.jwk(), EC.jwk(), ED.jwk()])
    identity = await auth.authenticate(f"Bearer {token(key, alg, claims(now=NOW))}")
    assert identity.tenant == "acme" and identity.verified
    await auth.close()


async def test_tampered_payload_and_wrong_key_fail_signature() -> None:
    auth = await authenticator([RSA.jwk()])
    good = token(RSA, "RS256", claims(now=NOW))
    head, _, sig = good.split(".")
    forged = f"{head}.{b64(json.dumps(claims(now=NOW, tenant_id='globex')).encode())}.{sig}"
    assert await fails(auth, forged) is Reason.INVALID_SIGNATURE
    other = TestKey.make("rsa", "rsa-1")  # same kid, different key
    assert await fails(auth, token(other, "RS256", claims(now=NOW))) is Reason.INVALID_SIGNATURE
    await auth.close()


def _public_key_encodings(key: TestKey) -> list[bytes]:
    pem = key.public_pem()
    der = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
    return [pem, pem.strip(), der, base64.b64encode(der), json.dumps(key.jwk()).encode(),
            json.dumps(key.jwk(), separators=(",", ":")).encode(),
            base64.urlsafe_b64decode(key.jwk()["n"] + "==")]


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_forgery_with_the_public_key_is_rejected_in_every_encoding(alg: str) -> None:
    """python-jose <= 3.5 verifies HS* with a public key as the secret; we never allow HS*."""
    auth = await authenticator([RSA.jwk()], algorithms=frozenset({"RS256"}))
    for secret in _public_key_encodings(RSA):
        forged = hmac_forgery(secret, claims(now=NOW), alg, kid=RSA.kid)
        assert await fails(auth, forged) is Reason.ALGORITHM_NOT_ALLOWED
    await auth.close()


async def test_jwk_alg_pins_the_key_and_alg_must_fit_the_key_type() -> None:
    auth = await authenticator([RSA.jwk(alg="RS256"), EC.jwk()])
    assert await fails(auth, token(RSA, "RS512", claims(now=NOW))) is Reason.ALGORITHM_NOT_ALLOWED
    # An RSA key id with an EC algorithm: never tried with the wrong key type.
    ec_signed_with_rsa_kid = token(EC, "ES256", claims(now=NOW), kid=RSA.kid)
    assert await fails(auth, ec_signed_with_rsa_kid) is Reason.ALGORITHM_NOT_ALLOWED
    # Algorithms the issuer does not allow, even though the key could.
    strict = await authenticator([RSA.jwk()], algorithms=frozenset({"RS256"}))
    assert await fails(strict, token(RSA, "PS256", claims(now=NOW))) is Reason.ALGORITHM_NOT_ALLOWED
    await auth.close()
    await strict.close()


async def test_small_rsa_keys_and_hmac_keys_in_the_jwks_are_never_used() -> None:
    weak = TestKey.make("rsa", "weak", bits=1024)
    auth = await authenticator([weak.jwk(), {"kty": "oct", "k": b64(b"secret"), "kid": "hmac"}, RSA.jwk()])
    assert await fails(auth, token(weak, "RS256", claims(now=NOW))) is Reason.UNKNOWN_SIGNING_KEY
    assert await fails(auth, hmac_forgery(b"secret", claims(now=NOW), kid="hmac")) is Reason.ALGORITHM_NOT_ALLOWED
    await auth.close()


async def test_key_pointing_headers_are_never_followed() -> None:
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"keys": [attacker.jwk()]})

    attacker = TestKey.make("rsa", "attacker")
    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        auth = await authenticator([RSA.jwk()])
        url = f"http://127.0.0.1:{port}/jwks.json"
        for extra in ({"jku": url}, {"x5u": url}, {"jwk": attacker.jwk()}, {"jku": url, "kid": None}):
            forged = token(attacker, "RS256", claims(now=NOW), **extra)
            assert await fails(auth, forged) in (Reason.UNKNOWN_SIGNING_KEY, Reason.INVALID_SIGNATURE)
        assert hits == []
        await auth.close()
    finally:
        await runner.cleanup()


async def test_untrusted_issuer_and_unknown_kid() -> None:
    auth = await authenticator([RSA.jwk()])
    assert await fails(auth, token(RSA, "RS256", claims(now=NOW, iss="https://other"))) is Reason.UNTRUSTED_ISSUER
    stranger = TestKey.make("rsa", "stranger")
    assert await fails(auth, token(stranger, "RS256", claims(now=NOW))) is Reason.UNKNOWN_SIGNING_KEY
    await auth.close()


async def test_verified_tokens_are_cached_until_exp() -> None:
    clock = Clock()
    cache = VerifiedTokenCache()
    auth = await authenticator([RSA.jwk()], clock=clock, cache=cache)
    tok = token(RSA, "RS256", claims(now=NOW, ttl=120))
    first = await auth.authenticate(f"Bearer {tok}")
    assert len(cache) == 1
    assert await auth.authenticate(f"Bearer {tok}") is first  # served from the cache
    clock.now = NOW + 119
    assert await auth.authenticate(f"Bearer {tok}") is first
    clock.now = NOW + 120  # the cache entry ends at exp; the leeway still lets it verify again
    again = await auth.authenticate(f"Bearer {tok}")
    assert again == first and again is not first
    clock.now = NOW + 151
    assert await fails(auth, tok) is Reason.TOKEN_EXPIRED
    await auth.close()


async def test_cache_is_bounded_and_forgets_keys_that_left() -> None:
    cache = VerifiedTokenCache(max_entries=10)
    auth = await authenticator([RSA.jwk(), EC.jwk()], cache=cache)
    for i in range(25):
        await auth.authenticate(f"Bearer {token(RSA, 'RS256', claims(tenant=f't{i}', now=NOW))}")
    assert len(cache) <= 10
    await auth.authenticate(f"Bearer {token(EC, 'ES256', claims(now=NOW))}")
    dropped = cache.drop_keys("idp", frozenset({RSA.kid}))
    assert dropped >= 1 and len(cache) == 1
    await auth.close()


def test_parse_never_echoes_the_token() -> None:
    head = encode({"alg": "RS256"}, {"secret": "s3cr3t"})
    with pytest.raises(TokenError) as info:
        from extproc.identity.tokens import parse
        parse(head + ".***")
    assert "s3cr3t" not in str(info.value) and head not in str(info.value)
