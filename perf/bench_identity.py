"""Cost of token verification per request: cached vs uncached, per algorithm.

Runs the real JwtAuthenticator (static JWKS, so no network) in one process and
reports microseconds per authenticate() call. Usage:

    .venv/bin/python perf/bench_identity.py [--n 2000] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extproc.identity.authenticator import JwtAuthenticator
from extproc.identity.spec import IssuerSpec
from tests.jwt_factory import AUDIENCE, ISSUER, TestKey, claims, token

CASES = [("RS256", "rsa"), ("PS256", "rsa"), ("ES256", "ec256"), ("EdDSA", "ed25519")]


async def measure(n: int) -> list[dict[str, object]]:
    keys = {kind: TestKey.make(kind, f"{kind}-k") for _, kind in CASES}
    auth = JwtAuthenticator()
    auth.configure([IssuerSpec(name="bench", issuer=ISSUER, audiences=(AUDIENCE,),
                               algorithms=frozenset(a for a, _ in CASES),
                               static_jwks={"keys": [k.jwk() for k in keys.values()]})])
    rows: list[dict[str, object]] = []
    for alg, kind in CASES:
        # Uncached: every token distinct (a new tenant each), so each pays parse + verify + claims.
        tokens = [f"Bearer {token(keys[kind], alg, claims(tenant=f't{i}'))}" for i in range(n)]
        started = time.perf_counter()
        for t in tokens:
            await auth.authenticate(t)
        uncached = (time.perf_counter() - started) / n * 1e6
        # Cached: the same tokens again, now answered from the verified-token cache.
        started = time.perf_counter()
        for t in tokens:
            await auth.authenticate(t)
        cached = (time.perf_counter() - started) / n * 1e6
        rows.append({"alg": alg, "uncached_us": round(uncached, 1), "cached_us": round(cached, 2),
                     "speedup": round(uncached / cached, 1)})
    await auth.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = asyncio.run(measure(args.n))
    print(f"token verification per request, n={args.n}, {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.machine()}")
    print(f"{'alg':<7} {'uncached µs':>12} {'cached µs':>10} {'speedup':>8}")
    for r in rows:
        print(f"{r['alg']:<7} {r['uncached_us']:>12} {r['cached_us']:>10} {r['speedup']:>7}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"n": args.n, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
