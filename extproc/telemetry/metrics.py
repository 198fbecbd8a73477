"""Metric definitions shared across packages. Label values come from config names and enums only."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

JWKS_FETCHES = Counter(
    "extproc_jwks_fetches_total", "JWKS (and discovery) fetches by issuer and result",
    ["issuer", "result"],
)
ISSUER_KEYS = Gauge("extproc_issuer_keys", "Usable verification keys per issuer", ["issuer"])
ISSUER_HEALTHY = Gauge(
    "extproc_issuer_healthy", "1 when the issuer's last JWKS fetch succeeded (static JWKS: always)",
    ["issuer"],
)
TOKEN_CACHE = Counter(
    "extproc_token_cache_total", "Verified-token cache lookups by result", ["result"],
)
