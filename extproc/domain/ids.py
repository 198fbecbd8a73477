"""Decision ids: sortable by time, unique across processes, cheap to make."""

from __future__ import annotations

import os
import time

#: Crockford base32, lower case: the alphabet of decision ids.
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_decision_id(now_ms: int | None = None) -> str:
    """A ULID-shaped id (48-bit millisecond time + 80 random bits), 26 lower-case chars."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))
