"""benchmarks._plots: the committed figures are what the committed results draw, and each
chart shows ours beside the peer or baseline it is measured against."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from benchmarks import _plots, _report
from benchmarks.__main__ import BENCHMARKS

SVG = "{http://www.w3.org/2000/svg}"


def test_the_committed_svgs_are_what_the_committed_results_draw(tmp_path: Path) -> None:
    results = _report.RESULTS_DIR
    for path in results.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    _report.redraw_plots(tmp_path)
    drawn = {p.name: p.read_text() for p in (tmp_path / _report.PLOTS).glob("*.svg")}
    committed = {p.name: p.read_text() for p in (results / _report.PLOTS).glob("*.svg")}
    assert drawn, "the committed results drew no chart"
    stale = sorted(name for name in drawn.keys() | committed.keys()
                   if drawn.get(name) != committed.get(name))
    assert stale == [], ("benchmarks/results/plots/ differs from what the results draw: "
                         f"{stale}; run `python -m benchmarks plots` and commit it")


def test_every_benchmark_with_a_result_has_a_chart() -> None:
    for name in BENCHMARKS:
        path = _report.RESULTS_DIR / f"{name}.json"
        if path.exists():
            assert _plots.charts(name, json.loads(path.read_text())), f"{name} draws no chart"


def test_a_chart_draws_each_value_as_a_bar_of_its_kind_and_says_what_is_missing() -> None:
    chart = _plots.Chart("p50", "Search & find <p50>", "milliseconds", "lower", (
        _plots.Group("10k", (_plots.Bar("ours", 2.0), _plots.Bar("peer", 4.0, "peer"),
                             _plots.Bar("lite", None, "baseline"))),))
    svg = _plots.render(chart)
    assert svg == _plots.render(chart), "drawing the same chart twice must give the same text"
    root = ET.fromstring(svg)  # well-formed: the title's & and <> are escaped
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "Search & find <p50>" in texts
    assert "not measured" in texts
    bars = {r.get("fill"): float(r.get("width", 0)) for r in root.iter(f"{SVG}rect")
            if r.get("height") == str(_plots._ROW - 6)}
    ours, peer = bars[_plots.COLOURS["ours"]], bars[_plots.COLOURS["peer"]]
    assert peer == pytest.approx(2 * ours), "bars must be proportional to their values"


def test_writing_a_result_draws_its_charts(tmp_path: Path) -> None:
    data = {"mode": "quick", "cells": [
        {"target": "plain", "concurrency": 1, "p50_ms": 0.5},
        {"target": "mesh", "concurrency": 1, "p50_ms": 1.5}]}
    _report.write_results("mesh_hop", data, "# table", tmp_path)
    svg = (tmp_path / _report.PLOTS / "mesh_hop-p50-c1.svg").read_text()
    assert "1.50" in svg
    assert "0.500" in svg
    assert not (tmp_path / _report.PLOTS / "mesh_hop-rps-c64.svg").exists()
