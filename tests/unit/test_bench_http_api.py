"""The pure parts of the http_api benchmark: the gRPC-web client's framing and trailers,
the figures computed within rounds, their medians, the targets' verdicts and the report."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.http_api import (
    FIGURES,
    build_results,
    grpc_web_frame,
    grpc_web_status,
    parse_grpc_web,
    render_markdown,
    round_figures,
    spread,
    summarize_unary,
    verdicts,
)
from benchmarks.http_api import Settings as HttpApiSettings


def _trailer(text: str) -> bytes:
    data = text.encode()
    return b"\x80" + len(data).to_bytes(4, "big") + data


def test_a_frame_is_a_flag_a_big_endian_length_and_the_message() -> None:
    assert grpc_web_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert grpc_web_frame(b"") == b"\x00\x00\x00\x00\x00"


def test_a_response_body_gives_its_messages_and_its_trailers() -> None:
    body = (grpc_web_frame(b"one") + grpc_web_frame(b"")
            + _trailer("grpc-status:0\r\nGrpc-Message: fine\r\n"))
    messages, trailers = parse_grpc_web(body)
    assert messages == [b"one", b""]
    assert trailers == {"grpc-status": "0", "grpc-message": "fine"}


@pytest.mark.parametrize(("body", "why"), [
    (b"\x00\x00\x00", "truncated gRPC-web frame header"),
    (b"\x00\x00\x00\x00\x09short", "truncated gRPC-web frame"),
    (b"\x01\x00\x00\x00\x01z", "compressed"),
])
def test_a_broken_body_is_refused_with_what_is_wrong(body: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_grpc_web(body)


def test_the_status_comes_from_the_trailers_else_a_trailers_only_response() -> None:
    assert grpc_web_status({"grpc-status": "0"}, {"grpc-status": "13"}) == ("0", "")
    assert grpc_web_status({}, {"grpc-status": "5", "grpc-message": "no"}) == ("5", "no")
    assert grpc_web_status({}, {})[0] == "missing"


def _stream(round_: int, path: str, concurrency: int, total: float, first: float,
            per_s: float) -> dict[str, Any]:
    return {"round": round_, "kind": "stream", "path": path, "concurrency": concurrency,
            "workload": "burst", "calls": 10, "errors": 0, "error_kinds": {},
            "total_p50_ms": total, "first_p50_ms": first, "per_token_p50_ms": 0.1,
            "gap_p50_ms": 0.1, "calls_per_s": per_s, "messages_per_call": 3.0,
            "client_cpu_pct": 10.0, "client_cpu_us_per_call": 100.0,
            "server_cpu_us_per_call": 500.0, "upstream_cpu_us_per_call": 50.0,
            "server_cpu_us_per_call_by_process": None, "capped": False, "loop": "uvloop",
            "samples_ms": {"total": [total], "first": [first], "per_token": [0.1],
                           "gap": [0.1]}}


def _unary(round_: int, path: str, p50: float) -> dict[str, Any]:
    return {"round": round_, "kind": "unary", "path": path, "concurrency": 1, "calls": 3,
            "errors": 1 if path == "grpc-web" else 0,
            "error_kinds": {"grpc_status_14": 1} if path == "grpc-web" else {},
            "total_p50_ms": p50, "calls_per_s": 1000 / p50, "client_cpu_pct": 5.0,
            "client_cpu_us_per_call": 50.0, "server_cpu_us_per_call": 300.0,
            "server_cpu_us_per_call_by_process": {"gateway": 200.0, "node": 100.0},
            "loop": "uvloop", "samples_ms": {"total": [p50 - 0.1, p50, p50 + 0.1]}}


def _round(index: int, http_extra: float) -> list[dict[str, Any]]:
    return [_stream(index, "direct", 1, 10.0, 3.0, 90.0),
            _stream(index, "litellm-proxy", 1, 70.0, 20.0, 14.0),
            _stream(index, "grpc", 1, 20.0, 12.0, 48.0),
            _stream(index, "http", 1, 20.0 + http_extra, 12.5, 45.0),
            _stream(index, "direct", 64, 900.0, 800.0, 70.0),
            _stream(index, "grpc", 64, 1000.0, 900.0, 60.0),
            _stream(index, "http", 64, 1100.0, 950.0, 57.0),
            _unary(index, "grpc", 1.0), _unary(index, "grpc-web", 1.5)]


def test_each_figure_is_computed_within_its_round() -> None:
    raw = _round(0, 1.0) + _round(1, 3.0)
    rows = round_figures(raw, 2)
    assert [r["overhead_ms_p50_http"] for r in rows] == [1.0, 3.0]
    assert rows[0]["overhead_ms_p50_http_vs_direct"] == 11.0
    assert rows[0]["overhead_ms_p50_litellm_proxy"] == 60.0
    assert rows[0]["first_token_overhead_ms_p50_http"] == 0.5
    assert rows[0]["ratio_streams_c64"] == 0.95
    assert rows[0]["ratio_p50_grpc_web"] == 1.5
    # no LiteLLM at c=64 in these rounds: not measured, not zero
    assert rows[0]["ratio_streams_c64_litellm_proxy_vs_direct"] is None
    assert set(FIGURES) <= set(rows[0])


def test_a_path_missing_from_a_round_leaves_its_figures_unmeasured() -> None:
    raw = [r for r in _round(0, 1.0) if r["path"] != "http"]
    row = round_figures(raw, 1)[0]
    assert row["overhead_ms_p50_http"] is None
    assert row["ratio_streams_c64"] is None
    assert row["overhead_ms_p50_grpc_vs_direct"] == 10.0


def test_spread_is_the_median_and_range_of_what_was_measured() -> None:
    assert spread([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0,
                                             "rounds": 3}
    assert spread([None])["median"] is None


def test_verdicts_follow_each_targets_rule() -> None:
    checks = verdicts({"overhead_ms_p50_http": 2.0, "overhead_ms_p50_http_vs_direct": 12.0,
                       "overhead_ms_p50_litellm_proxy": 60.0, "ratio_streams_c64": 0.89})
    assert checks["overhead_ms_p50_http"]["verdict"] == "pass"  # at most 2 ms
    assert checks["overhead_ms_p50_http_vs_direct"]["verdict"] == "pass"
    assert checks["overhead_ms_p50_http_vs_direct"]["bound_value"] == 60.0
    assert checks["ratio_streams_c64"]["verdict"] == "miss"
    missing = verdicts({"overhead_ms_p50_http": 2.1, "overhead_ms_p50_http_vs_direct": 1.0})
    assert missing["overhead_ms_p50_http"]["verdict"] == "miss"
    assert missing["overhead_ms_p50_http_vs_direct"]["verdict"] == "not measured"
    assert missing["ratio_streams_c64"]["verdict"] == "not measured"


def test_unary_cells_pool_latencies_and_sum_errors_over_rounds() -> None:
    raw = _round(0, 1.0) + _round(1, 3.0)
    cells = {c["path"]: c for c in summarize_unary(raw)}
    assert cells["grpc-web"]["total_n"] == 6
    assert cells["grpc-web"]["total_p50_ms"] == 1.5
    assert cells["grpc-web"]["total_p99_ms"] is None  # too few samples for a p99
    assert cells["grpc-web"]["errors"] == 2
    assert cells["grpc-web"]["error_kinds"] == {"grpc_status_14": 2}
    assert cells["grpc"]["server_cpu_us_per_call_by_process"] == {"gateway": 200.0,
                                                                  "node": 100.0}


def test_the_results_and_their_report_name_every_figure_and_verdict() -> None:
    raw = _round(0, 1.0) + _round(1, 3.0)
    settings = HttpApiSettings.for_mode(quick=True)
    results = build_results(raw, None, settings, "python -m benchmarks http_api --quick",
                            {"litellm-proxy": "not installed"})
    assert results["overhead_ms_p50_http"] == 2.0  # the median of 1 and 3
    assert results["figures"]["overhead_ms_p50_http"]["min"] == 1.0
    assert results["targets"]["ratio_streams_c64"]["verdict"] == "pass"
    assert {(c["path"], c["concurrency"]) for c in results["cells"]} == {
        ("direct", 1), ("grpc", 1), ("http", 1), ("direct", 64), ("grpc", 64), ("http", 64)}
    assert all("samples_ms" not in r for r in results["raw"])
    results["log_findings"] = {"run": {}, "stop": {}}
    text = render_markdown(results)
    assert "`overhead_ms_p50_http` = 2.00, target <= 2.0: **pass**" in text
    assert "**litellm-proxy: not measured**: not installed." in text
    assert "grpc-web grpc_status_14 2" not in text  # unary errors are listed by cell
    assert "grpc-web unary c=1: grpc_status_14 2" in text
