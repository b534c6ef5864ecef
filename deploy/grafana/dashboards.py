"""The mesh's Grafana dashboards as code: ``python deploy/grafana/dashboards.py`` writes
``deploy/grafana/dashboards/*.json`` (one overview, one per engine).

Panels query Prometheus through the ``datasource`` variable (pick it when importing; a
provisioned Grafana gets its default Prometheus). Queries read the recording rules of
``deploy/prometheus/rules/recording.yml`` where one exists. ``tests/deploy/test_dashboards.py``
checks that the JSON files are what this script writes, and that every metric a panel names
is exported by a running mesh (or, for Triton and the NATS exporter, listed in
``deploy/prometheus/external-metrics.txt``). ``tests/deploy/test_dashboard_types.py``
type-checks each dashboard as ``@grafana/schema``'s ``Dashboard`` with ``tsc --strict``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
Panel = dict[str, Any]


def series(title: str, *exprs: str, unit: str = "short", legend: str = "",
           width: int = 12) -> Panel:
    """A time series panel; ``legend`` is Grafana's legend format for every query."""
    return {
        "type": "timeseries", "title": title, "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom",
                               "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
                     "legendFormat": legend or "__auto"} for i, expr in enumerate(exprs)],
        "gridPos": {"h": 8, "w": width, "x": 0, "y": 0},
    }


def stat(title: str, expr: str, unit: str = "short", legend: str = "") -> Panel:
    panel = series(title, expr, unit=unit, legend=legend, width=6)
    panel.update(type="stat", options={
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
        "orientation": "auto", "textMode": "auto"})
    panel["gridPos"]["h"] = 4
    return panel


def pool(engine: str) -> list[Panel]:
    """The framework's panels of one engine pool (``revo_engine_*``)."""
    sel = f'engine="{engine}"'
    return [
        series("Calls by method", f"sum by (method) (rate(revo_engine_calls_total{{{sel}}}[5m]))",
               unit="reqps", legend="{{method}}"),
        series("Errors by method and code",
               f"sum by (method, code) (rate(revo_engine_errors_total{{{sel}}}[5m]))",
               unit="reqps", legend="{{method}} {{code}}"),
        series("Call duration p95 by method",
               "histogram_quantile(0.95, sum by (method, le) "
               f"(rate(revo_engine_call_duration_seconds_bucket{{{sel}}}[5m])))",
               unit="s", legend="{{method}}"),
        series("Pool: queued, busy and alive actors",
               f"sum(revo_engine_queue_depth{{{sel}}})",
               f"sum(revo_engine_workers_busy{{{sel}}})",
               f"sum(revo_engine_workers_alive{{{sel}}})", legend="__auto"),
        stat("Healthy nodes", f'engine:engine_health_status:healthy_nodes{{{sel}}}'),
        stat("Restarts (1h)", f"sum(increase(revo_engine_restarts_total{{{sel}}}[1h]))"),
    ]


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    y = x = row_h = 0
    for index, panel in enumerate(panels, start=1):  # fill rows of 24 columns
        grid = panel["gridPos"]
        if x + grid["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        grid.update(x=x, y=y)
        x += grid["w"]
        row_h = max(row_h, grid["h"])
        panel["id"] = index
    return {
        "uid": uid, "title": title, "tags": ["revo"], "timezone": "browser",
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        # no "current": a provisioned Grafana picks its default Prometheus, and the schema's
        # VariableOption needs text and value (tests/deploy/test_dashboard_types.py)
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource",
            "query": "prometheus", "hide": 0, "refresh": 1,
            "options": [], "regex": "", "skipUrlSync": False}]},
        "annotations": {"list": []}, "links": [], "panels": panels,
    }


def overview() -> dict[str, Any]:
    return dashboard("revo-overview", "revo: overview", [
        series("Calls by service", "service:revo_gateway_requests:rate5m", unit="reqps",
               legend="{{service}}"),
        series("Error ratio by service (every non-OK code)",
               "service:revo_gateway_requests:error_ratio_rate5m", unit="percentunit",
               legend="{{service}}"),
        series("Call duration p95 by service",
               "service:revo_gateway_request_duration_seconds:p95_rate5m", unit="s",
               legend="{{service}}"),
        series("Codes", "sum by (code) (rate(revo_gateway_requests_total[5m]))",
               unit="reqps", legend="{{code}}"),
        series("Healthy nodes by engine", "engine:engine_health_status:healthy_nodes",
               legend="{{engine}}"),
        series("Engine error ratio", "engine:revo_engine_errors:ratio_rate5m",
               unit="percentunit", legend="{{engine}}"),
        stat("Calls in flight", "sum(revo_gateway_requests_in_flight)"),
        stat("Targets down",
             'count(up{job=~"revo-gateway|revo-node|triton|nats"} == 0) or vector(0)'),
        stat("Audit records pending", "sum(revo_gateway_audit_pending_records)"),
        stat("Model spend (USD/h)", "sum(model:revo_models_cost_usd:rate1h) * 3600",
             unit="currencyUSD"),
    ])


def recall() -> dict[str, Any]:
    return dashboard("revo-recall", "revo: Perfect Recall", [
        series("Search p95 by query kind (alert: 100 ms)",
               "query:perfect_recall_retrieval_duration_seconds:p95_rate5m", unit="s",
               legend="{{query}}"),
        series("Searches by index path",
               "sum by (index) (rate(perfect_recall_retrieval_duration_seconds_count[5m]))",
               unit="reqps", legend="{{index}}"),
        series("Writes by outcome", "sum by (outcome) (rate(perfect_recall_writes_total[5m]))",
               unit="ops", legend="{{outcome}}"),
        series("Memories and scopes (largest node index)", "max(perfect_recall_memories)",
               "max(perfect_recall_scopes)", legend="__auto"),
        stat("Expired memories purged (1h)",
             "sum(increase(perfect_recall_expired_purged_total[1h]))"),
        *pool("recall"),
    ])


def parallel() -> dict[str, Any]:
    return dashboard("revo-parallel", "revo: Parallel Mind (tasks)", [
        series("Tasks waiting and workers free", "revo:parallel_mind_tasks_waiting",
               "revo:parallel_mind_workers_free", legend="__auto"),
        series("Workers by node", "sum by (node) (parallel_mind_active_workers)",
               "sum by (node) (parallel_mind_busy_workers)", legend="{{node}}"),
        series("Queued or running by priority",
               "max by (priority) (parallel_mind_queue_depth)", legend="priority {{priority}}"),
        series("Finished by outcome",
               "sum by (outcome) (rate(parallel_mind_tasks_finished_total[5m]))", unit="ops",
               legend="{{outcome}}"),
        series("JetStream pending per task queue (consumer leader)",
               'consumer:jetstream_consumer_num_pending:leader{stream_name="REVO_TASKS"}',
               legend="{{consumer_name}}"),
        *pool("parallel"),
    ])


def creative() -> dict[str, Any]:
    return dashboard("revo-creative", "revo: Creative", [
        series("Innovation score: hour and day means",
               "revo:creative_engine_innovation_score:mean_rate1h",
               "revo:creative_engine_innovation_score:mean_rate1d", legend="__auto"),
        series("Innovation score p50",
               "histogram_quantile(0.5, sum by (le) "
               "(rate(creative_engine_innovation_score_bucket[1h])))", legend="p50"),
        series("Candidates by outcome",
               "sum by (outcome) (rate(creative_engine_candidates_total[5m]))", unit="ops",
               legend="{{outcome}}"),
        series("Set duration p95",
               "histogram_quantile(0.95, sum by (le) "
               "(rate(creative_engine_set_duration_seconds_bucket[5m])))", unit="s",
               legend="p95"),
        *pool("creative"),
    ])


def workflows() -> dict[str, Any]:
    return dashboard("revo-workflows", "revo: Coordinator (workflows)", [
        series("Coordination latency p95 by step kind",
               "histogram_quantile(0.95, sum by (kind, le) "
               "(rate(engine_coordination_latency_seconds_bucket[5m])))", unit="s",
               legend="{{kind}}"),
        series("Steps by kind and outcome",
               "sum by (kind, outcome) (rate(coordinator_steps_total[5m]))", unit="ops",
               legend="{{kind}} {{outcome}}"),
        series("Runs finished by outcome",
               "sum by (outcome) (rate(coordinator_runs_total[5m]))", unit="ops",
               legend="{{outcome}}"),
        stat("Runs active", "sum(coordinator_runs_active)"),
        *pool("workflows"),
    ])


def models() -> dict[str, Any]:
    return dashboard("revo-models", "revo: models", [
        series("Tokens by model and type",
               "sum by (gen_ai_request_model, gen_ai_token_type) "
               "(rate(gen_ai_client_token_usage_sum[5m]))", unit="short",
               legend="{{gen_ai_request_model}} {{gen_ai_token_type}}"),
        series("Call duration p95 by model",
               "histogram_quantile(0.95, sum by (gen_ai_request_model, le) "
               "(rate(gen_ai_client_operation_duration_seconds_bucket[5m])))", unit="s",
               legend="{{gen_ai_request_model}}"),
        series("Time to first token p95 by model",
               "histogram_quantile(0.95, sum by (gen_ai_request_model, le) "
               "(rate(gen_ai_server_time_to_first_token_seconds_bucket[5m])))", unit="s",
               legend="{{gen_ai_request_model}}"),
        series("Spend and savings (USD/h)", "model:revo_models_cost_usd:rate1h * 3600",
               "sum by (gen_ai_request_model) (rate(revo_models_savings_usd_total[1h])) * 3600",
               unit="currencyUSD", legend="{{gen_ai_request_model}}"),
        series("Fallbacks and mid-stream switches",
               "sum by (from_model, to_model) (rate(revo_models_fallbacks_total[5m]))",
               "sum by (from_model, to_model) (rate(revo_models_midstream_switches_total[5m]))",
               unit="ops", legend="{{from_model}} → {{to_model}}"),
        series("Budget refusals by model",
               "sum by (gen_ai_request_model) (rate(revo_models_budget_refusals_total[5m]))",
               unit="ops", legend="{{gen_ai_request_model}}"),
        stat("Largest budget share spent (alert: 90%)",
             "revo:revo_models_budget_max_used_ratio:max", unit="percentunit"),
        series("Triton queue time by model (alert: 100 ms)",
               "model:nv_inference_queue_duration_seconds:avg_rate5m", unit="s",
               legend="{{model}}"),
        series("Triton requests by model",
               "sum by (model) (rate(nv_inference_request_success[5m]))",
               "sum by (model) (rate(nv_inference_request_failure[5m]))", unit="reqps",
               legend="{{model}}"),
        *pool("models"),
    ])


DASHBOARDS = {"overview": overview, "recall": recall, "parallel": parallel,
              "creative": creative, "workflows": workflows, "models": models}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{name}.json": json.dumps(make(), indent=2, ensure_ascii=False) + "\n"
            for name, make in DASHBOARDS.items()}


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
    print(f"wrote {len(DASHBOARDS)} dashboards to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
