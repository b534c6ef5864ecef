"""deploy/k8s: each overlay, as ``kubectl kustomize`` builds it, passes the real validators
and the rules a review of the manifests would apply."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry

from mesh.config import load_config
from mesh.embedded.envoy import validate_config
from mesh.observability.metrics import FRAMEWORK_METRICS, EngineMetrics
from tests.deploy.test_dashboards import metric_names
from tests.promtool import promtool

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent
OVERLAYS = ["dev", "prod"]
KEDA_CRD = K8S / "schemas" / "keda.sh_scaledobjects.yaml"
NATS_POD_LABELS = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "revo-nats",
                   "app.kubernetes.io/component": "nats"}
"""The pods of the NATS chart's release revo-nats (its nats.selectorLabels), which the
overlays' NetworkPolicies select though the chart, not kustomize, creates them."""

Doc = dict[str, Any]


@cache
def built(overlay: str) -> str:
    result = subprocess.run([str(BIN / "kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def docs(overlay: str, kind: str | None = None) -> list[Doc]:
    return [d for d in yaml.safe_load_all(built(overlay))
            if d and (kind is None or d["kind"] == kind)]


def pod_templates(overlay: str) -> Iterator[tuple[str, Doc]]:
    for doc in docs(overlay, "Deployment"):
        yield doc["metadata"]["name"], doc["spec"]["template"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_kubernetes_validate_strict(overlay: str) -> None:
    result = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-"],
                            input=built(overlay), capture_output=True, text=True, timeout=120,
                            check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "ERROR" not in out, out
    # kinds it has no schema for are only warned about: those must be the ones checked below
    unchecked = set(re.findall(r"find schema for kind (\w+)", out))
    assert unchecked <= {"ScaledObject"}, out


def _strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it: unknown fields refused (pruned)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def keda_schema() -> Doc:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema: Doc = _strict(version["schema"]["openAPIV3Schema"])
    # metadata is the API server's ObjectMeta, which the CRD leaves open
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaled_objects_match_the_keda_crd(overlay: str) -> None:
    scaled = docs(overlay, "ScaledObject")
    assert {s["metadata"]["name"] for s in scaled} == {"revo-parallel", "revo-workflows"}
    targets = {d["metadata"]["name"] for d in docs(overlay, "Deployment")}
    for obj in scaled:
        jsonschema.validate(obj, keda_schema())
        assert obj["spec"]["scaleTargetRef"]["name"] in targets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jetstream_triggers_name_the_real_stream_and_the_leader_aware_endpoint(
        overlay: str) -> None:
    from revo_engine_parallel.store import STREAM

    triggers = [t["metadata"] for s in docs(overlay, "ScaledObject")
                for t in s["spec"]["triggers"] if t["type"] == "nats-jetstream"]
    assert triggers
    namespace = docs(overlay, "Deployment")[0]["metadata"]["namespace"]
    for meta in triggers:
        assert meta["stream"] == STREAM
        assert re.fullmatch(r"q[1-9]-[A-Za-z0-9_-]+", meta["consumer"]), meta  # dispatch.py
        # the headless service: per-server names resolve, so KEDA finds the consumer leader
        assert meta["natsServerMonitoringEndpoint"] == \
            f"revo-nats-headless.{namespace}.svc.cluster.local:8222"


def _triggers(overlay: str, kind: str) -> list[tuple[str, Doc]]:
    """(ScaledObject name, trigger) of every trigger of type ``kind``."""
    return [(s["metadata"]["name"], t) for s in docs(overlay, "ScaledObject")
            for t in s["spec"]["triggers"] if t["type"] == kind]


def _exposed(name: str, kind: str) -> set[str]:
    """The sample names a family of this name and type puts on a scrape."""
    if kind == "counter":
        return {name.removesuffix("_total") + "_total"}
    if kind == "histogram":
        return {name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return {name}


@cache
def declared_metrics() -> frozenset[str]:
    """Sample names the autoscaled engines declare (Parallel Mind's and the Coordinator's
    own declarations, run against a registry) and the framework's families: what a
    revo-parallel or revo-workflows pod serves, without starting a mesh."""
    from types import SimpleNamespace
    from typing import cast

    from mesh.runtime.workers import WorkerPool
    from revo_engine_parallel.dispatch import Dispatcher
    from revo_engine_parallel.metrics import declare_metrics
    from revo_engine_workflows.metrics import CoordinatorMeters

    registry = CollectorRegistry()
    metrics = EngineMetrics(registry, "node-1")
    stats = SimpleNamespace(succeeded=0, failed=0, dead_lettered=0, cancelled=0)
    declare_metrics(metrics, cast(WorkerPool, SimpleNamespace(size=0, busy=0)),
                    cast(Dispatcher, SimpleNamespace(depth_by_priority=dict, stats=stats)))
    CoordinatorMeters(metrics, lambda: 0.0)
    names = {name for family in registry.collect()
             for name in _exposed(family.name, family.type)}
    names |= {name for spec in FRAMEWORK_METRICS for name in _exposed(spec.name, spec.kind)}
    return frozenset(names)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_scaled_object_has_a_backlog_trigger_besides_cpu(overlay: str) -> None:
    for scaled in docs(overlay, "ScaledObject"):
        name, kinds = scaled["metadata"]["name"], {t["type"] for t in scaled["spec"]["triggers"]}
        assert "cpu" in kinds, name
        assert kinds & {"prometheus", "nats-jetstream"}, f"{name} scales on CPU only"
    # Parallel Mind's backlog is spread over one consumer per (priority, owner): only the
    # Prometheus depth covers every queue, a nats-jetstream trigger reads one
    assert "revo-parallel" in {name for name, _ in _triggers(overlay, "prometheus")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_triggers_query_declared_metrics_of_this_namespace(overlay: str) -> None:
    triggers = _triggers(overlay, "prometheus")
    assert triggers
    namespace = docs(overlay, "Deployment")[0]["metadata"]["namespace"]
    for name, trigger in triggers:
        meta = trigger["metadata"]
        where = f"{name}/{trigger.get('name')}: {meta['query']}"
        names = metric_names(meta["query"])
        assert names, where
        missing = names - declared_metrics()
        assert not missing, f"{where}: no engine or the framework declares {sorted(missing)}"
        # every selector keeps to this mesh's pods (another one may share the Prometheus)
        for metric in names:
            matchers = re.findall(rf"\b{metric}\b(\{{[^}}]*\}})?", meta["query"])
            assert all(f'namespace="{namespace}"' in m for m in matchers), \
                f"{where}: {metric} without namespace=\"{namespace}\""
        assert meta["serverAddress"] == \
            "http://prometheus-operated.monitoring.svc.cluster.local:9090", where
        assert float(meta["threshold"]) > 0, where
        assert meta["ignoreNullValues"] == "false", where  # no data: fallback, not zero
        assert trigger.get("metricType", "AverageValue") == "AverageValue", where


_NODES = ("parallel-0", "parallel-1", "parallel-2")
BACKLOG_CASES: dict[str, tuple[dict[str, str], float]] = {
    # every node reports the same mesh-wide depth: 10 at priority 5 and 4 at priority 1 is
    # a backlog of 14 whatever the number of nodes reporting it
    "task-backlog": ({**{f'parallel_mind_queue_depth{{namespace="revo",node="{n}",'
                         f'priority="5"}}': "10" for n in _NODES},
                      **{f'parallel_mind_queue_depth{{namespace="revo",node="{n}",'
                         f'priority="1"}}': "4" for n in _NODES},
                      'parallel_mind_queue_depth{namespace="other",node="x",priority="5"}':
                          "500"}, 14.0),
    # runs are per node: 3 + 5 + 7
    "runs-active": ({'coordinator_runs_active{namespace="revo",node="wf-0"}': "3",
                     'coordinator_runs_active{namespace="revo",node="wf-1"}': "5",
                     'coordinator_runs_active{namespace="revo",node="wf-2"}': "7",
                     'coordinator_runs_active{namespace="other",node="x"}': "100"}, 15.0),
}
"""Per prometheus trigger (by its ``name``): series as the revo pods of three nodes (and a
mesh in another namespace) serve them, and the backlog the query must return."""


def test_backlog_queries_count_the_mesh_once(tmp_path: Path) -> None:
    triggers = {t["name"]: t["metadata"]["query"] for _, t in _triggers("prod", "prometheus")}
    assert set(triggers) == set(BACKLOG_CASES)
    unit = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": series, "values": f"{value}x5"}
                         for by_series, _ in BACKLOG_CASES.values()
                         for series, value in by_series.items()],
        "promql_expr_test": [{"expr": triggers[name], "eval_time": "5m",
                              "exp_samples": [{"labels": "{}", "value": expected}]}
                             for name, (_, expected) in BACKLOG_CASES.items()]}]}
    path = tmp_path / "backlog_test.yml"
    path.write_text(yaml.safe_dump(unit))
    result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True,
                            text=True, timeout=60, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_resources_probes_and_runs_as_non_root(overlay: str) -> None:
    for name, template in pod_templates(overlay):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["serviceAccountName"] == "revo", name
        assert spec.get("topologySpreadConstraints"), name
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in spec["containers"]:
            where = f"{name}/{container['name']}"
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), where
            assert "readinessProbe" in container, where
            assert "livenessProbe" in container, where
            assert container["readinessProbe"] != container["livenessProbe"], where
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp, f"{where}: nothing mounted at /tmp"
            assert tmp[0]["name"] in empty_dirs, f"{where}: /tmp is not an emptyDir"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mesh_probes_ask_grpc_health_by_service(overlay: str) -> None:
    ready = {}
    for name, template in pod_templates(overlay):
        container = template["spec"]["containers"][0]
        if container.get("args", [None])[0] in ("gateway", "node"):
            assert container["livenessProbe"]["grpc"]["service"] == "", name
            ready[name] = container["readinessProbe"]["grpc"]["service"]
    assert ready == {"revo-gateway": "revo.mesh.v1.MeshService", "revo-node": "revo.node",
                     "revo-parallel": "revo.tasks.v1.TaskService",
                     "revo-workflows": "revo.workflows.v1.WorkflowService"}


def _matches(selector: Doc, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if (op == "In" and value not in expr["values"]) or (
                op == "NotIn" and value in expr["values"]) or (
                op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_network_policy_pod_selector_matches_a_workload(overlay: str) -> None:
    pods = [t["metadata"]["labels"] for _, t in pod_templates(overlay)] + [NATS_POD_LABELS]
    policies = docs(overlay, "NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) ==
               {"Ingress", "Egress"} and not p["spec"].get("ingress")
               and not p["spec"].get("egress") for p in policies), "no default deny"
    for policy in policies:
        name = policy["metadata"]["name"]
        selectors = [policy["spec"]["podSelector"]]
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            peers = rule.get("from", []) + rule.get("to", [])
            # a peer in this namespace (no namespaceSelector) must be a pod of ours
            selectors += [p["podSelector"] for p in peers
                          if "podSelector" in p and "namespaceSelector" not in p]
        for selector in selectors:
            assert any(_matches(selector, labels) for labels in pods), \
                f"NetworkPolicy {name}: {selector} selects no workload"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_config_map_holds_real_settings(overlay: str) -> None:
    env = {}
    for config_map in docs(overlay, "ConfigMap"):
        if config_map["metadata"]["name"].startswith("revo-config"):
            env.update(config_map["data"])
    for _, template in pod_templates(overlay):
        env.update({e["name"]: e["value"] for c in template["spec"]["containers"]
                    for e in c.get("env", []) if e["name"].startswith("REVO_")})
    assert env
    config = load_config(environ=env, read_file=False)  # an unknown key is a ConfigError
    assert config.nats.replicas == (3 if overlay == "prod" else 1)
    assert config.node.health_address == "0.0.0.0:50052"


def test_envoy_config_is_the_fresh_render_and_envoy_accepts_it() -> None:
    sys.path.insert(0, str(K8S))
    try:
        render_envoy = importlib.import_module("render_envoy")  # a script, not a package
    finally:
        sys.path.remove(str(K8S))
    assert render_envoy.OUTPUT.read_text() == render_envoy.render(), \
        "stale: run .venv/bin/python deploy/k8s/render_envoy.py"
    result = validate_config(render_envoy.OUTPUT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_values_make_a_three_server_jetstream_cluster() -> None:
    nats = yaml.safe_load((K8S / "nats" / "values.yaml").read_text())
    assert nats["config"]["cluster"] == {**nats["config"]["cluster"], "enabled": True,
                                         "replicas": 3}
    assert nats["config"]["jetstream"]["enabled"] is True
    assert nats["config"]["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert nats["fullnameOverride"] == "revo-nats"
    milvus = yaml.safe_load((K8S / "milvus" / "values.yaml").read_text())
    assert milvus["service"]["port"] == 19530
