"""Verification keys built once per JWKS refresh (python-jose, and ``cryptography`` where jose stops).

python-jose verifies RS256/384/512 and ES256/384/512. It has no RSA-PSS or
EdDSA, so PS* use the RSA key python-jose prepared, with PSS padding, and EdDSA
(Ed25519) uses ``cryptography`` directly. Each key is usable only with the
algorithms its type allows *and* the issuer's config allows, intersected with
the JWK's own ``alg`` when it names one: never with the algorithm a token asks for
alone, and never with an HMAC algorithm.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from jose import jwk
from jose.exceptions import JOSEError

log = logging.getLogger("extproc.identity")

Verify = Callable[[bytes, bytes], bool]

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGS_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_PSS_HASH: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "PS256": hashes.SHA256, "PS384": hashes.SHA384, "PS512": hashes.SHA512,
}
MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    kid: str | None
    kty: str
    verifiers: Mapping[str, Verify]  # algorithm → verify(signing_input, signature)

    @property
    def algorithms(self) -> frozenset[str]:
        return frozenset(self.verifiers)


class KeySet:
    """The usable keys of one issuer's JWKS. Immutable; a refresh builds a new one."""

    def __init__(self, keys: list[VerifyingKey]) -> None:
        self.keys = tuple(keys)
        self.by_kid = {k.kid: k for k in keys if k.kid is not None}

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self.by_kid)

    def candidates(self, kid: str | None, alg: str) -> list[VerifyingKey]:
        """Keys that may verify a token with this ``kid`` and ``alg``."""
        if kid is not None:
            key = self.by_kid.get(kid)
            return [key] if key is not None and alg in key.verifiers else []
        return [k for k in self.keys if alg in k.verifiers]

    def __len__(self) -> int:
        return len(self.keys)


def _b64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _rsa_verifiers(jwk_dict: dict[str, Any], algs: frozenset[str]) -> dict[str, Verify]:
    out: dict[str, Verify] = {}
    public: rsa.RSAPublicKey | None = None
    for alg in sorted(algs & _RSA_ALGS):
        if alg.startswith("RS"):
            out[alg] = jwk.construct(jwk_dict, alg).verify
            continue
        if public is None:
            public = jwk.construct(jwk_dict, "RS256").prepared_key
        out[alg] = _pss_verifier(public, _PSS_HASH[alg]())
    probe = jwk.construct(jwk_dict, "RS256").prepared_key
    if probe.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA key of {probe.key_size} bits (minimum {MIN_RSA_BITS})")
    return out


def _pss_verifier(public: rsa.RSAPublicKey, digest: hashes.HashAlgorithm) -> Verify:
    pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)

    def verify(message: bytes, signature: bytes) -> bool:
        try:
            public.verify(signature, message, pss, digest)
        except (InvalidSignature, ValueError):
            return False
        return True

    return verify


def _ed25519_verifier(jwk_dict: dict[str, Any]) -> Verify:
    public = ed25519.Ed25519PublicKey.from_public_bytes(_b64(jwk_dict["x"]))

    def verify(message: bytes, signature: bytes) -> bool:
        try:
            public.verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    return verify


def build_key(jwk_dict: dict[str, Any], allowed: frozenset[str]) -> VerifyingKey | None:
    """One JWK → a verifying key, or None when it is not a usable signing key here."""
    kty = jwk_dict.get("kty")
    kid = jwk_dict.get("kid") if isinstance(jwk_dict.get("kid"), str) else None
    if jwk_dict.get("use", "sig") != "sig":
        return None
    algs = set(allowed)
    if isinstance(jwk_dict.get("alg"), str):
        algs &= {jwk_dict["alg"]}
    verifiers: dict[str, Verify]
    if kty == "RSA":
        verifiers = _rsa_verifiers(jwk_dict, frozenset(algs))
    elif kty == "EC":
        alg = _EC_ALGS_BY_CURVE.get(jwk_dict.get("crv", ""))
        verifiers = {alg: jwk.construct(jwk_dict, alg).verify} if alg and alg in algs else {}
    elif kty == "OKP" and jwk_dict.get("crv") == "Ed25519":
        verifiers = {"EdDSA": _ed25519_verifier(jwk_dict)} if "EdDSA" in algs else {}
    else:
        return None  # "oct" (HMAC) and anything else: never a verification key here
    if not verifiers:
        return None
    return VerifyingKey(kid, str(kty), verifiers)


def build_keyset(jwks: Any, allowed: frozenset[str], issuer: str) -> KeySet:
    """All usable keys of a JWKS document; malformed keys are skipped and logged."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("JWKS is not an object with a 'keys' list")
    keys: list[VerifyingKey] = []
    for i, item in enumerate(jwks["keys"]):
        if not isinstance(item, dict):
            continue
        try:
            key = build_key(item, allowed)
        except (JOSEError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping unusable JWKS key", extra={"issuer": issuer, "index": i,
                                                             "kid": str(item.get("kid"))[:64],
                                                             "error": str(exc)[:200]})
            continue
        if key is not None:
            keys.append(key)
    return KeySet(keys)
