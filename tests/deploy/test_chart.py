"""The Helm chart, checked with the real Helm engine (helm-python-sdk embeds Helm v4), every
rendered manifest validated against the Kubernetes schemas, the Envoy config inside it
validated by Envoy, the policy inside it by the sidecar's own loader."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from extproc.config.loader import parse
from extproc.devstack.envoy_config import pool_clusters
from tests.support import envoy_binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "tcp-one-worker": {"sidecar": {"transport": "tcp", "workers": 1}},
    "uds-one-worker": {"sidecar": {"workers": 1}},
    "sentinel": {"redis": {"url": "redis+sentinel://sentinel-0.redis:26379,sentinel-1.redis:26379/mymaster"}},
    "cluster": {"redis": {"url": "redis+cluster://redis-0.redis:6379,redis-1.redis:6379"}},
    "existing-secret": {"redis": {"existingSecret": "my-redis"}},
    "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "grafanaDashboard": {"enabled": True},
                   "otel": {"endpoint": "http://otel-collector.observability:4317"}},
    "issuer-keys-from-secret": {
        "extraVolumes": [{"name": "idp-keys", "secret": {"secretName": "idp-jwks"}}],
        "extraVolumeMounts": [{"name": "idp-keys", "mountPath": "/etc/extproc-keys", "readOnly": True}],
        "extraEnv": [{"name": "SSL_CERT_FILE", "value": "/etc/extproc-keys/ca.crt"}],
        "imagePullSecrets": [{"name": "regcred"}], "serviceAccountName": "gateway",
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "extproc"}}}],
    },
    "three-pools-two-fallbacks": {
        "pools": [{"name": n, "host": f"{n}.models", "port": 8000} for n in ("pool-a", "pool-b", "pool-c")],
        "policy": {"routing": {"pools": ["pool-a", "pool-b", "pool-c"], "max_fallbacks": 2,
                               "routes": [{"id": "all", "pool": "pool-a", "fallbacks": ["pool-b", "pool-c"]}]}},
    },
    "no-autoscaling": {"autoscaling": {"enabled": False}, "replicaCount": 3,
                       "podDisruptionBudget": {"enabled": False}, "networkPolicy": {"enabled": False}},
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    chart = helm_python.Chart.load(CHART)
    out = chart.render(values or {}, name="gw", namespace="ai")
    docs = []
    for name, text in out.items():
        if name.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_every_manifest_is_valid_kubernetes(variant: str) -> None:
    docs = render(VARIANTS[variant])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap"} <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # Prometheus Operator CRDs are not in the Kubernetes schemas: check their shape.
            assert doc["kind"] in ("ServiceMonitor", "PrometheusRule")
            spec = doc["spec"]
            assert spec.get("endpoints") or spec.get("groups")
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    if variant == "monitoring":
        assert {"ServiceMonitor", "PrometheusRule"} <= kinds
        rules = by_kind(docs, "PrometheusRule")[0]["spec"]["groups"][0]["rules"]
        assert any(r["alert"] == "ExtprocSidecarUnavailable" for r in rules)
        dashboards = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
        assert "extproc.json" in dashboards[0]["data"]
    if variant == "no-autoscaling":
        assert "HorizontalPodAutoscaler" not in kinds
        assert by_kind(docs, "Deployment")[0]["spec"]["replicas"] == 3


def test_helm_lint_is_clean() -> None:
    report = helm_python.lint(CHART, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("variant", ["default", "tcp-one-worker", "uds-one-worker", "monitoring",
                                     "three-pools-two-fallbacks"])
def test_envoy_config_in_the_chart_passes_envoy_validate(variant: str, tmp_path: Path) -> None:
    docs = render(VARIANTS[variant])
    envoy_cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-envoy"))
    path = tmp_path / "envoy.yaml"
    path.write_text(envoy_cm["data"]["envoy.yaml"])
    out = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    config = yaml.safe_load(path.read_text())
    sidecar = next(c for c in config["static_resources"]["clusters"] if c["name"] == "extproc")
    endpoints = sidecar["load_assignment"]["endpoints"][0]["lb_endpoints"]
    deployment = by_kind(docs, "Deployment")[0]
    args = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar")["args"]
    workers = int(next(a for a in args if a.startswith("--workers=")).split("=")[1])
    assert len(endpoints) == workers  # one Envoy endpoint per sidecar worker
    if variant.startswith("tcp"):
        assert endpoints[0]["endpoint"]["address"]["socket_address"]["port_value"] == 50051
    else:
        expected = "/run/extproc/ext.sock" if workers == 1 else "/run/extproc/ext-0.sock"
        assert endpoints[0]["endpoint"]["address"]["pipe"]["path"] == expected
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    pools = {n: c for n, c in clusters.items() if n not in {"extproc", "otel_collector", "envoy_admin"}}
    # The pools, and the same failover clusters the sidecar names (and `extproc envoy-config` renders).
    names = [p["name"] for p in VARIANTS[variant].get("pools", [{"name": "pool-a"}, {"name": "pool-b"}])]
    depth = VARIANTS[variant].get("policy", {}).get("routing", {}).get("max_fallbacks", 1)
    expected = [json.loads(line.removeprefix("  - ")) for line in pool_clusters(
        {n: ("h", 1) for n in names}, depth).splitlines()]
    assert set(pools) == {c["name"] for c in expected}
    for cluster in expected:
        if "cluster_type" in cluster:
            assert pools[cluster["name"]] == cluster
    # The admin (which can stop Envoy) stays on loopback; probes and scrapers use "ops".
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    ops = next(li for li in config["static_resources"]["listeners"] if li["name"] == "ops")
    assert ops["address"]["socket_address"]["port_value"] == 9902


def test_policy_in_the_chart_loads_in_the_sidecar() -> None:
    policy_cm = next(d for d in by_kind(render(), "ConfigMap") if d["metadata"]["name"].endswith("-policy"))
    config = parse(policy_cm["data"]["policy.yaml"].encode(), "chart policy")
    assert config.pools == ("pool-a", "pool-b")


def test_pod_shape_security_and_shutdown_order() -> None:
    deployment = by_kind(render(), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"envoy", "sidecar"}
    for c in containers.values():
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"readinessProbe", "livenessProbe", "startupProbe", "resources"} <= set(c)
        assert any(m["mountPath"] == "/run/extproc" for m in c["volumeMounts"])  # the shared sockets
    envoy_stop = containers["envoy"]["lifecycle"]["preStop"]["sleep"]["seconds"]
    hook = containers["sidecar"]["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert "drain_listeners?graceful" in hook  # the sidecar starts Envoy's graceful drain
    sleeps = [int(x) for x in re.findall(r"time\.sleep\((\d+)\)", hook)]
    sidecar_stop = sum(sleeps)
    drain = int(next(a for a in containers["sidecar"]["args"] if a.startswith("--drain-seconds=")).split("=")[1])
    assert sidecar_stop > envoy_stop  # Envoy stops taking traffic before the sidecar drains
    assert pod["terminationGracePeriodSeconds"] > sidecar_stop + drain
    assert "--drain-time-s" in containers["envoy"]["args"]
    env = {e["name"]: e for e in containers["sidecar"]["env"]}
    assert env["EXTPROC_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "url"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["sockets"] and "configMap" in volumes["policy"]
    assert "EXTPROC_ADMIN_TOKEN" not in env  # the records API is off unless a Secret is named


def test_admin_token_comes_from_a_secret() -> None:
    pod = by_kind(render({"admin": {"tokenSecret": "extproc-admin"}}), "Deployment")[0]["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["containers"] if c["name"] == "sidecar")
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["EXTPROC_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "extproc-admin", "key": "token"}


def test_bad_values_are_refused() -> None:
    chart = helm_python.Chart.load(CHART)
    with pytest.raises(helm_python.HelmError):
        chart.validate_schema({"sidecar": {"transport": "pigeon"}})
    with pytest.raises(helm_python.HelmError):
        chart.validate_schema({"redis": {"url": "http://not-redis"}})
    with pytest.raises(helm_python.HelmError, match="terminationGracePeriodSeconds must be at least"):
        render({"terminationGracePeriodSeconds": 20})
    with pytest.raises(helm_python.HelmError):
        chart.validate_schema({"envoy": {"authzPort": 0}})
    with pytest.raises(helm_python.HelmError, match="not in pools"):
        render({"policy": {"routing": {"pools": ["pool-z"], "routes": [{"pool": "pool-z"}]}}})


@pytest.mark.parametrize("name", ["gateway.yaml", "auth_guard.lua", "usage.lua"])
def test_chart_envoy_bootstrap_is_the_projects(name: str) -> None:
    assert (CHART / "files" / name).read_text() == (ROOT / "envoy" / name).read_text(), \
        f"deploy/k8s/files/{name} is not envoy/{name}: it must be a symlink to ../../../envoy/{name}"


def test_chart_renders_the_auth_guard_as_the_project_does() -> None:
    from extproc.devstack.envoy_config import AuthGuard

    cm = next(d for d in by_kind(render({"envoy": {"authGuard": {"failures": 7, "windowSeconds": 30}}}),
                                 "ConfigMap") if d["metadata"]["name"].endswith("-envoy"))
    envoy = yaml.safe_load(cm["data"]["envoy.yaml"])
    filters = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    lua = filters["http_filters"][0]["typed_config"]["default_source_code"]["inline_string"]
    assert lua == json.loads(AuthGuard(7, 30).lua())


def test_dockerfile_lints_and_its_build_step_works(tmp_path: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    out = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    # The build stage: a wheel of the package from the same files the Dockerfile copies.
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    assert list(tmp_path.glob("extproc-*.whl"))


def test_metrics_are_on_their_own_headless_service() -> None:
    services = {d["metadata"]["name"]: d for d in by_kind(render(), "Service")}
    client, metrics = services["gw-extproc"], services["gw-extproc-metrics"]
    assert {p["name"] for p in client["spec"]["ports"]} == {"http", "http-authz"}
    assert metrics["spec"]["clusterIP"] == "None"
    assert {p["name"] for p in metrics["spec"]["ports"]} == {"metrics", "envoy-ops"}
