"""Identity through a real Envoy: valid tokens route with their tenant; each failure is a clear 401/403."""

from __future__ import annotations

import time

import pytest

from extproc.devstack.keys import SigningKey
from tests.e2e.stack import Stack
from tests.jwt_factory import encode, hmac_forgery

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("listener", ["ext_proc", "ext_authz"])
def test_valid_token_routes_with_its_tenant(stack: Stack, listener: str) -> None:
    port = stack.ports.ext_proc if listener == "ext_proc" else stack.ports.ext_authz
    resp = stack.chat("gpt-4o", port=port, token=stack.token(tenant="globex", plan="free"))
    assert resp.status == 200
    assert '"x-extproc-tenant": "globex"' in resp.headers["x-demo-extproc-headers"]


def _failures(stack: Stack) -> list[tuple[str, str | None, str]]:
    now = int(time.time())
    key = stack.keys.current()
    return [
        ("no token", None, "missing_credentials"),
        ("garbage", "not-a-jwt", "malformed_token"),
        ("jwe", "a.b.c.d.e", "encrypted_token_unsupported"),
        ("expired", stack.token(now=now - 7200, ttl_seconds=60), "token_expired"),
        ("not yet valid", stack.token(now=now + 3600), "token_not_yet_valid"),
        ("wrong audience", stack.token(extra={"aud": "someone-else"}), "invalid_audience"),
        ("wrong issuer", stack.token(extra={"iss": "https://evil.example.com"}), "untrusted_issuer"),
        ("no tenant", stack.token(extra={"tenant_id": None}), "missing_tenant"),
        ("unknown kid", stack.token(key=SigningKey("no-such-kid", key.private_pem)), "unknown_signing_key"),
        ("alg none", encode({"alg": "none"}, {"iss": stack.issuer}) + ".", "algorithm_not_allowed"),
        ("hs256 forgery", hmac_forgery(key.public_jwk()["n"].encode(), {"iss": stack.issuer}, kid=key.kid),
         "algorithm_not_allowed"),
    ]


@pytest.mark.parametrize("listener", ["ext_proc", "ext_authz"])
def test_each_bad_token_gets_401_with_its_reason(stack: Stack, listener: str) -> None:
    port = stack.ports.ext_proc if listener == "ext_proc" else stack.ports.ext_authz
    for name, tok, code in _failures(stack):
        resp = stack.chat("gpt-4o", port=port, token=tok)
        assert resp.status == 401, (name, resp.status, resp.body)
        error = resp.json()["error"]
        assert (error["type"], error["code"]) == ("authentication_error", code), name
        assert error["decision_id"] == resp.headers["x-extproc-decision-id"]
        challenge = resp.headers["www-authenticate"]
        assert challenge.startswith("Bearer realm=\"extproc\""), name
        if tok is not None:
            assert 'error="invalid_token"' in challenge, name
            assert tok[:40] not in resp.body.decode(), "token echoed back"
        assert "x-demo-pool" not in resp.headers


def test_no_token_is_refused_before_the_body_is_read(stack: Stack) -> None:
    # 3 MiB: had the body been buffered first, the answer would be 413.
    resp = stack.request("POST", "/v1/chat/completions", raw=b"x" * (3 << 20), token=None)
    assert resp.status == 401 and resp.json()["error"]["code"] == "missing_credentials"


def test_authenticated_but_not_allowed_is_403(stack: Stack) -> None:
    ft = {"model": "gpt-4o-mini", "training_file": "file-1"}
    denied = stack.request("POST", "/v1/fine_tuning/jobs", ft)
    assert denied.status == 403
    error = denied.json()["error"]
    assert (error["type"], error["code"], error["policy"]) == (
        "permission_error", "insufficient_scope", "training-needs-training-scope")
    allowed = stack.request("POST", "/v1/fine_tuning/jobs", ft,
                            token=stack.token(scopes=("inference", "training")))
    assert allowed.status == 200 and "\"x-extproc-class\": \"training\"" in allowed.headers["x-demo-extproc-headers"]
    video = {"model": "sora-2", "prompt": "a cat"}
    free = stack.request("POST", "/v1/videos", video, token=stack.token(plan="free"))
    assert free.status == 403 and free.json()["error"]["code"] == "plan_not_allowed"
    pro = stack.request("POST", "/v1/videos", video, token=stack.token(plan="pro"))
    assert pro.status == 200
