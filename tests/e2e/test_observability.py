"""Observability through a real Envoy: metrics move as the traffic implies; traces connect."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, start_stack
from tests.otlp_collector import Collector

pytestmark = pytest.mark.e2e


def scrape(admin: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


def test_metrics_move_as_the_traffic_implies(stack: Stack) -> None:
    admin = stack.sidecar_admin  # type: ignore[attr-defined]
    before = scrape(admin)
    pro = stack.token(tenant="metrics-co", plan="pro")
    for _ in range(5):
        assert stack.chat("gpt-4o", token=pro).status == 200
    for _ in range(3):
        assert stack.request("GET", "/nope/at/all").status == 404
    assert stack.request("GET", "/v1/models", token=None).status == 401
    time.sleep(0.2)
    after = scrape(admin)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("extproc_decisions_total", adapter="ext_proc", outcome="allow", reason="allowed",
                 workload_class="inference", route="gpt-4o") == 5
    assert delta("extproc_decisions_total", reason="unknown_workload") == 3
    assert delta("extproc_decisions_total", reason="missing_credentials") == 1
    assert delta("extproc_decision_duration_seconds_count", adapter="ext_proc", phase="total") == 9
    assert delta("extproc_decision_duration_seconds_count", phase="quota") == 5
    assert delta("extproc_decision_duration_seconds_count", phase="identify") == 9
    assert delta("extproc_tenant_decisions_total", tenant="metrics-co", outcome="allow") == 5
    assert delta("extproc_tokens_reserved_total", workload_class="inference", route="gpt-4o") > 0
    assert delta("extproc_redis_command_duration_seconds_count", op="admit") == 5
    assert delta("extproc_token_cache_total", result="hit") >= 4
    assert metric(after, "extproc_jwks_fetches_total", issuer="demo", result="ok") >= 1
    assert metric(after, "extproc_issuer_healthy", issuer="demo") == 1
    assert metric(after, "extproc_config_info") == 1
    assert metric(after, "extproc_quota_breaker_open") == 0


def test_traces_continue_envoys_trace_context(fresh_dir: Path) -> None:
    collector = Collector()
    s = start_stack(fresh_dir, otlp_port=collector.port)
    try:
        resp = s.chat("gpt-4o", token=s.token(tenant="traced", plan="pro"))
        assert resp.status == 200
        traceparent = resp.headers["x-demo-traceparent"]  # what the upstream received from Envoy
        trace_id = traceparent.split("-")[1]
        deadline = time.monotonic() + 10
        while True:
            names = {(svc, name) for svc, _, name, _ in collector.find(trace_id)}
            if {("extproc", "extproc.decision"), ("extproc", "redis admit")} <= names and any(
                    svc == "extproc-gateway" for svc, _ in names):
                break
            assert time.monotonic() < deadline, (trace_id, names, collector.spans[-5:])
            time.sleep(0.1)
        decision = next(a for svc, _, name, a in collector.find(trace_id) if name == "extproc.decision")
        assert decision["extproc.decision_id"] == resp.headers["x-extproc-decision-id"]
        assert decision["extproc.reason"] == "allowed" and decision["gen_ai.request.model"] == "gpt-4o"
    finally:
        s.stop()
        collector.stop()


DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
_METRIC = re.compile(r"\b((?:extproc|envoy)_[a-z0-9_]+)\b(?!\s*=)")


def _exported(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            if kind == "counter":
                names.add(f"{name}_total" if not name.endswith("_total") else name)
    return names


def test_dashboard_and_alerts_name_only_exported_metrics(stack: Stack) -> None:
    import json

    import yaml

    dashboard = json.loads((DEPLOY / "dashboards" / "extproc.json").read_text())
    rules = yaml.safe_load((DEPLOY / "alerts.yaml").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) > 20
    # Make every series exist: traffic of each kind, including a quota denial.
    free = stack.token(tenant="dash-co", plan="free")
    stack.chat("gpt-4o", token=stack.token(tenant="dash-pro", plan="pro"))
    for _ in range(62):
        stack.request("GET", "/v1/models", token=free)
    with urllib.request.urlopen(f"http://{stack.sidecar_admin}/metrics") as r:  # type: ignore[attr-defined]
        sidecar = _exported(r.read().decode())
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports.admin}/stats/prometheus") as r:
        envoy = _exported(r.read().decode())
    used = {m for e in exprs for m in _METRIC.findall(e)}
    missing = sorted(m for m in used if m not in (sidecar if m.startswith("extproc_") else envoy))
    assert missing == [], missing
    assert {"extproc_redis_errors_total", "extproc_degraded_decisions_total"} <= used
