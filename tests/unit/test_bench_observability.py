"""The pure parts of the observability benchmark: settings, span attribution, ratios,
verdicts and the markdown, from a fabricated run; and the receiver's span count."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from benchmarks.mesh_hop import Settings, Target, find_cell, median_of_runs
from benchmarks.observability import (
    HEADLINES,
    LOADS,
    TARGETS,
    attribute_spans,
    build_results,
    render_markdown,
    target_settings,
)
from benchmarks.otlp_sink import CountingTraceService, span_count

P50_C1 = {"off": 1.0, "metrics": 1.02, "traced": 1.2, "sampled": 1.01}
RPS_C64 = {"off": 1000.0, "metrics": 960.0, "traced": 800.0, "sampled": 990.0}
SPANS_PER_CALL = {"traced": 4.0, "sampled": 0.04}
SETTINGS = Settings("quick", rounds=2, duration_s=2.0, warmup_s=1.0, max_calls=1000,
                    loads=LOADS)


def _row(index: int, position: int, target: str, concurrency: int,
         generators: int) -> dict[str, Any]:
    calls = 3000 - generators if concurrency == 1 else 10_000 - generators
    probe = {"cpu_s.gateway": 0.3, "cpu_s.node": 0.15, "cpu_s.nats": 0.03}
    if target in SPANS_PER_CALL:
        probe["cpu_s.sink"] = 0.06
    return {"round": index, "target": target, "position": position,
            "concurrency": concurrency, "generators": generators,
            "p50_ms": P50_C1[target] if concurrency == 1 else 20.0,
            "p99_ms": 3.0 if concurrency == 1 else 40.0,
            "rps": 900.0 if concurrency == 1 else RPS_C64[target],
            "calls": calls, "errors": 0, "error_codes": {}, "capped": False,
            "warmup_calls": 0, "warmup_errors": 0, "server_cpu_us_per_call": 160.0,
            "loadgen_cpu_pct": 40.0, "loadgen_cpu_pct_per_process": [20.0] * generators,
            "loadgen_cpu_us_per_call": 30.0, "loop": "uvloop", "loadavg_1m": 1.5,
            "probe": probe}


def fabricated_run() -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Two rounds of every target and load; each traced target's receiver counting
    exactly its spans per call (cumulative readings at each cell's start)."""
    raw: list[dict[str, Any]] = []
    received = {name: 0 for name in SPANS_PER_CALL}
    for index in range(SETTINGS.rounds):
        order = TARGETS[index:] + TARGETS[:index]
        for concurrency, generators in LOADS:
            for position, target in enumerate(order):
                row = _row(index, position, target, concurrency, generators)
                if target in SPANS_PER_CALL:
                    row["probe_start"] = {"spans": float(received[target])}
                    served = row["calls"] + generators
                    received[target] += round(SPANS_PER_CALL[target] * served)
                raw.append(row)
    return raw, received


def _inspected(received: dict[str, int]) -> dict[str, Any]:
    return {
        "checks": {
            "off": {"listening": {"node": [], "gateway": [50001]}, "serving_metrics": []},
            "metrics": {
                "gateway": {"url": "http://127.0.0.1:9001/metrics", "samples": 3,
                            "example": 'revo_gateway_requests_total{code="OK"} 1.0'},
                "node": {"url": "http://127.0.0.1:9002/metrics", "samples": 40}},
            "traced_spans_at_start": 8,
        },
        "sinks": {name: {"spans": n, "exports": 10, "bytes": 2_000_000, "settled": True,
                         "waited_s": 6.5} for name, n in received.items()},
    }


def results_of_fabricated_run(tmp_path: Path | None = None) -> dict[str, Any]:
    raw, received = fabricated_run()
    attribute_spans(raw, received)
    targets = {name: Target(name, "127.0.0.1:1", loop="uvloop") for name in TARGETS}
    orders = [list(TARGETS[i:] + TARGETS[:i]) for i in range(SETTINGS.rounds)]
    results = build_results(raw, targets, SETTINGS, "python -m benchmarks observability",
                            _inspected(received), orders)
    if tmp_path is not None:
        results["runs_summary"] = median_of_runs("observability", results,
                                                 tuple(h.key for h in HEADLINES), tmp_path)
    return results


def test_off_turns_metrics_and_tracing_off_and_the_others_add_them_in_turn() -> None:
    off = target_settings("off")
    assert off["REVO_GATEWAY__METRICS_ADDRESS"] == off["REVO_NODE__METRICS_ADDRESS"] == ""
    assert off["REVO_TRACING__ENABLED"] == "false"
    assert off["REVO_AUTH__ENABLED"] == "false"
    metrics = target_settings("metrics")
    assert metrics["REVO_GATEWAY__METRICS_ADDRESS"].startswith("127.0.0.1:")
    assert metrics["REVO_NODE__METRICS_ADDRESS"].startswith("127.0.0.1:")
    assert metrics["REVO_TRACING__ENABLED"] == "false"
    traced = target_settings("traced", "http://127.0.0.1:4317")
    sampled = target_settings("sampled", "http://127.0.0.1:4318")
    assert traced["REVO_TRACING__ENABLED"] == sampled["REVO_TRACING__ENABLED"] == "true"
    assert (traced["REVO_TRACING__SAMPLE_RATIO"], sampled["REVO_TRACING__SAMPLE_RATIO"]) \
        == ("1.0", "0.01")
    assert traced["REVO_TRACING__ENDPOINT"] == "http://127.0.0.1:4317"
    assert sampled["REVO_GATEWAY__METRICS_ADDRESS"] != ""
    with pytest.raises(ValueError, match="OTLP receiver"):
        target_settings("traced")
    with pytest.raises(ValueError, match="unknown target"):
        target_settings("everything")


def test_spans_that_arrive_after_a_cell_are_counted_for_it() -> None:
    raw: list[dict[str, Any]] = [
        {"target": "traced", "probe_start": {"spans": 0.0}},
        {"target": "off"},
        {"target": "traced", "probe_start": {"spans": 100.0}},
        {"target": "sampled", "probe_start": {"spans": 3.0}},
        {"target": "traced", "probe_start": {"spans": 250.0}},
    ]
    attribute_spans(raw, {"traced": 400, "sampled": 5})
    assert [r.get("spans_received") for r in raw] == [100, None, 150, 2, 150]


def test_ratios_are_to_off_and_judged_against_the_issue_targets() -> None:
    results = results_of_fabricated_run()
    assert results["ratio_p50_c1_metrics"] == 1.02
    assert results["ratio_p50_c1_traced"] == 1.2
    assert results["ratio_p50_c1_sampled"] == 1.01
    assert results["ratio_rps_c64_metrics"] == 0.96
    assert results["ratio_rps_c64_traced"] == 0.8
    assert results["pass"] == {"ratio_p50_c1_metrics": "pass", "ratio_p50_c1_traced": "miss",
                               "ratio_p50_c1_sampled": "pass", "ratio_rps_c64_metrics": "miss"}
    assert results["targets"]["ratio_rps_c64_metrics"] == {"min": 0.97}
    assert results["targets"]["ratio_p50_c1_traced"] == {"max": 1.15}
    assert results["median_round_ratios"]["ratio_p50_c1_metrics"] == 1.02
    assert [r["order"] for r in results["round_ratios"]] == [
        "off, metrics, traced, sampled", "metrics, traced, sampled, off"]


def test_a_ratio_on_its_bound_passes() -> None:
    raw, received = fabricated_run()
    for row in raw:
        if row["target"] == "metrics":
            row["rps"] = 970.0 if row["concurrency"] == 64 else row["rps"]
            row["p50_ms"] = 1.03 if row["concurrency"] == 1 else row["p50_ms"]
    attribute_spans(raw, received)
    results = build_results(raw, {}, SETTINGS, "cmd", _inspected(received))
    assert results["pass"]["ratio_rps_c64_metrics"] == "pass"
    assert results["pass"]["ratio_p50_c1_metrics"] == "pass"


def test_cells_carry_cpu_per_process_and_spans_per_call() -> None:
    results = results_of_fabricated_run()
    cells = results["cells"]
    traced = find_cell(cells, "traced", 1)
    assert traced["served"] == 6000
    assert traced["spans_received"] == 24_000
    assert traced["spans_per_call"] == 4.0
    assert traced["cpu_us_per_call"] == {"gateway": 100.0, "node": 50.0, "nats": 10.0,
                                         "sink": 20.0}
    assert "spans_received" not in find_cell(cells, "metrics", 1)
    assert "sink" not in find_cell(cells, "off", 64)["cpu_us_per_call"]
    assert find_cell(cells, "sampled", 64)["spans_per_call"] == 0.04
    assert results["sampled_share_of_traced_spans"] == {"c1": 0.01, "c64": 0.01}


def test_markdown_shows_verdicts_spans_checks_and_rounds(tmp_path: Path) -> None:
    text = render_markdown(results_of_fabricated_run(tmp_path))
    assert "## Headline: median of 1 run(s) of this method" in text
    assert "- metrics / off p50 c=1: **1.020x** (target <= 1.03): pass" in text
    assert "- traced / off p50 c=1: **1.200x** (target <= 1.15): miss" in text
    assert "- metrics / off req/s c=64: **0.960x** (target >= 0.97): miss" in text
    assert "**traced** (sampling 1): c=1: 24,000 spans for 6,000 calls (4.000 per call)" in text
    assert "traced spans per call (expected about 0.01): c1 0.0100, c64 0.0100." in text
    assert "revo_gateway_requests_total" in text
    assert "no port its processes listen on (node none, gateway [50001])" in text
    assert "| 2 | metrics, traced, sampled, off | 1.020 | 1.200 | 1.010 | 0.960 |" in text
    assert "median 1.5, range 1.5 - 1.5" in text  # the load average line


def test_the_receiver_counts_every_span_of_every_export() -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    for spans in (3, 2):
        scope = request.resource_spans.add().scope_spans.add()
        for i in range(spans):
            scope.spans.append(trace_pb2.Span(name=f"s{i}"))
    request.resource_spans[1].scope_spans.add().spans.append(trace_pb2.Span(name="x"))
    assert span_count(request) == 6
    service = CountingTraceService()
    for _ in range(2):
        asyncio.run(service.Export(request, None))
    assert service.stats() == {"spans": 12, "exports": 2, "bytes": 2 * request.ByteSize()}
