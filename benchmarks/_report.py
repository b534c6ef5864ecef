"""What every benchmark shares: latency statistics, machine facts, and writing its results.

A benchmark writes ``<results>/<name>.json`` (numbers for tools and CI) and
``<results>/<name>.md`` (a table for people) with :func:`write_results`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_DIR",
    "machine_info",
    "markdown_table",
    "median",
    "percentile",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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


def write_results(name: str, data: Mapping[str, Any], markdown: str,
                  results_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` under ``results_dir``; returns both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{name}.json"
    md_path = results_dir / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path
