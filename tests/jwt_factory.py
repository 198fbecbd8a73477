"""Test-side token minting with real keys: RSA (RS*/PS*), EC (ES*), Ed25519 (EdDSA), and forgeries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "https://id.example.com"
AUDIENCE = "extproc-api"
_HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


@dataclass
class TestKey:
    __test__ = False  # not a test class: a signing key for tests

    kid: str
    kind: str  # "rsa", "ec256", "ec384", "ed25519"
    private: Any

    @classmethod
    def make(cls, kind: str = "rsa", kid: str | None = None, bits: int = 2048) -> TestKey:
        if kind == "rsa":
            private: Any = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        elif kind == "ec256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif kind == "ec384":
            private = ec.generate_private_key(ec.SECP384R1())
        else:
            private = ed25519.Ed25519PrivateKey.generate()
        return cls(kid or f"{kind}-{time.monotonic_ns()}", kind, private)

    def jwk(self, alg: str | None = None) -> dict[str, Any]:
        pub = self.private.public_key()
        if self.kind == "rsa":
            nums = pub.public_numbers()
            out = {"kty": "RSA", "n": _int(nums.n), "e": _int(nums.e)}
        elif self.kind.startswith("ec"):
            nums = pub.public_numbers()
            size = 32 if self.kind == "ec256" else 48
            out = {"kty": "EC", "crv": "P-256" if self.kind == "ec256" else "P-384",
                   "x": b64(nums.x.to_bytes(size, "big")), "y": b64(nums.y.to_bytes(size, "big"))}
        else:
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            out = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        out.update({"kid": self.kid, "use": "sig"})
        if alg:
            out["alg"] = alg
        return out

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, alg: str, message: bytes) -> bytes:
        if alg.startswith("RS"):
            return self.private.sign(message, padding.PKCS1v15(), _HASH[alg[2:]]())
        if alg.startswith("PS"):
            h = _HASH[alg[2:]]()
            return self.private.sign(message, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
        if alg.startswith("ES"):
            der = self.private.sign(message, ec.ECDSA(_HASH[alg[2:]]()))
            r, s = decode_dss_signature(der)
            size = (self.private.curve.key_size + 7) // 8
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        return self.private.sign(message)  # EdDSA


def claims(tenant: str = "acme", now: float | None = None, ttl: int = 3600, **over: Any) -> dict[str, Any]:
    t = int(time.time() if now is None else now)
    out: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user@{tenant}", "tenant_id": tenant,
                           "plan": "pro", "scope": "inference", "iat": t, "nbf": t, "exp": t + ttl}
    out.update(over)
    return {k: v for k, v in out.items() if v is not None}


def encode(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"


def token(key: TestKey, alg: str, payload: dict[str, Any], **header: Any) -> str:
    head = {"alg": alg, "typ": "JWT", "kid": key.kid, **header}
    head = {k: v for k, v in head.items() if v is not None}
    signing_input = encode(head, payload)
    return f"{signing_input}.{b64(key.sign(alg, signing_input.encode()))}"


def hmac_forgery(secret: bytes, payload: dict[str, Any], alg: str = "HS256", kid: str | None = None) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the issuer's *public* key."""
    head = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = encode(head, payload)
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), digest).digest())}"
