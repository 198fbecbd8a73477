"""The demo issuer's signing key, kept in a state directory so ``extproc token`` can use it."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt

DEMO_AUDIENCE = "extproc-demo"
DEFAULT_ISSUER = "http://127.0.0.1:9400"


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


def load_or_create_key(state_dir: Path) -> SigningKey:
    """The current key; made (RSA 2048) on first use and stored with mode 0600."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "signing-key.json"
    if path.exists():
        data = json.loads(path.read_text())
        return SigningKey(data["kid"], data["private_pem"].encode())
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = SigningKey(f"demo-{int(time.time())}", pem)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"kid": key.kid, "private_pem": pem.decode()}, fh)
    os.replace(tmp, path)
    return key


def mint_token(
    key: SigningKey,
    tenant: str,
    plan: str = "free",
    scopes: tuple[str, ...] = ("inference",),
    ttl_seconds: int = 3600,
    issuer: str = DEFAULT_ISSUER,
    subject: str | None = None,
    now: int | None = None,
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
    }
    return str(jwt.encode(claims, key.private_pem.decode(), algorithm="RS256",
                          headers={"kid": key.kid}))
