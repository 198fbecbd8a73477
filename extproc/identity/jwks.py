"""An issuer's keys, fetched in the background: OIDC discovery, JWKS, refresh and rotation.

Nothing here runs on a request's path except ``refetch_for_unknown_kid``, which
starts at most one fetch per cooldown window per issuer (a flood of random
``kid`` values is not a flood of fetches) and lets the caller wait a bounded
time for it: only within the first ``wait`` seconds of that fetch, so while the
issuer hangs, requests stop waiting once the fetch is that old; and a ``kid``
found missing is answered at once until the cooldown ends. When the issuer is
down the last good keys keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from extproc.identity.keys import KeySet, build_keyset
from extproc.identity.spec import IssuerSpec
from extproc.telemetry import tracing
from extproc.telemetry.metrics import ISSUER_HEALTHY, ISSUER_KEYS, JWKS_FETCHES

log = logging.getLogger("extproc.identity")

_MAX_AGE = re.compile(r"max-age=(\d+)")
_MAX_DOCUMENT_BYTES = 1 << 20

#: Called with (issuer name, kids that left the JWKS) after a refresh swaps keys.
OnRotate = Callable[[str, frozenset[str | None]], object]
#: Unknown kids remembered as missing (per issuer); a flood of random kids clears it.
_MAX_MISSING_KIDS = 4096


class FetchError(Exception):
    pass


class IssuerKeys:
    def __init__(self, spec: IssuerSpec, session: aiohttp.ClientSession, on_rotate: OnRotate,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._session = session
        self._on_rotate = on_rotate
        self._clock = clock
        self.keyset: KeySet | None = None
        self.jwks_uri: str | None = spec.jwks_uri
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.fetches = 0
        self._max_age: float | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._inflight_since = float("-inf")
        self._last_unknown_kid_fetch = float("-inf")
        #: kid → when it was found missing (a fetch without it, or a fetch too slow to wait for).
        self._missing: dict[str, float] = {}
        self._wake = asyncio.Event()
        if spec.static_jwks is not None:
            self.keyset = build_keyset(spec.static_jwks, spec.algorithms, spec.issuer)
            self.last_success = clock()
            ISSUER_KEYS.labels(spec.name).set(len(self.keyset))
            ISSUER_HEALTHY.labels(spec.name).set(1)

    @property
    def fetched(self) -> bool:
        return self.spec.static_jwks is None

    def status(self) -> dict[str, Any]:
        return {
            "issuer": self.spec.issuer,
            "source": "static" if not self.fetched else (self.jwks_uri or "discovery"),
            "keys": sorted(str(k) for k in self.keyset.kids) if self.keyset else [],
            "healthy": self.keyset is not None and self.last_error is None,
            "last_success_age_s": None if self.last_success is None
            else round(self._clock() - self.last_success, 1),
            "last_error": self.last_error,
            "fetches": self.fetches,
        }

    async def _get_json(self, url: str) -> tuple[Any, float | None]:
        timeout = aiohttp.ClientTimeout(total=self.spec.fetch_timeout_seconds)
        try:
            async with self._session.get(url, timeout=timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise FetchError(f"GET {url}: HTTP {resp.status}")
                body = await resp.content.read(_MAX_DOCUMENT_BYTES + 1)
                if len(body) > _MAX_DOCUMENT_BYTES:
                    raise FetchError(f"GET {url}: document larger than {_MAX_DOCUMENT_BYTES} bytes")
                match = _MAX_AGE.search(resp.headers.get("Cache-Control", ""))
                max_age = float(match.group(1)) if match else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"GET {url}: {type(exc).__name__} {exc}") from exc
        try:
            return json.loads(body), max_age
        except ValueError as exc:
            raise FetchError(f"GET {url}: not JSON") from exc

    async def _discover(self) -> str:
        url = self.spec.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc, _ = await self._get_json(url)
        if not isinstance(doc, dict) or doc.get("issuer") != self.spec.issuer:
            raise FetchError(f"discovery at {url} names a different issuer")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise FetchError(f"discovery at {url} has no usable jwks_uri")
        return uri

    async def refresh(self) -> bool:
        """Fetch the JWKS now. Returns True when it succeeded (keys may be unchanged)."""
        if not self.fetched:
            return True
        with tracing.child_span("jwks refresh", {"extproc.issuer": self.spec.name}):
            return await self._refresh()

    async def _refresh(self) -> bool:
        self.fetches += 1
        try:
            if self.jwks_uri is None:
                self.jwks_uri = await self._discover()
            doc, max_age = await self._get_json(self.jwks_uri)
            keyset = build_keyset(doc, self.spec.algorithms, self.spec.issuer)
        except (FetchError, ValueError) as exc:
            if self.spec.jwks_uri is None:
                self.jwks_uri = None  # rediscover next time: the jwks_uri may have moved
            self.last_error = str(exc)[:300]
            JWKS_FETCHES.labels(self.spec.name, "error").inc()
            ISSUER_HEALTHY.labels(self.spec.name).set(0)
            log.warning("JWKS refresh failed; keeping the last good keys",
                        extra={"issuer": self.spec.name, "error": self.last_error,
                               "have_keys": self.keyset is not None})
            return False
        previous = self.keyset
        self.keyset = keyset
        self.last_success = self._clock()
        self.last_error = None
        self._max_age = max_age
        JWKS_FETCHES.labels(self.spec.name, "ok").inc()
        ISSUER_HEALTHY.labels(self.spec.name).set(1)
        ISSUER_KEYS.labels(self.spec.name).set(len(keyset))
        if previous is not None:
            gone = frozenset(k.kid for k in previous.keys) - frozenset(k.kid for k in keyset.keys)
            if gone:
                self._on_rotate(self.spec.name, gone)
            if previous.kids != keyset.kids:
                log.info("issuer keys rotated", extra={"issuer": self.spec.name,
                                                       "kids": sorted(map(str, keyset.kids))})
        return True

    def _next_delay(self, ok: bool, failures: int) -> float:
        if not ok:
            return min(self.spec.refresh_seconds, 2.0 ** min(failures, 8))
        delay = self.spec.refresh_seconds if self._max_age is None else self._max_age
        return max(self.spec.min_refresh_seconds, min(delay, self.spec.refresh_seconds))

    async def run(self) -> None:
        """Refresh forever (until cancelled)."""
        if not self.fetched:
            return
        failures = 0
        while True:
            ok = await self._shared_refresh()
            failures = 0 if ok else failures + 1
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_delay(ok, failures))

    def _shared_refresh(self) -> asyncio.Task[bool]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self.refresh())
            self._inflight_since = self._clock()
        return self._inflight

    async def refetch_for_unknown_kid(self, kid: str | None, wait: float) -> bool:
        """Refetch for a ``kid`` the keys lack; True when a fetch succeeded meanwhile.

        At most one refetch per cooldown, shared by every request that needs one. A request
        waits for it only until the fetch is ``wait`` seconds old, so while the issuer hangs no
        request waits the fetch's timeout. A kid found missing (the fetch came back without it,
        or was too slow to wait for) is answered at once until the cooldown ends."""
        if not self.fetched:
            return False
        cooldown = self.spec.unknown_kid_cooldown_seconds
        now = self._clock()
        if kid is not None and now - self._missing.get(kid, float("-inf")) < cooldown:
            return False
        if self._inflight is None or self._inflight.done():
            if now - self._last_unknown_kid_fetch < cooldown:
                self._note_missing(kid, now)
                return False
            self._last_unknown_kid_fetch = now
        task = self._shared_refresh()
        left = self._inflight_since + wait - now
        ok = False
        if left > 0:
            with contextlib.suppress(TimeoutError):
                ok = await asyncio.wait_for(asyncio.shield(task), left)
        if not ok or self.keyset is None or kid not in self.keyset.by_kid:
            self._note_missing(kid, self._clock())
        return ok

    def _note_missing(self, kid: str | None, now: float) -> None:
        if kid is None:
            return
        if len(self._missing) >= _MAX_MISSING_KIDS:
            self._missing.clear()
        self._missing[kid] = now
