"""Every bad bearer token gets its own stable reason code; claim checks at the leeway edges."""

from __future__ import annotations

import base64
import json

import pytest

from extproc.domain.reasons import Reason
from extproc.identity.spec import IssuerSpec
from extproc.identity.tokens import TokenError, bearer_token, check_time, identity_from_claims, parse
from tests.jwt_factory import AUDIENCE, ISSUER, b64, claims, encode

SPEC = IssuerSpec(name="idp", issuer=ISSUER, audiences=(AUDIENCE, "other"), leeway_seconds=30)
NOW = 1_800_000_000.0


def reason(fn, *args, **kwargs) -> Reason:
    with pytest.raises(TokenError) as info:
        fn(*args, **kwargs)
    assert "eyJ" not in info.value.description  # never echo the token
    return info.value.reason


@pytest.mark.parametrize(("header", "expected"), [
    (None, Reason.MISSING_CREDENTIALS),
    ("", Reason.MISSING_CREDENTIALS),
    ("Basic dXNlcjpwYXNz", Reason.INVALID_AUTHORIZATION_HEADER),
    ("Bearer", Reason.INVALID_AUTHORIZATION_HEADER),
    ("Bearer    ", Reason.INVALID_AUTHORIZATION_HEADER),
    ("Bearer " + "a" * 9000, Reason.TOKEN_TOO_LARGE),
])
def test_authorization_header_problems(header, expected) -> None:
    assert reason(bearer_token, header) is expected


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("BEARER  abc.def.ghi ") == "abc.def.ghi"


GOOD_HEAD = b64(json.dumps({"alg": "RS256", "kid": "k"}).encode())
GOOD_BODY = b64(json.dumps({"iss": ISSUER}).encode())


@pytest.mark.parametrize(("token", "expected"), [
    ("abc", Reason.MALFORMED_TOKEN),
    ("a.b", Reason.MALFORMED_TOKEN),
    ("a.b.c.d", Reason.MALFORMED_TOKEN),
    ("a.b.c.d.e", Reason.ENCRYPTED_TOKEN_UNSUPPORTED),
    (f"!!!.{GOOD_BODY}.sig", Reason.MALFORMED_TOKEN),
    (f"{GOOD_HEAD}.%%%.sig", Reason.MALFORMED_TOKEN),
    (f"{GOOD_HEAD}.{GOOD_BODY}.***", Reason.MALFORMED_TOKEN),
    (f"{b64(b'not json')}.{GOOD_BODY}.c2ln", Reason.MALFORMED_TOKEN),
    (f"{GOOD_HEAD}.{b64(b'[1,2]')}.c2ln", Reason.MALFORMED_TOKEN),
    (f"{b64(b'[1]')}.{GOOD_BODY}.c2ln", Reason.MALFORMED_TOKEN),
    (f"{GOOD_HEAD}.{b64(bytes([0xff, 0xfe]))}.c2ln", Reason.MALFORMED_TOKEN),
    (f"{GOOD_HEAD}=.{GOOD_BODY}.c2ln", Reason.MALFORMED_TOKEN),
    (f"{b64(json.dumps({'alg': 'RS256', 'crit': ['exp']}).encode())}.{GOOD_BODY}.c2ln", Reason.MALFORMED_TOKEN),
])
def test_malformed_tokens(token, expected) -> None:
    assert reason(parse, token) is expected


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", None, 42])
def test_unsigned_tokens_are_refused_in_any_spelling(alg) -> None:
    head = {"typ": "JWT"} if alg is None else {"alg": alg}
    assert reason(parse, encode(head, {"iss": ISSUER}) + ".") is Reason.ALGORITHM_NOT_ALLOWED


def ident(**over):
    return identity_from_claims(claims(now=NOW, **over), SPEC, NOW)


def test_good_claims_make_an_identity() -> None:
    identity, exp = ident(scope="inference training", roles=["admin"])
    assert (identity.tenant, identity.subject, identity.plan) == ("acme", "user@acme", "pro")
    assert identity.scopes == {"inference", "training"} and identity.roles == {"admin"}
    assert identity.issuer_name == "idp" and identity.verified and exp == NOW + 3600
    listed, _ = ident(scope=["a", "b"], aud=["nope", "other"])
    assert listed.scopes == {"a", "b"}


@pytest.mark.parametrize(("over", "expected"), [
    ({"iss": "https://evil.example.com"}, Reason.UNTRUSTED_ISSUER),
    ({"aud": "someone-else"}, Reason.INVALID_AUDIENCE),
    ({"aud": None}, Reason.INVALID_AUDIENCE),
    ({"aud": [1, 2]}, Reason.INVALID_AUDIENCE),
    ({"exp": None}, Reason.MISSING_EXPIRY),
    ({"exp": "tomorrow"}, Reason.INVALID_CLAIMS),
    ({"exp": True}, Reason.INVALID_CLAIMS),
    ({"exp": int(NOW * 1000) + 3_600_000}, Reason.INVALID_CLAIMS),  # milliseconds
    ({"tenant_id": None}, Reason.MISSING_TENANT),
    ({"tenant_id": 42}, Reason.MISSING_TENANT),
    ({"tenant_id": ["acme"]}, Reason.MISSING_TENANT),
    ({"tenant_id": "acme\r\nx-extproc-upstream: pool-b"}, Reason.INVALID_CLAIMS),
    ({"tenant_id": "acme\x00"}, Reason.INVALID_CLAIMS),
    ({"tenant_id": "a" * 300}, Reason.INVALID_CLAIMS),
    ({"sub": "bob\nadmin"}, Reason.INVALID_CLAIMS),
    ({"plan": "pro\r"}, Reason.INVALID_CLAIMS),
    ({"plan": {"tier": 1}}, Reason.INVALID_CLAIMS),
    ({"scope": 7}, Reason.INVALID_CLAIMS),
    ({"roles": [1]}, Reason.INVALID_CLAIMS),
])
def test_claim_problems(over, expected) -> None:
    assert reason(ident, **over) is expected


@pytest.mark.parametrize(("delta", "ok"), [(-29.9, True), (-30.0, False), (-31, False), (100, True)])
def test_exp_at_the_leeway_edge(delta, ok) -> None:
    c = {"exp": NOW + delta}
    if ok:
        assert check_time(c, 30, NOW) == NOW + delta
    else:
        assert reason(check_time, c, 30, NOW) is Reason.TOKEN_EXPIRED


@pytest.mark.parametrize(("claim", "delta", "ok"), [
    ("nbf", 30, True), ("nbf", 30.1, False), ("nbf", -5, True),
    ("iat", 30, True), ("iat", 31, False),
])
def test_nbf_and_iat_at_the_leeway_edge(claim, delta, ok) -> None:
    c = {"exp": NOW + 600, claim: NOW + delta}
    if ok:
        check_time(c, 30, NOW)
    else:
        assert reason(check_time, c, 30, NOW) is Reason.TOKEN_NOT_YET_VALID


def test_tenant_claim_path() -> None:
    spec = IssuerSpec(name="x", issuer=ISSUER, audiences=(AUDIENCE,), tenant_claim=("org", "id"))
    identity, _ = identity_from_claims(claims(now=NOW, org={"id": "globex"}), spec, NOW)
    assert identity.tenant == "globex"
    with pytest.raises(TokenError) as info:
        identity_from_claims(claims(now=NOW, org="globex"), spec, NOW)
    assert info.value.reason is Reason.MISSING_TENANT


def test_base64_padding_variants_are_not_accepted_silently() -> None:
    padded = base64.urlsafe_b64encode(json.dumps({"alg": "RS256"}).encode()).decode()
    if padded.endswith("="):
        assert reason(parse, f"{padded}.{GOOD_BODY}.c2ln") is Reason.MALFORMED_TOKEN
