"""Verified-token cache: a repeat caller pays a hash and a dict lookup, not a signature check.

Keyed by SHA-256 of the token (the token itself is never kept). An entry lives
no longer than the token's ``exp`` and is dropped when the key that verified it
leaves the issuer's JWKS. Bounded: the oldest entries go first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from extproc.domain.identity import Identity


@dataclass(frozen=True, slots=True)
class _Entry:
    identity: Identity
    expires_at: float
    issuer: str
    kid: str | None


class VerifiedTokenCache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[bytes, _Entry] = {}

    @staticmethod
    def digest(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, digest: bytes, now: float) -> Identity | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry.expires_at:
            del self._entries[digest]
            return None
        return entry.identity

    def put(self, digest: bytes, identity: Identity, expires_at: float, issuer: str,
            kid: str | None) -> None:
        if len(self._entries) >= self.max_entries:
            # Evict the oldest tenth in one go rather than one per insert.
            for key in list(self._entries)[: max(1, self.max_entries // 10)]:
                del self._entries[key]
        self._entries[digest] = _Entry(identity, expires_at, issuer, kid)

    def drop_keys(self, issuer: str, kids: frozenset[str | None]) -> int:
        """Forget tokens verified by keys that left ``issuer``'s JWKS."""
        doomed = [d for d, e in self._entries.items() if e.issuer == issuer and e.kid in kids]
        for digest in doomed:
            del self._entries[digest]
        return len(doomed)

    def drop_issuer(self, issuer: str) -> None:
        for digest in [d for d, e in self._entries.items() if e.issuer == issuer]:
            del self._entries[digest]

    def __len__(self) -> int:
        return len(self._entries)
