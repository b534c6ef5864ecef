"""The benchmark figures as SVG bar charts, drawn from a benchmark's JSON results.

:func:`charts` reads one result (``benchmarks/results/<name>.json``) and picks its main
figures, ours beside the peer's and the baseline's (each a median over the run's rounds,
as the results hold them); :func:`render` draws a :class:`Chart` as a small, self-contained
SVG. The output depends on the JSON alone (no dates, no random ids, fixed number
formats), so regenerating from the committed results gives the committed files byte for
byte: ``python -m benchmarks plots`` (or ``python -m benchmarks._report --plots``) does
that, and a unit test checks it.

No plotting library: a horizontal bar chart is a few rectangles and labels, and matplotlib
would be a large dependency whose SVG output changes between its versions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from xml.sax.saxutils import escape

__all__ = ["FIGURES", "Bar", "Chart", "Group", "charts", "render"]

Kind = Literal["ours", "peer", "baseline"]

COLOURS: dict[Kind, str] = {"ours": "#2b6cb0", "peer": "#dd6b20", "baseline": "#8a94a6"}
LEGEND: dict[Kind, str] = {"ours": "revo", "peer": "peer", "baseline": "baseline"}


@dataclass(frozen=True)
class Bar:
    """One measured value: what it is, the figure (None: not measured), whose it is."""

    label: str
    value: float | None
    kind: Kind = "ours"


@dataclass(frozen=True)
class Group:
    """Bars measured under one condition (a concurrency, a size, a workload)."""

    label: str
    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class Chart:
    """One figure: ``<name>-<slug>.svg``."""

    slug: str
    title: str
    unit: str
    better: Literal["lower", "higher"]
    groups: tuple[Group, ...]
    source: str = ""
    """Where the numbers come from (the benchmark, its commit and machine)."""


# -- drawing ----------------------------------------------------------------------------

_FONT = 12
_CHAR_W = 7.0  # average advance of a 12 px sans-serif character (a little over), for layout
_ROW = 20
_GROUP_GAP = 10
_WIDTH = 760


def _number(value: float) -> str:
    """A figure as people read it: three significant digits at most, no exponent."""
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _text(x: float, y: float, text: str, *, anchor: str = "start", size: int = _FONT,
          weight: str = "normal", fill: str = "#1a202c") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{escape(text)}</text>')


def render(chart: Chart) -> str:
    """``chart`` as an SVG document (horizontal bars, one row per bar, grouped)."""
    bars = [bar for group in chart.groups for bar in group.bars]
    # group labels have a line of their own: only the bars' labels share the bars' rows
    label_w = min(300.0, max(len(bar.label) for bar in bars) * _CHAR_W + 16)
    values = [bar.value for bar in bars if bar.value is not None]
    top = max(values, default=0.0) or 1.0
    value_w = 72.0
    plot_x = label_w
    plot_w = _WIDTH - label_w - value_w - 12
    kinds = [kind for kind in COLOURS if any(b.kind == kind for b in bars)]
    out: list[str] = []
    y = 24.0
    out.append(_text(12, y, chart.title, size=15, weight="bold"))
    y += 18
    subtitle = f"{chart.unit}, {chart.better} is better"
    out.append(_text(12, y, subtitle, size=_FONT, fill="#4a5568"))
    x = _WIDTH - 12.0
    for kind in reversed(kinds):  # legend, right-aligned on the subtitle's line
        x -= len(LEGEND[kind]) * _CHAR_W
        out.append(_text(x, y, LEGEND[kind], fill="#4a5568"))
        x -= 16
        out.append(f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="11" height="11" '
                   f'fill="{COLOURS[kind]}"/>')
        x -= 14
    y += 14
    for group in chart.groups:
        y += _GROUP_GAP
        out.append(_text(12, y + 12, group.label, weight="bold"))
        y += _ROW
        for bar in group.bars:
            out.append(_text(plot_x - 8, y + 13, bar.label, anchor="end"))
            if bar.value is None:
                out.append(_text(plot_x + 4, y + 13, "not measured", fill="#718096"))
            else:
                width = max(1.0, plot_w * max(bar.value, 0.0) / top)
                out.append(f'<rect x="{plot_x:.1f}" y="{y + 3:.1f}" width="{width:.1f}" '
                           f'height="{_ROW - 6}" fill="{COLOURS[bar.kind]}"/>')
                out.append(_text(plot_x + width + 6, y + 13, _number(bar.value)))
            y += _ROW
    y += 8
    out.append(f'<line x1="{plot_x:.1f}" y1="{y:.1f}" x2="{plot_x + plot_w:.1f}" '
               f'y2="{y:.1f}" stroke="#cbd5e0"/>')
    if chart.source:
        y += 18
        out.append(_text(12, y, chart.source, size=10, fill="#718096"))
    height = y + 12
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height:.0f}" '
            f'viewBox="0 0 {_WIDTH} {height:.0f}" font-family="Helvetica, Arial, sans-serif">')
    return "\n".join([head, f'<rect width="{_WIDTH}" height="{height:.0f}" fill="#ffffff"/>',
                      *out, "</svg>"]) + "\n"


# -- the figures of each benchmark ------------------------------------------------------

def _source(name: str, data: Mapping[str, Any]) -> str:
    record = data.get("record") or {}
    machine = record.get("machine") or ""
    cpus = machine.split(",")[0] if machine else ""
    parts = [f"benchmarks/results/{name}.json", f"commit {record.get('commit') or '?'}"]
    if record.get("uncommitted"):
        parts[-1] += " (with uncommitted changes)"
    if cpus:
        parts.append(cpus)
    parts.append(f"{data.get('mode', '?')} run; medians over its rounds")
    return " · ".join(parts)


def _cells(data: Mapping[str, Any], **where: Any) -> dict[str, Mapping[str, Any]]:
    """The result's cells that match ``where``, by target (or path)."""
    out: dict[str, Mapping[str, Any]] = {}
    for cell in data.get("cells") or ():
        if isinstance(cell, Mapping) and all(cell.get(k) == v for k, v in where.items()):
            out[str(cell.get("target", cell.get("path")))] = cell
    return out


def _bars(found: Mapping[str, Mapping[str, Any]], field: str,
          names: Sequence[tuple[str, str, Kind]]) -> tuple[Bar, ...]:
    return tuple(Bar(label, _float(found[key].get(field)), kind)
                 for key, label, kind in names if key in found)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def _hop_figures(name: str, names: Sequence[tuple[str, str, Kind]],
                 c64: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], list[Chart]]:
    """Charts of the mesh-hop family (p50 at c=1, calls/s at c=64) for ``names``."""
    def figures(data: Mapping[str, Any]) -> list[Chart]:
        one = _bars(_cells(data, concurrency=1), "p50_ms", names)
        many = _bars(_cells(data, concurrency=64, **c64), "rps", names)
        source = _source(name, data)
        out = []
        if one:
            out.append(Chart("p50-c1", "Echo through the gateway: p50 at concurrency 1",
                             "milliseconds", "lower", (Group("concurrency 1", one),), source))
        if many:
            out.append(Chart("rps-c64", "Echo through the gateway: calls per second at "
                             "concurrency 64", "calls per second", "higher",
                             (Group("concurrency 64", many),), source))
        return out
    return figures


_PLAIN: tuple[str, str, Kind] = ("plain", "plain gRPC (grpc.aio)", "baseline")

mesh_hop = _hop_figures("mesh_hop", (
    _PLAIN, ("mesh", "gateway → NATS → node", "ours"),
    ("colocated", "colocated (no NATS hop)", "ours")), {"generators": 2})
auth_overhead = _hop_figures("auth_overhead", (
    _PLAIN, ("off", "mesh, security off", "ours"), ("on", "mesh, security on", "ours"),
    ("users", "security on, 64 users", "ours")), {"generators": 2})
observability = _hop_figures("observability", (
    ("off", "metrics and traces off", "baseline"), ("metrics", "metrics on (default)", "ours"),
    ("traced", "traced, 100 %", "ours"), ("sampled", "traced, 1 %", "ours")),
    {"generators": 2})


def embedder(data: Mapping[str, Any]) -> list[Chart]:
    names: tuple[tuple[str, str, Kind], ...] = (
        ("triton-dynamic", "Triton, dynamic batching", "ours"),
        ("triton-no-batching", "Triton, no batching", "baseline"),
        ("inprocess-1", "in process, one at a time", "peer"),
        ("inprocess-32", "in process, batches of 32", "peer"))
    rate = _bars(_cells(data), "sentences_per_s", names)
    return [Chart("sentences", "The embedder on Triton at concurrency 32", "sentences per "
                  "second", "higher", (Group("all-MiniLM-L6-v2 on the CPU", rate),),
                  _source("embedder", data))] if rate else []


_ROUTER_PATHS: tuple[tuple[str, str, Kind], ...] = (
    ("mesh", "mesh router", "ours"), ("mesh-free", "mesh router, free model", "ours"),
    ("litellm-defaults", "LiteLLM Router", "peer"),
    ("litellm-nolog", "LiteLLM Router, logging off", "peer"),
    ("litellm-proxy", "LiteLLM proxy", "peer"))


def router_overhead(data: Mapping[str, Any]) -> list[Chart]:
    headline = data.get("headline") or {}
    picks = (("burst-end", "burst_end_overhead_ms_p50",
              "Added time to the end of a 64-token stream, concurrency 1"),
             ("first-token", "paced_first_token_overhead_ms_p50",
              "Added time to the first token, paced stream, concurrency 4"))
    out = []
    for slug, key, title in picks:
        figures = headline.get(key) or {}
        bars = tuple(Bar(label, _float(figures.get(path)), kind)
                     for path, label, kind in _ROUTER_PATHS if path in figures)
        if bars:
            out.append(Chart(slug, title, "milliseconds over the OpenAI SDK direct (p50)",
                             "lower", (Group("streamed chat completions", bars),),
                             _source("router_overhead", data)))
    return out


def http_api(data: Mapping[str, Any]) -> list[Chart]:
    figures = data.get("figures") or {}

    def median(key: str) -> float | None:
        found = figures.get(key)
        return _float(found.get("median")) if isinstance(found, Mapping) else None

    end = (Bar("HTTP door (/v1, openai SDK)", median("overhead_ms_p50_http_vs_direct")),
           Bar("gRPC Generate", median("overhead_ms_p50_grpc_vs_direct")),
           Bar("LiteLLM proxy", median("overhead_ms_p50_litellm_proxy"), "peer"))
    streams = (Bar("HTTP door (/v1, openai SDK)", median("ratio_streams_c64_http_vs_direct")),
               Bar("LiteLLM proxy", median("ratio_streams_c64_litellm_proxy_vs_direct"),
                   "peer"))
    source = _source("http_api", data)
    out = []
    if any(bar.value is not None for bar in end):
        out.append(Chart("overhead", "Added time to the end of a 64-token stream, "
                         "concurrency 1", "milliseconds over the OpenAI SDK direct (p50)",
                         "lower", (Group("streamed chat completions", end),), source))
    if any(bar.value is not None for bar in streams):
        out.append(Chart("streams-c64", "Streams per second at concurrency 64",
                         "fraction of the OpenAI SDK direct", "higher",
                         (Group("streamed chat completions", streams),), source))
    return out


def generator(data: Mapping[str, Any]) -> list[Chart]:
    names: tuple[tuple[str, str, Kind], ...] = (
        ("direct", "Triton direct (tritonclient)", "baseline"),
        ("sdk", "OpenAI SDK on Triton's API", "peer"), ("mesh", "through the mesh", "ours"))
    groups_rate = []
    groups_ttft = []
    for concurrency in (1, 4):
        found = _cells(data, concurrency=concurrency)
        rate = _bars(found, "aggregate_tokens_per_s", names)
        ttft = _bars(found, "ttft_ms_p50", names)
        if rate:
            groups_rate.append(Group(f"concurrency {concurrency}", rate))
        if ttft:
            groups_ttft.append(Group(f"concurrency {concurrency}", ttft))
    source = _source("generator", data)
    out = []
    if groups_rate:
        out.append(Chart("tokens", "The generator on Triton: tokens per second",
                         "tokens per second, all streams", "higher", tuple(groups_rate), source))
    if groups_ttft:
        out.append(Chart("first-token", "The generator on Triton: time to the first token",
                         "milliseconds (p50)", "lower", tuple(groups_ttft), source))
    return out


def tasks(data: Mapping[str, Any]) -> list[Chart]:
    workloads = (("noop_single", "no-op, one per call"), ("noop_batch", "no-op, batches of 100"),
                 ("sleep10_single", "10 ms sleep, one per call"),
                 ("sleep10_batch", "10 ms sleep, batches of 100"))
    rate = []
    for key, label in workloads:
        ours, celery = (_float(data.get(f"tasks_per_s_{key}")),
                        _float(data.get(f"celery_tasks_per_s_{key}")))
        if ours is not None or celery is not None:
            rate.append(Group(label, (Bar("Parallel Mind", ours),
                                      Bar("Celery on Redis", celery, "peer"))))
    latency = []
    for key, label in (("noop", "no-op"), ("sleep10", "10 ms sleep")):
        ours, celery = (_float(data.get(f"p50_ms_{key}")),
                        _float(data.get(f"celery_p50_ms_{key}")))
        if ours is not None or celery is not None:
            latency.append(Group(label, (Bar("Parallel Mind", ours),
                                         Bar("Celery on Redis", celery, "peer"))))
    source = _source("tasks", data)
    out = []
    if rate:
        out.append(Chart("tasks-per-s", "Durable tasks: throughput, one worker process each",
                         "tasks per second", "higher", tuple(rate), source))
    if latency:
        out.append(Chart("p50", "Durable tasks: one task from submit to finished",
                         "milliseconds (p50)", "lower", tuple(latency), source))
    return out


def recall(data: Mapping[str, Any]) -> list[Chart]:
    paths: tuple[tuple[str, str, Kind], ...] = (
        ("{q}_ms_search", "Perfect Recall through the mesh", "ours"),
        ("chroma_server_{q}_ms_search", "ChromaDB server (chroma run)", "peer"),
        ("{q}_ms_index", "Perfect Recall's index in process", "ours"),
        ("chroma_{q}_ms_search", "ChromaDB in process", "peer"),
        ("milvus_lite_{q}_ms_search", "milvus-lite directly", "baseline"))
    out = []
    for q in ("p50", "p99"):
        groups = []
        for size in data.get("sizes") or ():
            bars = tuple(Bar(label, _float(size.get(key.format(q=q))), kind)
                         for key, label, kind in paths if key.format(q=q) in size)
            if bars:
                groups.append(Group(f"{int(size.get('size', 0)):,} memories", bars))
        if groups:
            out.append(Chart(q, f"Search by vector, top 10: {q}", f"milliseconds ({q})",
                             "lower", tuple(groups), _source("recall", data)))
    return out


def creative(data: Mapping[str, Any]) -> list[Chart]:
    names: tuple[tuple[str, str, Kind], ...] = (
        ("engine", "Creative", "ours"), ("naive", "5 plain concurrent samples", "baseline"),
        ("naive-mesh", "5 plain samples through the mesh", "baseline"))
    vendi = []
    wall = []
    for row in data.get("rows") or ():
        paths = row.get("paths") or {}
        label = f"model's adherence {row.get('adherence')}"
        found = {key: paths[key] for key, _, _ in names if key in paths}
        if found:
            vendi.append(Group(label, _bars(found, "vendi_p50", names)))
            wall.append(Group(label, _bars(found, "wall_s_p50", names)))
    source = _source("creative", data)
    out = []
    if vendi:
        out.append(Chart("vendi", "How different the solutions are (Vendi score of a set of 5)",
                         "effective number of distinct solutions (p50)", "higher",
                         tuple(vendi), source))
    if wall:
        out.append(Chart("wall", "Time to a set of 5 solutions", "seconds (p50)", "lower",
                         tuple(wall), source))
    return out


def workflows(data: Mapping[str, Any]) -> list[Chart]:
    names: tuple[tuple[str, str, Kind], ...] = (
        ("mesh", "the Coordinator", "ours"), ("temporal", "Temporal (activities)", "peer"),
        ("temporal-tuned", "Temporal, local activities + eager start", "peer"),
        ("dbos", "DBOS on SQLite", "peer"))
    headlines = data.get("headlines") or {}
    found = {key: headlines[key] for key, _, _ in names if isinstance(headlines.get(key), Mapping)}
    source = _source("workflows", data)
    out = []
    step = _bars(found, "step_overhead_ms_p50", names)
    if step:
        out.append(Chart("step-overhead", "Durable workflows: time added per no-op step",
                         "milliseconds (p50)", "lower", (Group("one step", step),), source))
    runs = _bars(found, "runs_per_s", names)
    if runs:
        out.append(Chart("runs-per-s", "Durable workflows: one-step runs per second",
                         "runs per second", "higher", (Group("one-step runs", runs),), source))
    return out


def cluster(data: Mapping[str, Any]) -> list[Chart]:
    targets = (data.get("settings") or {}).get("targets_s") or {}
    by_fault: dict[str, list[Bar]] = {}
    for fault in data.get("faults") or ():
        name = str(fault.get("fault"))
        by_fault.setdefault(name, []).append(
            Bar(f"round {fault.get('round', len(by_fault[name]) + 1)}",
                _float(fault.get("max_unavailable_s"))))
    groups = []
    for name, bars in by_fault.items():
        target = targets.get(name)
        label = name.replace("_", " ") + (f" (target ≤ {target:g} s)" if target else "")
        groups.append(Group(label, tuple(bars)))
    rates: dict[str, list[Bar]] = {}
    for row in sorted(data.get("scale_out") or (), key=lambda r: (r.get("what"), r.get("nodes"))):
        rates.setdefault(str(row.get("what")), []).append(
            Bar(f"{row.get('nodes')} node(s)", _float(row.get("rate_per_s"))))
    source = _source("cluster", data)
    out = []
    if groups:
        out.append(Chart("unavailable", "The cluster under faults: longest time a caller "
                         "waited", "seconds without a successful call (max)", "lower",
                         tuple(groups), source))
    if rates:
        out.append(Chart("scale-out", "The cluster: scale-out with nodes",
                         "per second", "higher",
                         tuple(Group(what, tuple(bars)) for what, bars in rates.items()),
                         source))
    return out


FIGURES: dict[str, Callable[[Mapping[str, Any]], list[Chart]]] = {
    "mesh_hop": mesh_hop, "auth_overhead": auth_overhead, "observability": observability,
    "embedder": embedder, "router_overhead": router_overhead, "http_api": http_api,
    "generator": generator, "tasks": tasks, "recall": recall, "creative": creative,
    "workflows": workflows, "cluster": cluster,
}
"""Benchmark name -> the charts of one of its results (empty when it has none to draw)."""


def charts(name: str, data: Mapping[str, Any]) -> list[Chart]:
    """The charts of result ``name`` (``tasks_celery_pools`` and unknown names: none)."""
    figures = FIGURES.get(name)
    return figures(data) if figures is not None else []


def names(charts_: Iterable[Chart], name: str) -> list[str]:
    """The file names of ``charts_`` of benchmark ``name``."""
    return [f"{name}-{chart.slug}.svg" for chart in charts_]
