"""benchmarks._report: every result names what it measured, and every full run is kept."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from benchmarks import _report
from benchmarks.__main__ import status
from benchmarks._report import history_runs, staleness, write_results


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True, cwd=_report.REPO_ROOT).stdout.strip()


def test_a_result_names_its_commit_date_machine_and_command(tmp_path: Path) -> None:
    json_path, md_path = write_results(
        "mesh_hop", {"mode": "quick", "command": "python -m benchmarks mesh_hop --quick"},
        "# table", tmp_path)
    record = json.loads(json_path.read_text())["record"]
    assert record["commit"] == _head()
    assert record["command"] == "python -m benchmarks mesh_hop --quick"
    assert record["date"].startswith("20")
    assert "CPUs" in record["machine"]
    assert isinstance(record["uncommitted"], list)
    footer = md_path.read_text().splitlines()[-1]
    assert f"commit `{record['commit']}`" in footer
    assert "python -m benchmarks mesh_hop --quick" in footer


def test_only_full_runs_are_kept_in_history_and_each_one_is(tmp_path: Path) -> None:
    write_results("tasks", {"mode": "quick"}, "quick", tmp_path)
    assert not (tmp_path / "history").exists()
    first = {"mode": "full", "machine": {"date": "2026-12-01T10:00:00+00:00"}, "value": 1}
    second = {"mode": "full", "machine": {"date": "2026-12-01T11:00:00+00:00"}, "value": 2}
    write_results("tasks", second, "second", tmp_path)
    write_results("tasks", first, "first", tmp_path)
    kept = sorted(p.name for p in (tmp_path / "history").iterdir())
    assert len(kept) == 4  # a .json and a .md for each run
    # oldest first, whatever order they were written in; the latest file is the last write
    assert [run["value"] for run in history_runs("tasks", tmp_path)] == [1, 2]
    assert json.loads((tmp_path / "tasks.json").read_text())["value"] == 1


def test_a_result_of_an_older_commit_is_stale_where_the_measured_code_changed() -> None:
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], capture_output=True,
                           text=True, check=True, cwd=_report.REPO_ROOT).stdout.split()[0]
    old = {"record": {"commit": first, "uncommitted": []}}
    assert "mesh/runtime/pool.py" in staleness(old, ("mesh/runtime",))
    current = {"record": {"commit": _head(), "uncommitted": []}}
    assert staleness(current, ("mesh/runtime",)) == []
    assert staleness({"mode": "full"}, ("mesh",)) == ["(the result names no commit)"]
    unknown = {"record": {"commit": "0000000", "uncommitted": []}}
    assert staleness(unknown, ("mesh",)) == ["(commit 0000000 is not in this repository)"]


def test_status_marks_each_committed_result(tmp_path: Path) -> None:
    write_results("recall", {"mode": "full", "machine": {"date": "2026-12-01T10:00:00+00:00"}},
                  "x", tmp_path)
    (tmp_path / "unrelated.json").write_text("{}")
    table = status(tmp_path)
    assert "`recall.json`" in table
    assert "unrelated" not in table
    row = next(line for line in table.splitlines() if "recall.json" in line)
    assert "full" in row
    assert f"`{_head()}`" in row
