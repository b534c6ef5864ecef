"""Every metric that a Grafana panel or a Prometheus rule names is one a running mesh
exports: one real mesh for the module (nats-server, a gateway and a node with every built-in
engine), calls that make the labelled series exist, one scrape of each; then each panel's
and each rule's query is read for metric names.

Names with a colon are recording rules and must be recorded in deploy/prometheus/rules;
Triton's and the NATS exporter's metrics (and Prometheus's ``up``) cannot come from this
mesh and are checked against deploy/prometheus/external-metrics.txt instead. The JSON of
the dashboards must be what deploy/grafana/dashboards.py writes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mesh.config import load_config
from mesh.embedded.nats_server import NatsServer
from mesh.gateway import Gateway
from mesh.runtime.node import Node
from mesh.testing import MeshHarness
from mesh.testing.llm import FakeLLMServer
from tests.integration.test_auth import AUTH, PASSWORD
from tests.integration.test_metrics import ECHO, KEY, KEY_ENV, _catalog, _produce_every_family

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS = ROOT / "deploy" / "prometheus"
ENGINES = ["echo", "models", "recall", "parallel", "workflows", "creative"]

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|\{[^}]*\}|\[[^\]]*\]'
                    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
                    r"|(?P<number>\d[\w.]*)"
                    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\(|(?=\s+(?:by|without)\b))?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names a PromQL expression reads: strings, label
    matchers, ranges, grouping lists and function names left out."""
    names = set()
    for match in _TOKEN.finditer(expr):
        name = match.group("name")
        if name and match.group("call") is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def _rules() -> list[dict[str, Any]]:
    return [rule for path in sorted((PROMETHEUS / "rules").glob("*.yml"))
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def _external() -> set[str]:
    lines = (PROMETHEUS / "external-metrics.txt").read_text().splitlines()
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


def _panel_queries() -> list[tuple[str, str]]:
    """(dashboard/panel title, expr) of every panel target of every dashboard file."""
    found = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    return found


def _scrape(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {sample.name for family in text_string_to_metric_families(text)
            for sample in family.samples}


async def _scrape_a_running_mesh(nats_url: str, home: Path, fake: FakeLLMServer) -> set[str]:
    broke = f"broke-{uuid.uuid4().hex[:8]}"
    config = load_config(
        environ={}, read_file=False, home=str(home), nats={"url": nats_url},
        gateway={"address": "127.0.0.1:0", "metrics_address": "127.0.0.1:0",
                 "http_address": "127.0.0.1:0"},
        node={"heartbeat_s": 0.25, "shutdown_grace_s": 5.0},
        plugins={"only": ENGINES},
        auth={**AUTH, "audit": {"enabled": True},
              "rate_limits": {"methods": {ECHO: {"rate": 1 / 60, "burst": 1}}}},
        models={"catalog": _catalog(fake), "retries": 0, "backoff_s": 0.01, "timeout_s": 5.0,
                "user_budgets_usd": {broke: 0.0}})
    node = Node(config)
    await node.start()
    gateway = Gateway(config)
    try:
        await gateway.start()
        mesh = MeshHarness(config, gateway, [node], grpc.aio.insecure_channel(gateway.address))
        try:
            for service in {b.service for _, b in node.routes.values()}:
                await mesh.wait_for_service(service, timeout=30)
            assert gateway.guard is not None
            await gateway.guard.users.create(broke, "developer", PASSWORD)
            await _produce_every_family(mesh, fake, broke)
            return (await asyncio.to_thread(_scrape, gateway.metrics.url)
                    | await asyncio.to_thread(_scrape, node.metrics.url))
        finally:
            await mesh.channel.close(None)
    finally:
        await gateway.stop(grace=1.0)
        await node.stop()


@pytest.fixture(scope="module")
def exported(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[set[str]]:
    """Sample names (``_bucket``/``_sum``/``_count`` included) a running mesh serves."""
    with pytest.MonkeyPatch.context() as patch, FakeLLMServer(api_key=KEY) as fake:
        patch.setenv(KEY_ENV, KEY)
        yield asyncio.run(_scrape_a_running_mesh(
            nats_server.url, tmp_path_factory.mktemp("dashboards"), fake))


def _unexported(names: set[str], exported: set[str]) -> set[str]:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    missing = set()
    for name in names:
        if ":" in name:
            if name not in recorded:
                missing.add(f"{name} (no recording rule records it)")
        elif name not in exported and name not in _external():
            missing.add(name)
    return missing


def test_the_scrape_has_every_engines_families(exported: set[str]) -> None:
    # the module's premise: a mesh with every built-in engine, not only the framework
    for name in ("perfect_recall_memories", "parallel_mind_busy_workers",
                 "creative_engine_innovation_score_count", "coordinator_runs_active",
                 "revo_models_budget_max_used_ratio", "revo_engine_errors_total"):
        assert name in exported, f"{name} is not on the mesh's scrape"


@pytest.mark.parametrize(("panel", "expr"), _panel_queries(), ids=lambda v: str(v)[:60])
def test_every_panel_queries_metrics_the_mesh_exports(panel: str, expr: str,
                                                      exported: set[str]) -> None:
    names = metric_names(expr)
    assert names, f"{panel}: no metric found in {expr!r}"
    missing = _unexported(names, exported)
    assert not missing, f"{panel}: nobody exports {sorted(missing)} ({expr})"


@pytest.mark.parametrize("rule", _rules(),
                         ids=lambda rule: str(rule.get("alert") or rule.get("record")))
def test_every_rule_reads_metrics_the_mesh_exports(rule: dict[str, Any],
                                                   exported: set[str]) -> None:
    missing = _unexported(metric_names(rule["expr"]), exported)
    assert not missing, f"nobody exports {sorted(missing)} ({rule['expr']})"


def test_the_metric_name_reader_sees_names_and_nothing_else() -> None:
    expr = ('histogram_quantile(0.95, sum by (service, le) (rate(a_b_bucket{code!="OK",'
            'x=~"a|b"}[5m]))) / on (service) group_left rec:x:y offset 1d > 1e6 and bool up')
    assert metric_names(expr) == {"a_b_bucket", "rec:x:y", "up"}


def test_the_dashboard_json_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("dashboards", GRAFANA / "dashboards.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered: dict[str, str] = module.render()
    on_disk = {path.name: path.read_text() for path in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == rendered, ("deploy/grafana/dashboards/*.json are stale: run "
                                 "`python deploy/grafana/dashboards.py`")
