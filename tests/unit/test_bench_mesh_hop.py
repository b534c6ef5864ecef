"""The pure parts of the mesh_hop harness: round order, merged generators, cells, runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.mesh_hop import (
    _merge_generators,
    find_cell,
    median_of_runs,
    rotation,
    summarize,
)


def _part(calls: int, rps: float, cpu_s: float, pct: float) -> dict[str, Any]:
    return {"address": "127.0.0.1:1", "payload_bytes": 16, "calls": calls, "errors": 1,
            "error_codes": {"RESOURCE_EXHAUSTED": 1}, "elapsed_s": 2.0, "rps": rps,
            "capped": False, "loadgen_cpu_pct": pct, "loadgen_cpu_s": cpu_s,
            "warmup_calls": 5, "warmup_errors": 0, "loop": "uvloop", "concurrency": 32,
            "p50_ms": 1.0, "late_s": 0.0}


def test_every_target_leads_a_round_in_turn() -> None:
    order = rotation(("plain", "mesh", "colocated"))
    assert [order(i)[0] for i in range(4)] == ["plain", "mesh", "colocated", "plain"]
    assert sorted(order(1)) == ["colocated", "mesh", "plain"]


def test_split_generators_sum_calls_and_pool_latencies() -> None:
    parts = [_part(2, 1.0, 0.5, 25.0), _part(2, 1.5, 0.25, 12.5)]
    merged = _merge_generators(parts, [1_000_000, 2_000_000, 3_000_000, 4_000_000], 64)
    assert (merged["calls"], merged["rps"], merged["errors"]) == (4, 2.5, 2)
    assert merged["p50_ms"] == 2.5  # from the pooled latencies, not either generator's
    assert merged["loadgen_cpu_pct"] == 37.5
    assert merged["loadgen_cpu_pct_per_process"] == [25.0, 12.5]
    assert merged["loadgen_cpu_us_per_call"] == 187500.0
    assert (merged["generators"], merged["concurrency"]) == (2, 64)


def test_cells_keep_loads_apart_and_count_refusals_apart() -> None:
    raw = []
    for index in range(3):
        for generators in (1, 2):
            raw.append({"round": index, "target": "on", "concurrency": 64,
                        "generators": generators, "p50_ms": 1.0 + generators, "p99_ms": 9.0,
                        "rps": 100.0 * generators, "calls": 3000, "errors": 2,
                        "error_codes": {"RESOURCE_EXHAUSTED": 1, "UNAVAILABLE": 1},
                        "capped": False, "server_cpu_us_per_call": 10.0,
                        "loadgen_cpu_pct": 50.0, "loadgen_cpu_pct_per_process": [30.0, 20.0],
                        "loadgen_cpu_us_per_call": 5.0, "probe": {"ops": 4.0}})
    cells = summarize(raw, ("on",))
    assert [c["generators"] for c in cells] == [1, 2]
    split = find_cell(cells, "on", 64, 2)
    assert (split["rps"], split["refused"], split["failed"]) == (200.0, 3, 3)
    assert split["loadgen_cpu_pct_max_process"] == 30.0
    assert split["probe"] == {"ops": 12.0}
    assert find_cell(cells, "on", 64)["generators"] == 1


def test_median_of_runs_takes_only_runs_of_the_same_method(tmp_path: Path) -> None:
    history = tmp_path / "history"
    history.mkdir()
    for stamp, method, value in (("20261201T000000Z", "v2", 0.5),
                                 ("20261201T010000Z", "v1", 9.0),
                                 ("20261201T020000Z", "v2", 0.7)):
        (history / f"mesh_hop-{stamp}-abc.json").write_text(json.dumps(
            {"mode": "full", "method": method, "ratio": value,
             "record": {"commit": "abc", "date": stamp}}))
    current = {"mode": "full", "method": "v2", "ratio": 0.8,
               "machine": {"date": "2026-12-01T03:00:00+00:00"}}
    summary = median_of_runs("mesh_hop", current, ("ratio",), tmp_path)
    assert summary["count"] == 3
    assert summary["medians"]["ratio"] == 0.7
    assert summary["runs"][-1]["this_run"] is True
