"""The ``identity:`` (trusted issuers) and ``access:`` (authorization rules) config sections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from extproc.config.reader import Reader
from extproc.domain.authorize import AccessRule
from extproc.domain.classify import WorkloadClass, folded_model
from extproc.identity.keys import build_keyset
from extproc.identity.spec import SUPPORTED_ALGORITHMS, IssuerSpec

_ISSUER_FIELDS = {
    "name", "issuer", "audiences", "algorithms", "claims", "leeway_seconds", "jwks_uri", "jwks",
    "jwks_file", "refresh_seconds", "min_refresh_seconds", "unknown_kid_cooldown_seconds",
    "fetch_timeout_seconds",
}
_CLAIM_FIELDS = {"tenant", "subject", "plan", "scopes", "roles"}


def _number(r: Reader, value: Any, where: str, default: float, low: float, high: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        r.error(where, f"expected a number, got {type(value).__name__}")
        return default
    if not low <= value <= high:
        r.error(where, f"must be between {low:g} and {high:g}")
    return float(value)


def _str_list(r: Reader, value: Any, where: str) -> tuple[str, ...]:
    items = r.seq(value, where)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            r.error(f"{where}[{i}]", "expected a non-empty string")
        else:
            out.append(item)
    return tuple(out)


def parse_issuers(r: Reader, value: Any, source: str) -> tuple[IssuerSpec, ...]:
    section = r.mapping(value, "identity", {"issuers"})
    specs: list[IssuerSpec] = []
    names: set[str] = set()
    urls: set[str] = set()
    for i, item in enumerate(r.seq(section.get("issuers"), "identity.issuers")):
        spec = _issuer(r, item, f"identity.issuers[{i}]", source)
        if spec is None:
            continue
        if spec.name in names:
            r.error(f"identity.issuers[{i}].name", f"duplicate issuer name {spec.name!r}")
        if spec.issuer in urls:
            r.error(f"identity.issuers[{i}].issuer", f"issuer {spec.issuer!r} listed twice")
        names.add(spec.name)
        urls.add(spec.issuer)
        specs.append(spec)
    return tuple(specs)


def _issuer(r: Reader, item: Any, where: str, source: str) -> IssuerSpec | None:
    before = len(r.errors)
    f = r.mapping(item, where, _ISSUER_FIELDS)
    name = r.typed(f.get("name"), f"{where}.name", str, "")
    if not name:
        r.error(f"{where}.name", "required")
    issuer = r.typed(f.get("issuer"), f"{where}.issuer", str, "")
    if not issuer.startswith(("https://", "http://")):
        r.error(f"{where}.issuer", "required: the issuer URL exactly as in the tokens' iss claim")
    audiences = _str_list(r, f.get("audiences"), f"{where}.audiences")
    if not audiences:
        r.error(f"{where}.audiences", "list at least one accepted audience")
    algorithms = _str_list(r, f.get("algorithms", ["RS256"]), f"{where}.algorithms")
    for alg in algorithms:
        if alg.upper().startswith("HS"):
            r.error(f"{where}.algorithms", f"{alg}: HMAC algorithms are never accepted (anyone holding "
                                           "the public key could forge tokens)")
        elif alg.lower() == "none":
            r.error(f"{where}.algorithms", "'none' is never accepted")
        elif alg not in SUPPORTED_ALGORITHMS:
            r.error(f"{where}.algorithms",
                    f"unknown algorithm {alg!r} (supported: {', '.join(sorted(SUPPORTED_ALGORITHMS))})")
    if not algorithms:
        r.error(f"{where}.algorithms", "list at least one algorithm")
    claims = r.mapping(f.get("claims"), f"{where}.claims", _CLAIM_FIELDS)
    paths: dict[str, tuple[str, ...]] = {}
    for key, default in (("tenant", "tenant_id"), ("subject", "sub"), ("plan", "plan"),
                         ("scopes", "scope"), ("roles", "roles")):
        path = r.typed(claims.get(key), f"{where}.claims.{key}", str, default)
        if not path or any(not p for p in path.split(".")):
            r.error(f"{where}.claims.{key}", "expected a claim name or dotted path like org.id")
        paths[key] = tuple(path.split("."))
    static = _static_jwks(r, f, where, source)
    jwks_uri = r.typed(f.get("jwks_uri"), f"{where}.jwks_uri", str, None)
    if jwks_uri is not None and not jwks_uri.startswith(("https://", "http://")):
        r.error(f"{where}.jwks_uri", "must be an http(s) URL")
    if static is not None and jwks_uri is not None:
        r.error(where, "set jwks/jwks_file (static keys) or jwks_uri, not both")
    allowed = frozenset(a for a in algorithms if a in SUPPORTED_ALGORITHMS)
    if static is not None and allowed:
        try:
            if not build_keyset(static, allowed, issuer):
                r.error(f"{where}.jwks", "no usable signing key for the allowed algorithms")
        except ValueError as exc:
            r.error(f"{where}.jwks", str(exc))
    spec = IssuerSpec(
        name=name, issuer=issuer, audiences=audiences, algorithms=allowed,
        tenant_claim=paths["tenant"], subject_claim=paths["subject"], plan_claim=paths["plan"],
        scopes_claim=paths["scopes"], roles_claim=paths["roles"],
        leeway_seconds=_number(r, f.get("leeway_seconds"), f"{where}.leeway_seconds", 30, 0, 600),
        jwks_uri=jwks_uri, static_jwks=static,
        refresh_seconds=_number(r, f.get("refresh_seconds"), f"{where}.refresh_seconds", 300, 5, 86400),
        min_refresh_seconds=_number(r, f.get("min_refresh_seconds"), f"{where}.min_refresh_seconds",
                                    30, 1, 86400),
        unknown_kid_cooldown_seconds=_number(r, f.get("unknown_kid_cooldown_seconds"),
                                             f"{where}.unknown_kid_cooldown_seconds", 30, 0.1, 3600),
        fetch_timeout_seconds=_number(r, f.get("fetch_timeout_seconds"), f"{where}.fetch_timeout_seconds",
                                      5, 0.1, 60),
    )
    return spec if len(r.errors) == before else None


def _static_jwks(r: Reader, f: dict[str, Any], where: str, source: str) -> dict[str, Any] | None:
    if "jwks" in f and "jwks_file" in f:
        r.error(where, "set jwks or jwks_file, not both")
        return None
    if "jwks" in f:
        doc = f["jwks"]
    elif "jwks_file" in f:
        path = Path(str(f["jwks_file"]))
        if not path.is_absolute():
            path = Path(source).parent / path
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            r.error(f"{where}.jwks_file", f"cannot read a JWKS JSON from {path}: {exc}")
            return None
    else:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        r.error(f"{where}.jwks", "expected a JWKS object with a 'keys' list")
        return None
    return doc


def parse_access(r: Reader, value: Any, issuer_names: set[str]) -> tuple[AccessRule, ...]:
    rules: list[AccessRule] = []
    for i, item in enumerate(r.seq(value, "access")):
        where = f"access[{i}]"
        f = r.mapping(item, where, {"name", "match", "require"})
        name = r.typed(f.get("name"), f"{where}.name", str, f"access-{i}")
        match = r.mapping(f.get("match"), f"{where}.match", {"class", "model", "listener"})
        require = r.mapping(f.get("require"), f"{where}.require", {"scopes", "roles", "plans", "issuers"})
        if not require:
            r.error(f"{where}.require", "set at least one of scopes, roles, plans, issuers")
        workload = None
        if "class" in match:
            workload = r.choice(match["class"], f"{where}.match.class", WorkloadClass,
                                ", ".join(w.value for w in WorkloadClass))
        issuers = frozenset(_str_list(r, require.get("issuers"), f"{where}.require.issuers"))
        for unknown in sorted(issuers - issuer_names):
            r.error(f"{where}.require.issuers", f"unknown issuer name {unknown!r}")
        rules.append(AccessRule(
            name=name, workload=workload,
            model=folded_model(r.typed(match.get("model"), f"{where}.match.model", str, None)),
            listener=r.typed(match.get("listener"), f"{where}.match.listener", str, None),
            scopes=frozenset(_str_list(r, require.get("scopes"), f"{where}.require.scopes")),
            roles=frozenset(_str_list(r, require.get("roles"), f"{where}.require.roles")),
            plans=frozenset(_str_list(r, require.get("plans"), f"{where}.require.plans")),
            issuers=issuers,
        ))
    return tuple(rules)

