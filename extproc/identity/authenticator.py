"""Bearer JWT → verified ``Identity``, on the hot path without blocking it.

A repeat token costs a SHA-256 and a dict lookup (``VerifiedTokenCache``). A new
token is parsed, its issuer picked by the (unverified) ``iss`` claim among the
configured issuers only, its signature checked with that issuer's keys only, with
an algorithm the issuer and the key allow, then its claims validated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from extproc.domain.identity import Identity
from extproc.domain.reasons import Reason
from extproc.identity.cache import VerifiedTokenCache
from extproc.identity.jwks import IssuerKeys
from extproc.identity.spec import IssuerSpec
from extproc.identity.tokens import TokenError, bearer_token, identity_from_claims, parse
from extproc.telemetry.metrics import TOKEN_CACHE

_CACHE_HIT = TOKEN_CACHE.labels("hit")
_CACHE_MISS = TOKEN_CACHE.labels("miss")

log = logging.getLogger("extproc.identity")

#: How long a request with an unknown ``kid`` may wait for the (rate-limited)
#: JWKS refetch it triggered. Well under Envoy's ext_proc message timeout.
UNKNOWN_KID_WAIT_SECONDS = 0.3


class IdentityUnavailable(Exception):
    """The issuer's keys were never fetched: we cannot judge the token (503, not 401)."""


class JwtAuthenticator:
    def __init__(self, cache: VerifiedTokenCache | None = None,
                 clock: Callable[[], float] = time.time,
                 unknown_kid_wait: float = UNKNOWN_KID_WAIT_SECONDS) -> None:
        self.cache = cache if cache is not None else VerifiedTokenCache()
        self._clock = clock
        self._unknown_kid_wait = unknown_kid_wait
        self._issuers: dict[str, IssuerKeys] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle -------------------------------------------------------------------

    def configure(self, specs: Sequence[IssuerSpec]) -> None:
        """Reconcile with the config's issuers: keep unchanged ones (and their keys)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "extproc-jwks"})
        wanted = {s.issuer: s for s in specs}
        for iss in list(self._issuers):
            if iss not in wanted or self._issuers[iss].spec != wanted[iss]:
                self._stop(iss)
        for iss, spec in wanted.items():
            if iss not in self._issuers:
                keys = IssuerKeys(spec, self._session, self.cache.drop_keys)
                self._issuers[iss] = keys
                self._tasks[iss] = asyncio.get_running_loop().create_task(keys.run())

    def _stop(self, iss: str) -> None:
        keys = self._issuers.pop(iss)
        task = self._tasks.pop(iss, None)
        if task is not None:
            task.cancel()
        self.cache.drop_issuer(keys.spec.name)

    async def close(self) -> None:
        for iss in list(self._issuers):
            self._stop(iss)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until every issuer has keys (start-up); False on timeout."""
        deadline = time.monotonic() + timeout
        while any(k.keyset is None for k in self._issuers.values()):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def status(self) -> dict[str, Any]:
        return {k.spec.name: k.status() for k in self._issuers.values()}

    # -- the hot path ----------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Identity:
        """The verified identity, or ``TokenError`` (401) / ``IdentityUnavailable`` (503)."""
        token = bearer_token(authorization)
        now = self._clock()
        digest = self.cache.digest(token)
        cached = self.cache.get(digest, now)
        if cached is not None:
            _CACHE_HIT.inc()
            return cached
        _CACHE_MISS.inc()
        parsed = parse(token)
        keys = self._issuers.get(parsed.claims.get("iss"))  # type: ignore[arg-type]
        if keys is None:
            raise TokenError(Reason.UNTRUSTED_ISSUER, "token issuer is not trusted")
        spec = keys.spec
        alg = parsed.alg
        if alg not in spec.algorithms:
            raise TokenError(Reason.ALGORITHM_NOT_ALLOWED, f"algorithm {alg[:16]!r} is not accepted")
        if keys.keyset is None:
            await keys.refetch_for_unknown_kid(None, self._unknown_kid_wait)
            if keys.keyset is None:
                raise IdentityUnavailable(f"no keys for issuer {spec.name} yet")
        candidates = keys.keyset.candidates(parsed.kid, alg)
        if not candidates and (parsed.kid is None or parsed.kid not in keys.keyset.by_kid):
            # Perhaps a key the issuer just rotated in: refetch (shared, rate-limited, bounded wait).
            await keys.refetch_for_unknown_kid(parsed.kid, self._unknown_kid_wait)
            candidates = keys.keyset.candidates(parsed.kid, alg)
        if not candidates:
            if parsed.kid is not None and parsed.kid in keys.keyset.by_kid:
                raise TokenError(Reason.ALGORITHM_NOT_ALLOWED, "algorithm does not match the signing key")
            raise TokenError(Reason.UNKNOWN_SIGNING_KEY, "token signed with an unknown key")
        key = next((k for k in candidates if k.verifiers[alg](parsed.signing_input, parsed.signature)),
                   None)
        if key is None:
            raise TokenError(Reason.INVALID_SIGNATURE, "token signature does not verify")
        identity, exp = identity_from_claims(parsed.claims, spec, now)
        self.cache.put(digest, identity, exp, spec.name, key.kid)
        return identity
