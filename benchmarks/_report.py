"""What every benchmark shares: latency statistics, machine facts, and writing its results.

A benchmark writes ``<results>/<name>.json`` (numbers for tools and CI) and
``<results>/<name>.md`` (a table for people) with :func:`write_results`. Every file it
writes names the commit it measured (and any uncommitted change in the code it measures),
the date, the machine and the command; every full run is also kept under
``<results>/history/`` so that a headline can be the median of runs, not the best one
(``../shared/BENCHMARKING.md``). :func:`staleness` says whether a result still measures
the code at HEAD (``python -m benchmarks status``).

Writing a result also draws its main figures as SVG under ``<results>/plots/``
(:mod:`benchmarks._plots`); ``python -m benchmarks plots`` (or this module with
``--plots``) draws them again from the committed JSON without running anything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import _plots

__all__ = [
    "MEASURES",
    "RESULTS_DIR",
    "history_runs",
    "machine_info",
    "markdown_table",
    "median",
    "percentile",
    "revision",
    "staleness",
    "write_plots",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PLOTS = "plots"
"""The folder of a results directory that holds the figures (``<name>-<chart>.svg``)."""
REPO_ROOT = RESULTS_DIR.parent.parent

# name -> the code whose change makes its committed result stale (besides the benchmark).
MEASURES: dict[str, tuple[str, ...]] = {
    # mesh_hop and auth_overhead run the default configuration: metrics on
    "mesh_hop": ("mesh/gateway", "mesh/transport", "mesh/runtime", "mesh/observability",
                 "plugins/echo/src"),
    "auth_overhead": ("mesh/gateway", "mesh/transport", "mesh/runtime", "mesh/auth",
                      "mesh/observability", "plugins/echo/src"),
    "observability": ("mesh/observability", "mesh/gateway", "mesh/runtime", "mesh/transport",
                      "plugins/echo/src", "benchmarks/otlp_sink.py"),
    "embedder": ("triton_models/embedder", "mesh/embedded/triton.py"),
    "router_overhead": ("mesh/models", "mesh/gateway", "mesh/transport", "mesh/runtime",
                        "mesh/testing/llm.py"),
    "http_api": ("mesh/gateway", "mesh/models", "mesh/transport", "mesh/runtime",
                 "mesh/testing/llm.py", "mesh/embedded/envoy.py", "envoy/envoy.yaml",
                 "plugins/echo/src", "benchmarks/router_overhead.py"),
    "generator": ("triton_models/generator", "mesh/models", "mesh/gateway",
                  "mesh/transport", "mesh/runtime"),
    "tasks": ("plugins/parallel/src", "mesh/gateway", "mesh/transport", "mesh/runtime"),
    "cluster": ("mesh/embedded", "mesh/gateway", "mesh/transport", "mesh/runtime",
                "plugins/parallel/src", "plugins/recall/src", "plugins/workflows/src",
                "envoy/envoy.yaml", "benchmarks/cluster_load.py"),
    "recall": ("plugins/recall/src", "mesh/gateway", "mesh/transport", "mesh/runtime"),
    "creative": ("plugins/creative/src", "benchmarks/creative_corpus.py", "mesh/models",
                 "mesh/gateway", "mesh/transport", "mesh/runtime", "mesh/testing/llm.py",
                 "triton_models/embedder"),
    "workflows": ("plugins/workflows/src", "benchmarks/workflow_peers.py", "mesh/gateway",
                  "mesh/transport", "mesh/runtime"),
}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ascending ``sorted_values``, linearly interpolated."""
    if not sorted_values:
        return float("nan")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    rank = (len(sorted_values) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN when empty)."""
    return statistics.median(values) if values else float("nan")


def median_known(values: Sequence[float | None], digits: int = 3) -> float | None:
    """The median of the values that were measured (None: not measured), rounded."""
    known = [v for v in values if v is not None]
    return round(median(known), digits) if known else None


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(*distributions: str) -> dict[str, Any]:
    """Where the benchmark ran: CPUs, Python, platform, date, and the given packages' versions."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "packages": {name: _version(name) for name in distributions},
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   align_right: Sequence[bool] | None = None) -> str:
    """A GitHub-flavoured markdown table."""
    right = list(align_right) if align_right is not None else [False] * len(header)
    rule = ["---:" if r else "---" for r in right]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30,
                              check=False, cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def revision(*paths: str) -> dict[str, Any]:
    """The commit measured, and the files under ``paths`` (default: the whole repository)
    that differed from it when the run started (a result of uncommitted code says so)."""
    changed = _git("status", "--porcelain", "--", *(paths or (".",)))
    return {"commit": _git("rev-parse", "--short", "HEAD") or None,
            # split, not line[3:]: _git strips the output, and with it the first line's
            # leading space (" M path"), which cut the first path's first letter
            "uncommitted": sorted(line.split(maxsplit=1)[1] for line in changed.splitlines()
                                  if len(line.split(maxsplit=1)) == 2)}


def _command() -> str:
    argv = sys.argv[1:] if Path(sys.argv[0]).name == "__main__.py" else sys.argv
    prefix = "python -m benchmarks" if Path(sys.argv[0]).name == "__main__.py" else "python"
    return " ".join([prefix, *argv])


def _record(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    machine = data.get("machine") or machine_info()
    measured = MEASURES.get(name.split("-")[0], ())
    return {**revision(f"benchmarks/{name.split('-')[0]}.py", "benchmarks/_report.py",
                       *measured), "date": machine.get("date") or dt.datetime.now(dt.UTC).isoformat(
                timespec="seconds"),
            "command": data.get("command") or _command(),
            "machine": f"{machine.get('cpu_count')} CPUs, {machine.get('platform')}, "
                       f"Python {machine.get('python')}"}


def _record_line(record: Mapping[str, Any]) -> str:
    dirty = record.get("uncommitted") or []
    code = f"commit `{record.get('commit')}`" + (
        f" with {len(dirty)} uncommitted file(s) ({', '.join(f'`{p}`' for p in dirty[:5])}"
        + (", ..." if len(dirty) > 5 else "") + ")" if dirty else "")
    return (f"_Measured: {code}, {record.get('date')}, {record.get('machine')}; "
            f"command `{record.get('command')}`._")


def write_results(name: str, data: Mapping[str, Any], markdown: str,
                  results_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` under ``results_dir``; returns both paths.

    Both are stamped with a ``record`` (commit, uncommitted files, date, machine, command),
    and a full run (``data["mode"] == "full"``) is also kept as
    ``history/<name>-<UTC time>-<commit>.{json,md}``: every run is published, not the best.
    """
    record = _record(name, data)
    stamped = {**data, "record": record}
    text = markdown.rstrip() + "\n\n" + _record_line(record) + "\n"
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{name}.json"
    md_path = results_dir / f"{name}.md"
    body = json.dumps(stamped, indent=2, sort_keys=False) + "\n"
    json_path.write_text(body)
    md_path.write_text(text)
    if data.get("mode") == "full":
        history = results_dir / "history"
        history.mkdir(exist_ok=True)
        when = dt.datetime.fromisoformat(record["date"]).strftime("%Y%m%dT%H%M%SZ")
        stem = f"{name}-{when}-{record['commit'] or 'nocommit'}"
        (history / f"{stem}.json").write_text(body)
        (history / f"{stem}.md").write_text(text)
    write_plots(name, stamped, results_dir)
    return json_path, md_path


def write_plots(name: str, data: Mapping[str, Any],
                results_dir: Path = RESULTS_DIR) -> list[Path]:
    """Draw result ``name``'s charts (:func:`benchmarks._plots.charts`) as
    ``<results_dir>/plots/<name>-<chart>.svg``; returns the paths written (none for a
    result without charts)."""
    drawn = _plots.charts(name.split("-")[0], data)
    folder = results_dir / PLOTS
    paths = []
    for chart in drawn:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}-{chart.slug}.svg"
        path.write_text(_plots.render(chart))
        paths.append(path)
    return paths


def redraw_plots(results_dir: Path = RESULTS_DIR) -> list[Path]:
    """Draw the charts of every result under ``results_dir`` again from its JSON (no
    benchmark runs), in a plots folder emptied first (no chart of an older layout stays);
    returns the paths written."""
    for old in sorted((results_dir / PLOTS).glob("*.svg")):
        old.unlink()
    paths: list[Path] = []
    for path in sorted(results_dir.glob("*.json")):
        paths += write_plots(path.stem, json.loads(path.read_text()), results_dir)
    return paths


def history_runs(name: str, results_dir: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every full run of ``name`` kept under ``history/`` by :func:`write_results`, oldest
    first (runs from before history was kept are not included)."""
    runs = []
    for path in sorted((results_dir / "history").glob(f"{name}-2*.json")):
        data = json.loads(path.read_text())
        if data.get("mode") == "full" and "record" in data:
            runs.append(data)
    return sorted(runs, key=lambda run: str(run["record"]["date"]))


def staleness(data: Mapping[str, Any], paths: Sequence[str]) -> list[str]:
    """The files under ``paths`` that changed between the commit a result measured and
    HEAD (or were uncommitted when it ran): empty when the result measures today's code."""
    record = data.get("record") or data.get("revision") or {}
    commit = record.get("commit")
    if not commit:
        return ["(the result names no commit)"]
    changed = _git("diff", "--name-only", str(commit), "HEAD", "--", *paths)
    if not changed and not _git("cat-file", "-t", str(commit)):
        return [f"(commit {commit} is not in this repository)"]
    dirty = record.get("uncommitted") or record.get("uncommitted_in_mesh_or_engine") or []
    return sorted(set(changed.splitlines()) | {p for p in dirty
                                               if any(p.startswith(q) for q in paths)})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks._report --plots [--results DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks._report",
        description="Draw the benchmark figures again from the committed JSON results "
                    "(nothing is run).")
    parser.add_argument("--plots", action="store_true", required=True,
                        help="write <results>/plots/<name>-<chart>.svg for every result")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR,
                        help=f"the results directory (default: {RESULTS_DIR})")
    args = parser.parse_args(argv)
    for path in redraw_plots(args.results):
        print(path.relative_to(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
