"""The demo issuer's signing keys, kept in a state directory so ``extproc token`` can use them.

``keys.json`` lists RSA keys oldest first. Tokens are signed with the newest;
the JWKS publishes the newest ``PUBLISHED`` keys, so a rotation leaves the
previous key valid for one more rotation and then retires it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt

DEMO_AUDIENCE = "extproc-demo"
DEFAULT_ISSUER = "http://127.0.0.1:9400"
PUBLISHED = 2


def default_state_dir() -> Path:
    env = os.environ.get("EXTPROC_DEMO_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "extproc-demo"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_pem: bytes

    def public_jwk(self) -> dict[str, Any]:
        key = jwk.construct(self.private_pem, "RS256").public_key().to_dict()
        key.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in key.items()}


def _new_key() -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return SigningKey(f"demo-{time.time_ns():x}", pem)


class KeyStore:
    """Keys on disk, shared by the issuer process and ``extproc token`` (file-locked)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "keys.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read(self) -> list[SigningKey]:
        if not self.path.exists():
            return []
        data = json.loads(self.path.read_text())
        return [SigningKey(k["kid"], k["private_pem"].encode()) for k in data["keys"]]

    def _write(self, keys: list[SigningKey]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"keys": [{"kid": k.kid, "private_pem": k.private_pem.decode()} for k in keys]}, fh)
        os.replace(tmp, self.path)

    def published(self) -> list[SigningKey]:
        """The keys the JWKS serves (made on first use)."""
        with self._locked():
            keys = self._read()
            if not keys:
                keys = [_new_key()]
                self._write(keys)
        return keys[-PUBLISHED:]

    def current(self) -> SigningKey:
        return self.published()[-1]

    def rotate(self) -> SigningKey:
        """Add a new signing key; the oldest published one is retired."""
        with self._locked():
            keys = [*self._read()[-(PUBLISHED - 1):], _new_key()]
            self._write(keys)
        return keys[-1]


def mint_token(
    key: SigningKey,
    tenant: str,
    plan: str = "free",
    scopes: tuple[str, ...] = ("inference",),
    ttl_seconds: int = 3600,
    issuer: str = DEFAULT_ISSUER,
    subject: str | None = None,
    now: int | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    issued = int(time.time()) if now is None else now
    claims = {
        "iss": issuer,
        "aud": DEMO_AUDIENCE,
        "sub": subject or f"user@{tenant}",
        "tenant_id": tenant,
        "plan": plan,
        "scope": " ".join(scopes),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        **(extra or {}),
    }
    return str(jwt.encode(claims, key.private_pem.decode(), algorithm="RS256", headers={"kid": key.kid}))
