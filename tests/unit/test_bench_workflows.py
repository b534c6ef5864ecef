"""The workflows benchmark's figures and report, without servers (benchmarks/workflows.py)."""

from __future__ import annotations

import time

import pytest

from benchmarks import workflows as wf


def _round(overheads: list[float], starts: list[float], runs_per_s: float,
           speedup: float | None = 10.0) -> dict[str, object]:
    return {"path": "dbos", "step_overhead_ms": overheads, "start_ms": starts,
            "wall_ms": [o * wf.STEPS for o in overheads], "runs_per_s": runs_per_s,
            "fanout_speedup": speedup, "fanout_parallel_s": 0.5, "fanout_sequential_s": 5.0,
            "errors": 0}


def test_step_overhead_is_the_workflow_minus_the_direct_calls_per_step() -> None:
    assert wf.step_overhead_ms(wall_ms=45.0, direct_ms=5.0, steps=10) == pytest.approx(4.0)
    assert wf.step_overhead_ms(wall_ms=12.0, direct_ms=0.0, steps=1) == pytest.approx(12.0)


def test_step_overhead_refuses_a_workflow_without_steps() -> None:
    with pytest.raises(ValueError, match="steps must be at least 1"):
        wf.step_overhead_ms(10.0, 1.0, steps=0)


def test_start_is_the_request_to_the_first_step_in_ms() -> None:
    assert wf.start_ms(requested_at=100.0, first_step_at=100.0125) == pytest.approx(12.5)


def test_fanout_speedup_is_sequential_over_parallel_and_none_when_unmeasured() -> None:
    assert wf.fanout_speedup(5.0, 0.25) == pytest.approx(20.0)
    assert wf.fanout_speedup(None, 0.25) is None
    assert wf.fanout_speedup(5.0, None) is None


def test_percentiles_sort_their_input_and_are_none_when_empty() -> None:
    assert wf.pct([3.0, 1.0, 2.0], 50) == 2.0
    assert wf.pct([1.0, 2.0, 3.0, 4.0, 5.0], 100) == 5.0
    assert wf.pct([], 99) is None


def test_headline_takes_the_median_of_round_p50s_and_pools_samples_for_p99() -> None:
    rounds = [_round([1.0, 2.0, 3.0], [5.0], 100.0),
              _round([10.0, 20.0, 30.0], [7.0], 50.0),
              _round([4.0, 5.0, 6.0], [9.0], 80.0)]
    head = wf.headline(rounds)
    assert head["step_overhead_ms_p50"] == 5.0  # round p50s 2, 20, 5
    assert head["step_overhead_ms_p50_range"] == [2.0, 20.0]
    assert head["step_overhead_ms_p99"] == pytest.approx(wf.pct(
        [1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 4.0, 5.0, 6.0], 99))
    assert head["step_overhead_samples"] == 9
    assert head["p99_thin"] is True
    assert head["start_ms_p50"] == 7.0
    assert head["runs_per_s"] == 80.0
    assert head["rounds"] == 3


def test_a_failed_round_counts_as_an_error_and_adds_no_figures() -> None:
    head = wf.headline([_round([2.0], [3.0], 40.0),
                        {"path": "dbos", "failed": "client exited 1", "errors": 1}])
    assert head["rounds"] == 1
    assert head["failed_rounds"] == 1
    assert head["errors"] == 1
    assert head["step_overhead_ms_p50"] == 2.0


def test_every_mesh_verdict_says_not_measured_while_the_mesh_path_is_missing() -> None:
    heads = {"dbos": wf.headline([_round([3.0], [3.0], 80.0)])}
    verdicts = wf.verdicts(heads, {wf.MESH: wf.MESH_NOT_BUILT})
    assert set(wf.TARGETS) <= set(verdicts)
    assert all(v.startswith("not measured: ") for v in verdicts.values())
    assert not any(v == "pass" or v.startswith("miss") for v in verdicts.values())


def test_mesh_verdicts_compare_with_the_targets_and_every_peer() -> None:
    heads = {wf.MESH: wf.headline([_round([2.0], [4.0], 200.0)]),
             "temporal": wf.headline([_round([50.0], [50.0], 20.0)]),
             "dbos": wf.headline([_round([1.5], [3.0], 100.0)])}
    verdicts = wf.verdicts(heads, {})
    assert verdicts["step_overhead_ms_p50"] == "pass"
    assert verdicts["start_ms_p50"] == "pass"
    assert verdicts["step_overhead_below_peers"].startswith("miss")  # dbos is faster
    assert "dbos 1.5" in verdicts["step_overhead_below_peers"]
    assert verdicts["resume_s_p50"] == "not measured"
    assert "10.00x temporal" in verdicts["runs_per_s_vs_peers"]


def test_the_report_marks_the_mesh_not_measured_and_shows_the_peers() -> None:
    raw = [{"round": 0, **_round([3.0, 4.0], [2.0, 2.5], 90.0),
            "settings": {"library": "dbos test"}}]
    settings = wf.Settings.for_mode(quick=True)
    results = wf.build_results(raw, settings, "python -m benchmarks workflows --quick",
                               (wf.MESH, "dbos"), {wf.MESH: wf.MESH_NOT_BUILT}, None)
    markdown = wf.render_markdown(results)
    assert results["headlines"].keys() == {"dbos"}
    assert f"**mesh is not measured**: {wf.MESH_NOT_BUILT}" in markdown
    overhead_row = next(line for line in markdown.splitlines()
                        if line.startswith("| step overhead p50"))
    assert overhead_row.split("|")[2].strip() == "not measured"
    assert "3.50" in overhead_row.split("|")[3]


def test_the_report_says_failed_for_a_peer_whose_every_round_failed() -> None:
    raw = [{"round": 0, "path": "dbos", "failed": "client exited 1", "errors": 1}]
    results = wf.build_results(raw, wf.Settings.for_mode(quick=True), "cmd",
                               (wf.MESH, "dbos"), {wf.MESH: wf.MESH_NOT_BUILT}, None)
    assert results["failures"] == [{"round": 0, "path": "dbos", "failed": "client exited 1"}]
    row = next(line for line in wf.render_markdown(results).splitlines()
               if line.startswith("| step overhead p50"))
    assert row.split("|")[3].strip() == "failed"


def test_paths_rotate_between_rounds() -> None:
    paths = ("a", "b", "c")
    assert wf.order(0, paths) == ("a", "b", "c")
    assert wf.order(1, paths) == ("b", "c", "a")
    assert wf.order(3, paths) == ("a", "b", "c")


def test_the_mesh_path_is_reported_unavailable_not_silently_skipped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert wf.unavailable([wf.MESH]) == {}, "the Coordinator is installed here"
    monkeypatch.setattr(wf, "find_spec", lambda name: None)
    assert wf.unavailable([wf.MESH]) == {wf.MESH: wf.MESH_NOT_BUILT}


def _trial(resume_s: float | None) -> dict[str, object]:
    return {"resume_s": resume_s, "owner": "n1", "error": "" if resume_s else "boom",
            "detail": {}}


def _mesh_round(resume: list[float | None], lower: list[float]) -> dict[str, object]:
    return {**_round([2.0], [6.0], 100.0), "path": wf.MESH,
            "start_step_started_ms": lower, "resume_trials": [_trial(r) for r in resume]}


def test_resume_pools_every_rounds_trials_and_counts_a_failed_trial_as_an_error() -> None:
    head = wf.headline([_mesh_round([4.0, 6.0], [3.0]), _mesh_round([5.0, None], [5.0])])
    assert head["resume_s_p50"] == 5.0  # the median of 4, 6, 5 (the failed one has none)
    assert head["resume_s_range"] == [4.0, 6.0]
    assert head["resume_s_max"] == 6.0
    assert (head["resume_trials"], head["resume_failed"]) == (4, 1)
    assert head["errors"] == 1
    assert head["start_step_started_ms_p50"] == 4.0  # round p50s 3 and 5


def test_a_path_without_resume_trials_has_no_resume_figures() -> None:
    head = wf.headline([_round([2.0], [3.0], 40.0)])
    assert "resume_s_p50" not in head
    assert head["start_step_started_ms_p50"] is None


def test_the_resume_verdict_compares_the_pooled_median_with_10_s() -> None:
    fast = {wf.MESH: wf.headline([_mesh_round([4.0, 5.0], [1.0])])}
    slow = {wf.MESH: wf.headline([_mesh_round([12.0, 11.0, 3.0], [1.0])])}
    assert wf.verdicts(fast, {})["resume_s_p50"] == "pass"
    assert wf.verdicts(slow, {})["resume_s_p50"] == "miss: 11 > 10"


def test_the_report_shows_the_mesh_resume_and_both_start_bounds() -> None:
    raw = [{"round": 0, **_mesh_round([4.5, 5.5], [3.25]), "settings": {"layout": "x"}},
           {"round": 0, **_round([3.0], [2.0], 90.0), "settings": {"library": "d"}}]
    results = wf.build_results(raw, wf.Settings.for_mode(quick=True), "cmd",
                               (wf.MESH, "dbos"), {}, None, {"startup_s": {}})
    lines = wf.render_markdown(results).splitlines()
    resume = next(line for line in lines if line.startswith("| resume after SIGKILL"))
    assert resume.split("|")[2].strip() == "5.00 (4.50-5.50), 2 trials"
    assert resume.split("|")[3].strip() == "n/a"
    lower = next(line for line in lines if line.startswith("| start to first step recorded"))
    assert lower.split("|")[2].strip().startswith("3.25")
    assert results["verdicts"]["resume_s_p50"] == "pass"


def test_a_client_that_crashes_after_printing_its_result_keeps_it_with_one_more_error(
        ) -> None:
    result = {"path": "temporal", "errors": 2, "error_samples": ["seq: x"],
              "step_overhead_ms": [50.0]}
    kept = wf.kept_after_crash(result, -6, "...\nFatal Python error: PyGILState_Release\n")
    assert kept["errors"] == 3
    assert kept["exit_code"] == -6
    assert kept["step_overhead_ms"] == [50.0]
    assert kept["error_samples"][-1] == ("exit: the client exited -6 after printing its "
                                         "result: Fatal Python error: PyGILState_Release")
    assert wf.headline([kept])["errors"] == 3


class _Fake:
    """A driver that logs its calls (no servers)."""

    name = "fake"

    def __init__(self) -> None:
        self.log: list[str] = []

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def direct(self, n: int) -> list[float]:
        self.log.append("direct")
        return [time.time()] * n

    async def seq(self, n: int) -> list[float]:
        self.log.append("seq")
        return [time.time()] * n

    async def one(self) -> None: ...

    async def fanout(self, n: int, sleep_s: float, parallel: bool) -> None: ...

    def settings(self) -> dict[str, object]:
        return {}


async def test_the_direct_baseline_is_taken_in_blocks_between_the_workflow_runs() -> None:
    driver = _Fake()
    settings = wf.Settings("quick", rounds=1, seq_count=30, seq_time_s=30.0, runs=2,
                           fanout_trials=1, warmup=0, client_timeout_s=30.0)
    out = await wf.measure(driver, settings, [])
    blocks = "".join("d" if c == "direct" else "s" for c in driver.log)
    per = "d" * (wf.DIRECT_REPS // wf.BLOCKS) + "s" * 3  # 30 runs in 10 blocks
    assert blocks == per * wf.BLOCKS
    assert len(out["wall_ms"]) == 30
    assert len(out["direct_ms_blocks"]) == wf.BLOCKS
