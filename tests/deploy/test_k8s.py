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

from mesh.config import load_config
from mesh.embedded.envoy import validate_config

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
