"""Parse and validate one YAML policy file into a ``PolicyConfig``.

Every problem is collected (not just the first) and reported with the file and
the field path, e.g. ``policy.yaml: routing.routes[2].pool: unknown pool 'pool-z'``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import yaml

from extproc.config.builtin_rules import BUILTIN_RULES
from extproc.config.identity_section import parse_access, parse_issuers
from extproc.config.model import AuthMode, ListenerPolicy, PolicyConfig, UnknownAction
from extproc.config.quota_section import parse_quotas
from extproc.config.reader import ConfigError, Reader
from extproc.config.records_section import parse_records
from extproc.domain.classify import ModelSource, RuleSpec, TokenUse, WorkloadClass
from extproc.domain.facts import INTERNAL_HEADER_PREFIX
from extproc.routing.document import TABLE_FIELDS, parse_table
from extproc.routing.table import CHAIN_SEPARATOR, TableSpec

DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_BODY_BYTES_CEILING = 64 << 20
#: Below Envoy's request_timeout (60 s by default), so the sidecar answers first, with a decision id.
DEFAULT_BODY_TIMEOUT_SECONDS = 30
MAX_BODY_TIMEOUT_SECONDS = 3600
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
# A group containing + or * (or {n,}) that is itself quantified: the classic catastrophic
# backtracking shape. Rules run on client-controlled paths, on the event loop.
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*(?:[+*]|\{\d*,\d*\})(?:[^()\\]|\\.)*\)(?:[+*]|\{\d*,)")
# Pool names: Envoy cluster names, without the failover clusters' separator.
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
assert not _CLUSTER_NAME.match(CHAIN_SEPARATOR)
#: Fallbacks per entry that Envoy's generated failover clusters cover by default (and at most).
DEFAULT_MAX_FALLBACKS = 1
MAX_FALLBACKS_CEILING = 3
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_MODEL_SOURCES = {"body", "header", "path"}

def load_file(path: str | Path) -> PolicyConfig:
    """Read and validate a policy file. Raises ``ConfigError`` naming the file and fields."""
    source = str(path)
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, [f"cannot read file: {exc.strerror or exc}"]) from exc
    return parse(text, source)


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # unhashable: left to the base class to reject
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: bytes, source: str) -> Any:
    """Strict, safe YAML (duplicate keys refused). Raises ``ConfigError`` naming line and column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from exc
    except RecursionError as exc:
        raise ConfigError(source, ["not valid YAML (nested too deeply)"]) from exc


def parse(text: bytes, source: str) -> PolicyConfig:
    doc = load_yaml(text, source)
    r = Reader()
    if doc is None:
        doc = {}
    root = r.mapping(doc, "", {"version", "listeners", "request_body", "classification", "routing",
                               "identity", "access", "quotas", "records"})
    version = root.get("version", 1)
    if type(version) is not int or version != 1:
        r.error("version", "only version 1 is supported")
    issuers = parse_issuers(r, root.get("identity"), source)
    access = parse_access(r, root.get("access"), {i.name for i in issuers})
    listeners = _listeners(r, root.get("listeners"), has_issuers=bool(issuers))
    body = r.mapping(root.get("request_body"), "request_body", {"max_bytes", "timeout_seconds"})
    max_body = r.typed(body.get("max_bytes"), "request_body.max_bytes", int, DEFAULT_MAX_BODY_BYTES)
    if not 1 <= max_body <= MAX_BODY_BYTES_CEILING:
        r.error("request_body.max_bytes", f"must be between 1 and {MAX_BODY_BYTES_CEILING}")
    body_timeout = r.typed(body.get("timeout_seconds"), "request_body.timeout_seconds", int,
                           DEFAULT_BODY_TIMEOUT_SECONDS)
    if not 1 <= body_timeout <= MAX_BODY_TIMEOUT_SECONDS:
        r.error("request_body.timeout_seconds", f"must be between 1 and {MAX_BODY_TIMEOUT_SECONDS}")
    rules = _classification(r, root.get("classification"))
    pools, max_fallbacks, routing = _routing(r, root.get("routing"))
    quotas = parse_quotas(r, root.get("quotas"), {entry.id for entry in routing.entries})
    records = parse_records(r, root.get("records"))
    if r.errors:
        raise ConfigError(source, r.errors)
    return PolicyConfig(
        source=source,
        digest=hashlib.sha256(text).hexdigest(),
        listeners=listeners,
        max_body_bytes=max_body,
        body_timeout_seconds=float(body_timeout),
        rules=rules,
        pools=pools,
        max_fallbacks=max_fallbacks,
        routing=routing,
        issuers=issuers,
        access=access,
        quotas=quotas,
        records=records,
    )


def _listeners(r: Reader, value: Any, has_issuers: bool) -> tuple[ListenerPolicy, ...]:
    """Per-listener policy; authentication defaults to required when issuers are configured."""
    default_auth = AuthMode.REQUIRED if has_issuers else AuthMode.NONE
    out = {"default": ListenerPolicy("default", authentication=default_auth)}
    for name, spec in r.free_mapping(value, "listeners").items():
        where = f"listeners.{name}"
        fields = r.mapping(spec, where, {"unknown_requests", "authentication"})
        action = r.choice(
            fields.get("unknown_requests", "deny"), f"{where}.unknown_requests", UnknownAction,
            "deny, allow",
        )
        auth = r.choice(fields.get("authentication", default_auth.value), f"{where}.authentication",
                        AuthMode, "required, optional, none")
        if auth in (AuthMode.REQUIRED, AuthMode.OPTIONAL) and not has_issuers:
            r.error(f"{where}.authentication", f"{auth.value} needs at least one identity.issuers entry")
        out[str(name)] = ListenerPolicy(str(name), action or UnknownAction.DENY, auth or default_auth)
    return tuple(out.values())


def _classification(r: Reader, value: Any) -> tuple[RuleSpec, ...]:
    spec = r.mapping(value, "classification", {"builtin_rules", "rules"})
    builtin = r.typed(spec.get("builtin_rules"), "classification.builtin_rules", bool, True)
    rules: list[RuleSpec] = []
    names: set[str] = set()
    for i, item in enumerate(r.seq(spec.get("rules"), "classification.rules")):
        rule = _rule(r, item, f"classification.rules[{i}]")
        if rule is None:
            continue
        if rule.name in names:
            r.error(f"classification.rules[{i}].name", f"duplicate rule name {rule.name!r}")
        names.add(rule.name)
        rules.append(rule)
    if builtin:
        rules.extend(BUILTIN_RULES)
    return tuple(rules)


def _rule(r: Reader, item: Any, where: str) -> RuleSpec | None:
    before = len(r.errors)
    f = r.mapping(item, where, {"name", "class", "when", "model", "tokens"})
    name = r.typed(f.get("name"), f"{where}.name", str, "")
    if not name:
        r.error(f"{where}.name", "required")
    workload = r.choice(f.get("class"), f"{where}.class", WorkloadClass,
                        ", ".join(w.value for w in WorkloadClass))
    when = r.mapping(f.get("when"), f"{where}.when",
                     {"methods", "path", "path_prefix", "path_regex", "hosts", "headers", "body"})
    methods = frozenset(str(m).upper() for m in r.seq(when.get("methods"), f"{where}.when.methods"))
    for m in methods - _METHODS:
        r.error(f"{where}.when.methods", f"unknown HTTP method {m!r}")
    path_keys = [k for k in ("path", "path_prefix", "path_regex") if k in when]
    if len(path_keys) > 1:
        r.error(f"{where}.when", f"set at most one of path, path_prefix, path_regex (got {path_keys})")
    path = r.typed(when.get("path"), f"{where}.when.path", str, None)
    prefix = r.typed(when.get("path_prefix"), f"{where}.when.path_prefix", str, None)
    regex = r.typed(when.get("path_regex"), f"{where}.when.path_regex", str, None)
    for key, p in (("path", path), ("path_prefix", prefix)):
        if p is not None and not p.startswith("/"):
            r.error(f"{where}.when.{key}", "must start with '/'")
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as exc:
            r.error(f"{where}.when.path_regex", f"invalid regex: {exc}")
        else:
            if _NESTED_QUANTIFIER.search(regex):
                r.error(f"{where}.when.path_regex",
                        "a repeated group that itself repeats (like (a+)+) can take exponential time "
                        "on a hostile path; rewrite it without nesting")
            if len(regex) > 512:
                r.error(f"{where}.when.path_regex", "longer than 512 characters")
    hosts = r.strings(when.get("hosts"), f"{where}.when.hosts")
    headers = []
    for hname, hval in r.free_mapping(when.get("headers"), f"{where}.when.headers").items():
        lname = hname.lower()
        if not _HEADER_NAME.match(lname):
            r.error(f"{where}.when.headers.{hname}", "not a valid header name")
        elif lname.replace("_", "-").startswith(INTERNAL_HEADER_PREFIX):
            r.error(f"{where}.when.headers.{hname}", "x-extproc-* headers are removed before rules run")
        if not isinstance(hval, str):
            r.error(f"{where}.when.headers.{hname}", f"expected a string (quote it), got {hval!r}")
        headers.append((lname, str(hval)))
    body = []
    for key, want in r.free_mapping(when.get("body"), f"{where}.when.body").items():
        if isinstance(want, list | dict):
            r.error(f"{where}.when.body.{key}", "expected a scalar value or '*'")
        body.append((key, want))
    model = _model_source(r, f.get("model"), f"{where}.model", regex)
    tokens = r.choice(f.get("tokens", TokenUse.GENERATION.value), f"{where}.tokens", TokenUse,
                      ", ".join(t.value for t in TokenUse))
    if len(r.errors) > before or workload is None or tokens is None:
        return None
    return RuleSpec(name, workload, methods, path, prefix, regex, hosts, tuple(headers), tuple(body), model,
                    tokens)


def _model_source(r: Reader, value: Any, where: str, regex: str | None) -> ModelSource | None:
    """``body.model``, ``header.x-model`` or ``path.model`` (a named group of ``path_regex``)."""
    if value is None:
        return None
    if not isinstance(value, str) or "." not in value:
        r.error(where, "expected 'body.FIELD', 'header.NAME' or 'path.GROUP'")
        return None
    kind, name = value.split(".", 1)
    if kind not in _MODEL_SOURCES or not name:
        r.error(where, "expected 'body.FIELD', 'header.NAME' or 'path.GROUP'")
        return None
    if kind == "header":
        name = name.lower()
        if not _HEADER_NAME.match(name) or name.replace("_", "-").startswith(INTERNAL_HEADER_PREFIX):
            r.error(where, f"{name!r} is not a header a rule can read")
            return None
    if kind == "path":
        groups = re.compile(regex).groupindex if regex and _compiles(regex) else {}
        if name not in groups:
            r.error(where, f"path_regex has no named group {name!r}")
            return None
    return ModelSource(kind, name)


def _compiles(regex: str) -> bool:
    try:
        re.compile(regex)
    except re.error:
        return False
    return True


def _routing(r: Reader, value: Any) -> tuple[tuple[str, ...], int, TableSpec]:
    """Pools Envoy knows, how many fallbacks its failover clusters cover, and the seed table."""
    spec = r.mapping(value, "routing", {"pools", "max_fallbacks"} | TABLE_FIELDS)
    pools = r.strings(spec.get("pools"), "routing.pools", unique=True)
    for i, pool in enumerate(pools):
        if not _CLUSTER_NAME.match(pool):
            r.error(f"routing.pools[{i}]", f"{pool!r} is not a valid Envoy cluster name")
    if not pools:
        r.error("routing.pools", "list at least one upstream pool (an Envoy cluster name)")
    max_fallbacks = r.typed(spec.get("max_fallbacks"), "routing.max_fallbacks", int, DEFAULT_MAX_FALLBACKS)
    if not 0 <= max_fallbacks <= MAX_FALLBACKS_CEILING:
        r.error("routing.max_fallbacks", f"must be between 0 and {MAX_FALLBACKS_CEILING}")
    return pools, max_fallbacks, parse_table(r, spec, "routing", pools, max_fallbacks)
