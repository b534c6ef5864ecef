"""The framework's metric names: defined once, documented from that one place, bounded."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from mesh.config import CatalogModel
from mesh.gateway.metrics import GatewayMeters
from mesh.models.metrics import CHAT, ModelMeters
from mesh.observability import metrics as m

OPERATORS = Path(__file__).parents[2] / "docs" / "operators.md"


def _series(registry: CollectorRegistry, family: str) -> int:
    """Label sets of histogram ``family`` (one ``_count`` sample each)."""
    return sum(1 for metric in registry.collect() if metric.name == family
               for sample in metric.samples if sample.name == f"{family}_count")


def test_the_operators_page_shows_the_reference_table_of_every_metric() -> None:
    page = OPERATORS.read_text()
    assert m.reference_table() in page, (
        "docs/operators.md is out of date: paste mesh.observability.metrics.reference_table()"
        " between its metrics markers")
    for spec in m.FRAMEWORK_METRICS:
        assert f"`{spec.name}`" in page


def test_every_name_is_prometheus_shaped_and_defined_once() -> None:
    names = [spec.name for spec in m.FRAMEWORK_METRICS]
    assert len(names) == len(set(names))
    for spec in m.FRAMEWORK_METRICS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        if spec.kind == "histogram":
            assert list(spec.buckets) == sorted(spec.buckets), spec.name
    # the OpenTelemetry GenAI conventions' boundaries
    assert m.GENAI_TOKEN_USAGE.buckets[-1] == 67108864
    assert m.GENAI_DURATION.buckets[:3] == (0.01, 0.02, 0.04)
    assert m.GENAI_TTFT.buckets[:3] == (0.001, 0.005, 0.01)


def test_unknown_model_names_all_land_in_one_other_series() -> None:
    registry = CollectorRegistry()
    meters = ModelMeters(m.EngineMetrics(registry, "n1"),
                         [CatalogModel(name="cheap", provider="openai")])
    for i in range(300):
        meters.call(CHAT, "openai", f"made-up-{i}").succeeded(0.0)
    meters.call(CHAT, "openai", "cheap").succeeded(0.0)
    # 'other' and 'cheap'
    assert _series(registry, "gen_ai_client_operation_duration_seconds") == 2


def test_unknown_methods_at_the_gateway_all_land_in_one_other_series() -> None:
    registry = CollectorRegistry()
    meters = GatewayMeters(m.EngineMetrics(registry, ""))

    async def handler(request: object, context: object) -> object:
        return request

    for i in range(300):
        meters.unary(f"/nobody.Announced/M{i}", handler, known=False)
    meters.unary("/revo.echo.v1.EchoService/Echo", handler)
    assert _series(registry, "revo_gateway_request_duration_seconds") == 2


def test_engine_metrics_are_bound_to_the_node_and_gone_when_closed() -> None:
    registry = CollectorRegistry()
    metrics = m.EngineMetrics(registry, "node-7")
    searched = metrics.histogram("x_search_duration_seconds", "searches", ("kind",))
    searched.labels("text").observe(0.5)
    metrics.gauge_callback("x_items", "items", lambda: 3)
    assert registry.get_sample_value("x_search_duration_seconds_count",
                                     {"node": "node-7", "kind": "text"}) == 1
    assert registry.get_sample_value("x_items", {"node": "node-7"}) == 3
    metrics.close()
    assert registry.get_sample_value("x_items", {"node": "node-7"}) is None
    assert registry.get_sample_value("x_search_duration_seconds_count",
                                     {"node": "node-7", "kind": "text"}) is None


def test_with_metrics_off_nothing_is_registered_and_calls_still_work() -> None:
    metrics = m.EngineMetrics(None, "n")
    metrics.counter("x_total", "x", ("a",)).labels("b").inc()
    metrics.histogram("y_seconds", "y").labels().observe(1.0)
    metrics.gauge_callback("z", "z", lambda: 1)
    assert not metrics.enabled
    assert not m.MetricsEndpoint("", "node.metrics_address").enabled


def test_loop_families_expose_what_prometheus_client_would() -> None:
    """The gateway's and the pools' lock-free families read like prometheus-client's own:
    cumulative buckets ending at +Inf, a sum and a count, counters as ``_total``, node
    labels first."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    metrics = m.EngineMetrics(registry, "n1")
    duration: m.Family[m.Observer] = metrics.declare_on_loop(m.ENGINE_DURATION)
    calls: m.Family[m.Incrementer] = metrics.declare_on_loop(m.ENGINE_CALLS)
    in_flight: m.Family[m.Setter] = m.EngineMetrics(registry, "").declare_on_loop(
        m.GATEWAY_IN_FLIGHT)
    child = duration.labels("echo", "revo.echo.v1.EchoService", "Echo")
    for seconds in (0.0004, 0.0005, 0.002, 0.3, 1000.0):  # 0.0005 is on a bound: le
        child.observe(seconds)
    calls.labels("echo", "revo.echo.v1.EchoService", "Echo").inc()
    calls.labels("echo", "revo.echo.v1.EchoService", "Echo").inc(2)
    in_flight.labels().inc()
    in_flight.labels().inc()
    in_flight.labels().dec()
    text = generate_latest(registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    base = (("engine", "echo"), ("method", "Echo"), ("node", "n1"),
            ("service", "revo.echo.v1.EchoService"))

    def bucket(le: str) -> float:
        return samples["revo_engine_call_duration_seconds_bucket",
                       tuple(sorted((*base, ("le", le))))]

    name = m.ENGINE_DURATION.name
    assert name == "revo_engine_call_duration_seconds"
    assert (bucket("0.0005"), bucket("0.001"), bucket("0.0025"), bucket("0.25"),
            bucket("0.5"), bucket("300.0"), bucket("+Inf")) == (2, 2, 3, 3, 4, 4, 5)
    assert samples[f"{name}_count", base] == 5
    assert abs(samples[f"{name}_sum", base] - 1000.3029) < 1e-9
    assert samples["revo_engine_calls_total", base] == 3
    assert samples["revo_gateway_requests_in_flight", ()] == 1
